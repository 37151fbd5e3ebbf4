"""Model-space posteriors back to the input's native voxel grid (torch ``grid_sample``).

The mapping is exact in world coordinates: native voxel ``ijk`` -> world ``A_native @ ijk`` ->
model voxel ``A_model^-1 @ world``, so it holds for any orientation, oblique affines and
anisotropic voxels. Sampling is trilinear and done in slabs along the native first axis so only
one slab of native posteriors and the part of the model grid it touches are in float32 at once.
When native voxels fall exactly on model voxels (same voxel size, only axis permutations and
flips: the usual case of a 1 mm scan and a 1 mm model) values are copied, not interpolated.
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


def _copy_slabs(post, mapping, native_shape, chunk):
    """Exact path of :func:`native_slabs`: slicing and flips (indices clamped to the grid)."""
    perm, sign, offset = mapping
    view = post.permute(0, 1 + perm[0], 1 + perm[1], 1 + perm[2])  # model axes in native order

    def take(x: torch.Tensor, axis: int, lo: int, hi: int) -> torch.Tensor:
        """Native indices lo..hi-1 along ``axis`` (1-based tensor dim) -> model values."""
        s, o, n = sign[axis - 1], offset[axis - 1], x.shape[axis]
        first, last = s * lo + o, s * (hi - 1) + o
        a, b = min(first, last), max(first, last)
        if a < 0 or b >= n:  # partly outside the model grid: clamp (rare, slow path)
            idx = (s * torch.arange(lo, hi, device=x.device) + o).clamp(0, n - 1)
            return x.index_select(axis, idx)
        x = x.narrow(axis, a, b - a + 1)
        return x.flip(axis) if s < 0 else x

    for x0 in range(0, native_shape[0], chunk):
        x1 = min(native_shape[0], x0 + chunk)
        probs = take(take(take(view, 1, x0, x1), 2, 0, native_shape[1]), 3, 0, native_shape[2]).float()
        probs /= probs.sum(0, keepdim=True).clamp_min(1e-8)
        yield x0, x1, probs


def native_slabs(post: torch.Tensor, model_affine, native_shape, native_affine, *,
                 max_slab_bytes: int = 256 << 20, exact: bool = True) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(x0, x1, probs)`` covering the native grid slab by slab.

    Parameters
    ----------
    post : (K, *model_shape) posteriors on the model grid (any float dtype, any device).
    model_affine, native_affine : 4x4 voxel -> world (mm) matrices.
    native_shape : (X, Y, Z) of the native grid.
    max_slab_bytes : bound on one slab's float32 posteriors ``K * (x1 - x0) * Y * Z * 4``.
    exact : copy values when voxel centres coincide (see :func:`signed_permutation`); False
        always interpolates (same result, slower).

    ``probs`` is ``(K, x1 - x0, Y, Z)`` float32 on ``post``'s device, trilinearly interpolated
    (coordinates beyond the model grid clamp to its border) and renormalised to sum to 1.
    """
    k = post.shape[0]
    nx, ny, nz = (int(n) for n in native_shape)
    chunk = max(1, int(max_slab_bytes // (4 * k * ny * nz)))
    mapping = signed_permutation(native_to_model_matrix(native_affine, model_affine)) if exact else None
    if mapping is not None:
        yield from _copy_slabs(post, mapping, (nx, ny, nz), chunk)
        return
    model_shape = torch.tensor(post.shape[1:], dtype=torch.float64, device=post.device)
    m = torch.as_tensor(native_to_model_matrix(native_affine, model_affine), device=post.device)
    jy = torch.arange(ny, dtype=torch.float64, device=post.device)
    kz = torch.arange(nz, dtype=torch.float64, device=post.device)
    for x0 in range(0, nx, chunk):
        x1 = min(nx, x0 + chunk)
        ix = torch.arange(x0, x1, dtype=torch.float64, device=post.device)
        ijk = torch.stack(torch.meshgrid(ix, jy, kz, indexing="ij"), dim=-1)  # (c, Y, Z, 3)
        coords = ijk @ m[:3, :3].T + m[:3, 3]  # model voxel coordinates
        flat = coords.reshape(-1, 3)
        lo = torch.floor(flat.amin(0)).clamp(min=0)
        lo = torch.minimum(lo, model_shape - 1)
        hi = torch.minimum(torch.ceil(flat.amax(0)).clamp(min=0), model_shape - 1)
        hi = torch.maximum(hi, lo)
        a, b = lo.long().tolist(), (hi.long() + 1).tolist()
        sub = post[:, a[0]:b[0], a[1]:b[1], a[2]:b[2]].float()[None]  # (1, K, ...)
        span = (hi - lo).clamp(min=1)
        norm = 2 * (coords - lo) / span - 1  # align_corners=True: -1 <-> first, +1 <-> last
        grid = norm[..., [2, 1, 0]].float()[None]  # grid_sample wants (W, H, D) order
        probs = F.grid_sample(sub, grid, mode="bilinear", padding_mode="border",
                              align_corners=True)[0]
        probs /= probs.sum(0, keepdim=True).clamp_min(1e-8)
        yield x0, x1, probs
