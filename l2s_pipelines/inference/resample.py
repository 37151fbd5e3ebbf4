"""Model-space posteriors back to the input's native voxel grid (torch ``grid_sample``).

The mapping is exact in world coordinates: native voxel ``ijk`` -> world ``A_native @ ijk`` ->
model voxel ``A_model^-1 @ world``, so it holds for any orientation, oblique affines and
anisotropic voxels. Sampling is trilinear and done in slabs along the native first axis so only
one slab of native posteriors and the part of the model grid it touches are in float32 at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F


def native_to_model_matrix(native_affine, model_affine) -> np.ndarray:
    """4x4 float64 matrix mapping native voxel indices to model voxel indices."""
    return np.linalg.inv(np.asarray(model_affine, float)) @ np.asarray(native_affine, float)


def native_slabs(post: torch.Tensor, model_affine, native_shape, native_affine, *,
                 max_slab_bytes: int = 256 << 20) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(x0, x1, probs)`` covering the native grid slab by slab.

    Parameters
    ----------
    post : (K, *model_shape) posteriors on the model grid (any float dtype, any device).
    model_affine, native_affine : 4x4 voxel -> world (mm) matrices.
    native_shape : (X, Y, Z) of the native grid.
    max_slab_bytes : bound on one slab's float32 posteriors ``K * (x1 - x0) * Y * Z * 4``.

    ``probs`` is ``(K, x1 - x0, Y, Z)`` float32 on ``post``'s device, trilinearly interpolated
    (coordinates beyond the model grid clamp to its border) and renormalised to sum to 1.
    """
    k = post.shape[0]
    model_shape = torch.tensor(post.shape[1:], dtype=torch.float64, device=post.device)
    m = torch.as_tensor(native_to_model_matrix(native_affine, model_affine), device=post.device)
    nx, ny, nz = (int(n) for n in native_shape)
    chunk = max(1, int(max_slab_bytes // (4 * k * ny * nz)))
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
