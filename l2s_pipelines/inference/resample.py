"""Model-space posteriors back to the input's native voxel grid (torch ``grid_sample``).

The mapping is exact in world coordinates: native voxel ``ijk`` -> world ``A_native @ ijk`` ->
model voxel ``A_model^-1 @ world``, so it holds for any orientation, oblique affines and
anisotropic voxels. Sampling is trilinear and done in slabs along the native first axis so only
one slab of native posteriors and the part of the model grid it touches are in float32 at once.
When native voxels fall exactly on model voxels (same voxel size, only axis permutations and
flips: the usual case of a 1 mm scan and a 1 mm model) values are copied, not interpolated.

The posteriors may cover only a box of the model grid (``box_origin``): every model voxel
outside the box is background (channel 0) with probability 1, so the result is the same as
with a full-grid buffer holding that one-hot background, without its memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F


def native_to_model_matrix(native_affine, model_affine) -> np.ndarray:
    """4x4 float64 matrix mapping native voxel indices to model voxel indices."""
    return np.linalg.inv(np.asarray(model_affine, float)) @ np.asarray(native_affine, float)


def signed_permutation(m: np.ndarray, tol: float = 1e-4):
    """If ``m`` (native -> model voxel matrix) maps voxel centres onto voxel centres by axis
    permutation and flips, return ``(perm, sign, offset)`` with model index along axis
    ``perm[a]`` = ``sign[a] * native_index[a] + offset[a]``; otherwise None."""
    r = m[:3, :3]
    perm = np.abs(r).argmax(axis=0)
    sign = np.sign(r[perm, range(3)])
    offset = m[:3, 3][perm]
    exact = np.zeros((3, 3))
    exact[perm, range(3)] = sign
    if sorted(perm) != [0, 1, 2] or not np.allclose(r, exact, atol=tol) \
            or not np.allclose(offset, np.round(offset), atol=tol):
        return None
    return perm.tolist(), sign.astype(int).tolist(), np.round(offset).astype(int).tolist()


def _background_slab(k: int, shape, device) -> torch.Tensor:
    """``(K, *shape)`` float32: probability 1 for channel 0 (background), 0 elsewhere."""
    out = torch.zeros((k, *shape), dtype=torch.float32, device=device)
    out[0] = 1
    return out


def _take(x: torch.Tensor, axis: int, idx: np.ndarray) -> torch.Tensor:
    """``x`` at indices ``idx`` along ``axis``: a narrowed (flipped) view when ``idx`` steps by
    +-1, a gathered copy otherwise (clamped indices beyond the model grid)."""
    step = np.diff(idx)
    if len(idx) > 1 and np.all(step == step[0]) and abs(step[0]) == 1:
        a = int(idx.min())
        view = x.narrow(axis, a, len(idx))
        return view.flip(axis) if step[0] < 0 else view
    if len(idx) == 1:
        return x.narrow(axis, int(idx[0]), 1)
    return x.index_select(axis, torch.as_tensor(idx, device=x.device))


def _copy_blocks(post, mapping, native_shape, chunk, origin, model_shape):
    """Exact path of :func:`native_blocks`: slicing and flips (indices clamped to the grid)."""
    perm, sign, offset = mapping
    view = post.permute(0, 1 + perm[0], 1 + perm[1], 1 + perm[2])  # box axes in native order
    local, inside = [], []  # per native axis: box-local model index, and the native range inside
    for a in range(3):
        idx = np.clip(sign[a] * np.arange(native_shape[a]) + offset[a], 0, model_shape[perm[a]] - 1)
        idx = idx - origin[perm[a]]
        ok = np.flatnonzero((idx >= 0) & (idx < view.shape[1 + a]))  # contiguous: idx is monotone
        local.append(idx)
        inside.append((int(ok[0]), int(ok[-1]) + 1) if len(ok) else (0, 0))
    (y0, y1), (z0, z1) = inside[1], inside[2]
    for x0 in range(0, native_shape[0], chunk):
        x1 = min(native_shape[0], x0 + chunk)
        a0, a1 = max(x0, inside[0][0]), min(x1, inside[0][1])
        if not (a0 < a1 and y0 < y1 and z0 < z1):
            yield x0, x1, None, None
            continue
        block = _take(_take(_take(view, 1, local[0][a0:a1]), 2, local[1][y0:y1]), 3, local[2][z0:z1]).float()
        block /= block.sum(0, keepdim=True).clamp_min(1e-8)
        yield x0, x1, (slice(a0, a1), slice(y0, y1), slice(z0, z1)), block


def _inside_weight(local: torch.Tensor, box_shape: torch.Tensor) -> torch.Tensor:
    """Trilinear weight that falls inside the box, ``(..., 3)`` box-local coordinates ->
    ``(...)``: per axis ``clamp(min(c + 1, n - c), 0, 1)``, multiplied over axes."""
    w = torch.minimum(local + 1, box_shape - local).clamp(0, 1)
    return w.prod(-1)


def _native_region(m: np.ndarray, origin, box_shape, model_shape, native_shape) -> list[tuple[int, int]]:
    """Native index ranges (per axis) holding every native voxel whose trilinear footprint
    touches the box: the bounding box of the box's corners widened by one model voxel; the
    whole grid along every axis when the box touches the model grid's border (clamping)."""
    lo = np.asarray(origin, float) - 1
    hi = lo + np.asarray(box_shape, float) + 1
    if (lo < 0).any() or (hi > np.asarray(model_shape, float) - 1).any():
        return [(0, int(n)) for n in native_shape]
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
    inv = np.linalg.inv(m)
    nat = inv[:3, :3] @ corners + inv[:3, 3:]
    return [(int(np.clip(np.floor(nat[a].min()), 0, n)), int(np.clip(np.ceil(nat[a].max()) + 1, 0, n)))
            for a, n in enumerate(native_shape)]


def _interp_blocks(post, m, native_shape, chunk, origin, full):
    """Trilinear path of :func:`native_blocks` (torch ``grid_sample``, zero outside the box)."""
    dev = post.device
    box = torch.tensor(post.shape[1:], dtype=torch.float64, device=dev)
    top = torch.tensor(full, dtype=torch.float64, device=dev) - 1
    org = torch.tensor(origin, dtype=torch.float64, device=dev)
    region = _native_region(m, origin, post.shape[1:], full, native_shape)
    (y0, y1), (z0, z1) = region[1], region[2]
    mt = torch.as_tensor(m, device=dev)
    jy = torch.arange(y0, y1, dtype=torch.float64, device=dev)
    kz = torch.arange(z0, z1, dtype=torch.float64, device=dev)
    for x0 in range(0, native_shape[0], chunk):
        x1 = min(native_shape[0], x0 + chunk)
        a0, a1 = max(x0, region[0][0]), min(x1, region[0][1])
        if not (a0 < a1 and y0 < y1 and z0 < z1):
            yield x0, x1, None, None
            continue
        ix = torch.arange(a0, a1, dtype=torch.float64, device=dev)
        ijk = torch.stack(torch.meshgrid(ix, jy, kz, indexing="ij"), dim=-1)  # (c, Y', Z', 3)
        local = torch.minimum((ijk @ mt[:3, :3].T + mt[:3, 3]).clamp(min=0), top) - org  # box voxels
        del ijk
        flat = local.reshape(-1, 3)
        lo = torch.maximum(torch.floor(flat.amin(0)), torch.zeros_like(box))
        hi = torch.minimum(torch.ceil(flat.amax(0)), box - 1)
        if bool((hi < lo).any()):  # the block never touches the box
            yield x0, x1, None, None
            continue
        a, b = lo.long().tolist(), (hi.long() + 1).tolist()
        sub = post[:, a[0]:b[0], a[1]:b[1], a[2]:b[2]].float()[None]  # (1, K, ...)
        grid = (2 * (local - lo) + 1) / (hi - lo + 1) - 1  # align_corners=False: voxel centres
        probs = F.grid_sample(sub, grid[..., [2, 1, 0]].float()[None], mode="bilinear",
                              padding_mode="zeros", align_corners=False)[0]
        del sub, grid
        probs[0] += (1 - _inside_weight(local, box)).float()  # model voxels outside the box
        probs /= probs.sum(0, keepdim=True).clamp_min(1e-8)
        yield x0, x1, (slice(a0, a1), slice(y0, y1), slice(z0, z1)), probs


def native_blocks(post: torch.Tensor, model_affine, native_shape, native_affine, *,
                  max_slab_bytes: int = 256 << 20, exact: bool = True, box_origin=None,
                  model_shape=None) -> Iterator[tuple[int, int, tuple | None, torch.Tensor | None]]:
    """Like :func:`native_slabs` but yields ``(x0, x1, region, probs)``: only the native block
    ``region`` (3 slices of absolute native indices within slab ``x0:x1``) that the box can
    reach is computed, ``probs`` ``(K, *block_shape)`` float32; every other voxel of the slab is
    background with probability 1. ``region`` and ``probs`` are None when the whole slab is."""
    k = post.shape[0]
    shape = tuple(int(n) for n in native_shape)
    origin = [int(o) for o in (box_origin if box_origin is not None else (0, 0, 0))]
    full = [int(n) for n in (model_shape if model_shape is not None else post.shape[1:])]
    chunk = max(1, int(max_slab_bytes // (4 * k * shape[1] * shape[2])))
    m = native_to_model_matrix(native_affine, model_affine)
    mapping = signed_permutation(m) if exact else None
    if mapping is not None:
        yield from _copy_blocks(post, mapping, shape, chunk, origin, full)
    else:
        yield from _interp_blocks(post, m, shape, chunk, origin, full)


def native_slabs(post: torch.Tensor, model_affine, native_shape, native_affine, *,
                 max_slab_bytes: int = 256 << 20, exact: bool = True, box_origin=None,
                 model_shape=None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(x0, x1, probs)`` covering the native grid slab by slab.

    Parameters
    ----------
    post : (K, *box_shape) posteriors on the model grid or a box of it (any float dtype, any
        device); channel 0 is background.
    model_affine, native_affine : 4x4 voxel -> world (mm) matrices (model: of the full grid).
    native_shape : (X, Y, Z) of the native grid.
    max_slab_bytes : bound on one slab's float32 posteriors ``K * (x1 - x0) * Y * Z * 4``.
    exact : copy values when voxel centres coincide (see :func:`signed_permutation`); False
        always interpolates (same result, slower).
    box_origin : model voxel index of ``post[:, 0, 0, 0]`` (default: 0, 0, 0); voxels of the
        model grid outside the box are background with probability 1.
    model_shape : shape of the full model grid (default: ``post.shape[1:]``).

    ``probs`` is ``(K, x1 - x0, Y, Z)`` float32 on ``post``'s device, trilinearly interpolated
    (coordinates beyond the model grid clamp to its border) and renormalised to sum to 1.
    """
    ny, nz = int(native_shape[1]), int(native_shape[2])
    for x0, x1, region, block in native_blocks(post, model_affine, native_shape, native_affine,
                                               max_slab_bytes=max_slab_bytes, exact=exact,
                                               box_origin=box_origin, model_shape=model_shape):
        probs = _background_slab(post.shape[0], (x1 - x0, ny, nz), post.device)
        if block is not None:
            probs[:, region[0].start - x0:region[0].stop - x0, region[1], region[2]] = block
        yield x0, x1, probs
