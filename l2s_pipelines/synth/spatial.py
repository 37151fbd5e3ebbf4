"""Spatial steps: random affine + smooth elastic deformation + crop, and left-right flip.

Deformation and crop are one resampling: for each output (patch) voxel ``o`` (centred
coordinates, voxels), the input voxel read is ``centre + A @ o + t + u(o)`` where ``A`` is
rotation x shear x zoom, ``t`` a translation and ``u`` a smooth displacement field. Labels are
read by nearest neighbour, so no new label value can appear; outside the input reads 0.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from l2s_pipelines.synth.sampling import bernoulli, smooth_upsample, uniform


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from angles in radians: (B, 1) -> (B, 2, 2), (B, 3) -> (B, 3, 3)."""
    c, s = angles.cos(), angles.sin()
    B = angles.shape[0]
    if angles.shape[1] == 1:
        return torch.stack([c[:, 0], -s[:, 0], s[:, 0], c[:, 0]], -1).reshape(B, 2, 2)
    eye = torch.eye(3, device=angles.device).expand(B, 3, 3)
    out = eye
    for axis in range(3):
        i, j = [a for a in range(3) if a != axis]
        r = eye.clone()
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c[:, axis], -s[:, axis], s[:, axis], c[:, axis]
        out = out @ r
    return out


def sample_affine(batch: int, ndim: int, cfg, generator, device=None):
    """Random linear part and translation of the affine.

    Returns
    -------
    matrix : (B, ndim, ndim) rotation (up to ``cfg.max_rotation_deg``) x shear (off-diagonal up
        to ``cfg.max_shear``) x zoom (diagonal in 1 +/- ``cfg.max_zoom``)
    translation_fraction : (B, ndim) translation as a fraction of the field of view
        (up to ``cfg.max_translation``)
    """
    n_angles = 1 if ndim == 2 else 3
    rad = math.radians(cfg.max_rotation_deg)
    angles = uniform((batch, n_angles), -rad, rad, generator, device)
    shear = uniform((batch, ndim, ndim), -cfg.max_shear, cfg.max_shear, generator, device)
    eye = torch.eye(ndim, device=device)
    shear = eye + shear * (1 - eye)
    zoom = uniform((batch, ndim), 1 - cfg.max_zoom, 1 + cfg.max_zoom, generator, device)
    t = cfg.max_translation
    translation = uniform((batch, ndim), -t, t, generator, device)
    return _rotation(angles) @ shear @ torch.diag_embed(zoom), translation


def sample_elastic(batch: int, ndim: int, cfg, generator, device=None) -> torch.Tensor:
    """Coarse displacement control points, (B, ndim, *[cfg.elastic_grid]*ndim), as a fraction
    of the field of view: each element's amplitude is U(0, ``cfg.max_elastic``), each control
    point U(-amplitude, amplitude)."""
    amp = uniform((batch,) + (1,) * (ndim + 1), 0, cfg.max_elastic, generator, device)
    grid = (batch, ndim) + (cfg.elastic_grid,) * ndim
    return amp * uniform(grid, -1, 1, generator, device)


def sample_crop(batch: int, in_shape, patch_shape, generator, device=None) -> torch.Tensor:
    """(B, ndim) first input voxel of each patch: uniform over positions that keep the patch
    inside the input; centred where the patch is larger than the input."""
    in_t = torch.tensor(in_shape, dtype=torch.float32, device=device)
    pa_t = torch.tensor(patch_shape, dtype=torch.float32, device=device)
    room = in_t - pa_t
    u = uniform((batch, len(in_shape)), 0, 1, generator, device)
    return torch.where(room > 0, torch.floor(u * (room + 1)), room / 2)


def sample_flip(batch: int, prob: float, generator, device=None) -> torch.Tensor:
    """(B,) bool: which elements are flipped left-right."""
    return bernoulli((batch,), prob, generator, device)


def deformation_grid(in_shape, patch_shape, *, offset, matrix=None, translation=None,
                     elastic=None) -> torch.Tensor:
    """Sampling grid for ``F.grid_sample`` (align_corners=True), (B, *patch, ndim).

    Parameters
    ----------
    in_shape, patch_shape : spatial shapes (voxels)
    offset : (B, ndim) first input voxel of the patch (see :func:`sample_crop`)
    matrix : (B, ndim, ndim) or None (identity)
    translation : (B, ndim) fraction of the input field of view, or None
    elastic : (B, ndim, *coarse) displacement control points (fraction of FOV), or None
    """
    B, ndim = offset.shape
    device = offset.device
    in_t = torch.tensor(in_shape, dtype=torch.float32, device=device)
    pa_t = torch.tensor(patch_shape, dtype=torch.float32, device=device)
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in patch_shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1) - (pa_t - 1) / 2  # (*patch, nd)
    coords = coords.reshape(1, -1, ndim)
    if matrix is not None:
        coords = coords @ matrix.transpose(1, 2)
    centre = offset + (pa_t - 1) / 2
    if translation is not None:
        centre = centre + translation * in_t
    coords = coords + centre[:, None, :]
    if elastic is not None:
        disp = smooth_upsample(elastic, patch_shape) * in_t.reshape(1, ndim, *[1] * ndim)
        coords = coords + disp.reshape(B, ndim, -1).transpose(1, 2)
    coords = 2 * coords / (in_t - 1).clamp_min(1) - 1
    return coords.flip(-1).reshape(B, *patch_shape, ndim)


def resample_labels(label_maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling of integer label maps.

    label_maps : (B, 1, *in) integer; grid : (B, *patch, ndim) from :func:`deformation_grid`.
    Returns (B, 1, *patch) long with values from the input (0 outside).
    """
    out = F.grid_sample(label_maps.float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=True)
    return out.round().long()


def apply_flip(x: torch.Tensor, flip: torch.Tensor, axis: int) -> torch.Tensor:
    """Flip elements of x (B, ...) along dimension ``axis`` where ``flip`` (B,) is True."""
    mask = flip.reshape(-1, *[1] * (x.dim() - 1))
    return torch.where(mask, x.flip(axis), x)
