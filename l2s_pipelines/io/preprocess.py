"""Preprocessing shared by training (generator, real pairs) and inference.

Everything that decides what intensity range or grid a network sees lives here, so that the
synthetic training images and the preprocessed real scans match exactly.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage


def reorient_to_ras(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Closest canonical (RAS+) orientation: voxel axes 0, 1, 2 point Right, Anterior, Superior.

    Only axis permutations and flips, no interpolation.
    """
    return nib.as_closest_canonical(img)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes in mm of a 4x4 affine, shape (3,)."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def resample_to_voxel_size(data: np.ndarray, affine, voxel_size_mm, *, order: int):
    """Resample a 3D array to a new voxel size, keeping the field of view.

    Parameters
    ----------
    data : ndarray (X, Y, Z)
    affine : (4, 4) voxel -> world (mm) matrix of ``data``
    voxel_size_mm : tuple of 3 floats (or one float), target voxel size in mm
    order : int
        Spline order: 0 = nearest neighbour (labels), 1 = linear (images).

    Returns
    -------
    (data, affine) : resampled array of shape ``round(shape * old / new)`` and its affine. The
    input is returned unchanged when the voxel size already matches (to 1e-3 mm).
    """
    affine = np.asarray(affine, dtype=float)
    new = np.broadcast_to(np.asarray(voxel_size_mm, dtype=float), (3,))
    old = voxel_sizes(affine)
    if np.allclose(old, new, atol=1e-3):
        return data, affine
    scale = new / old  # input voxels per output voxel
    shape = np.maximum(1, np.round(np.array(data.shape[:3]) / scale)).astype(int)
    offset = (scale - 1) / 2  # output voxel 0 covers the same edge as input voxel 0
    out = ndimage.affine_transform(
        data, np.diag(scale), offset=offset, output_shape=tuple(shape), order=order,
        mode="nearest", prefilter=False,
    )
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = offset
    return out.astype(data.dtype, copy=False), affine @ step


def _kth_percentiles(flat: torch.Tensor, q: float) -> torch.Tensor:
    """Percentile ``q`` (0-100) along the last dim with linear interpolation (numpy 'linear')."""
    n = flat.shape[-1]
    pos = (n - 1) * q / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    v_lo = flat.kthvalue(lo + 1, dim=-1).values
    if hi == lo or pos == lo:
        return v_lo
    v_hi = flat.kthvalue(hi + 1, dim=-1).values
    return v_lo + (pos - lo) * (v_hi - v_lo)


def normalise_intensity(x, percentiles=(1, 99), *, batch_dims: int = 0):
    """Rescale so the given percentiles map to 0 and 1, then clip to [0, 1].

    Parameters
    ----------
    x : torch.Tensor or np.ndarray, any shape
    percentiles : (low, high) in percent
    batch_dims : int
        The first ``batch_dims`` dimensions index independent images, each normalised with its
        own percentiles (the generator uses 1 for ``(B, 1, *spatial)``); 0 = one image.

    Returns
    -------
    Same type, shape and device as ``x`` (float32 for numpy input, floating dtype of ``x``
    for tensors). A constant image becomes all zeros.
    """
    is_numpy = not isinstance(x, torch.Tensor)
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if is_numpy else x
    if not t.is_floating_point():
        t = t.float()
    flat = t.reshape(*t.shape[:batch_dims], -1)
    lo = _kth_percentiles(flat, percentiles[0]).unsqueeze(-1)
    hi = _kth_percentiles(flat, percentiles[1]).unsqueeze(-1)
    scale = (hi - lo).clamp_min(1e-12)
    out = ((flat - lo) / scale).clamp(0, 1)
    out = torch.where(hi - lo > 1e-12, out, torch.zeros_like(out)).reshape(t.shape)
    return out.numpy() if is_numpy else out
