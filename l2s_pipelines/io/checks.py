"""Checks of an input image before segmentation (numpy + nibabel only).

One function serves the Pydra check task and the Segmenter, so both refuse the same images with
the same messages.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from l2s_pipelines.errors import InputError


def check_input_image(img, name: str, data: np.ndarray | None = None) -> np.ndarray:
    """Check ``img`` (3D, or 4D with one volume; invertible affine; finite; not constant).

    ``data``: its voxel array when already read (else read here). Returns the float32
    ``(X, Y, Z)`` voxel array; raises InputError naming ``name`` and the problem.
    """
    if not isinstance(img, nib.spatialimages.SpatialImage):
        raise InputError(f"{name}: expected a NIfTI image, got {type(img).__name__}")
    shape = tuple(img.shape)
    if len(shape) == 4 and shape[3] > 1:
        raise InputError(f"{name}: 4D image with {shape[3]} volumes; a single 3D volume "
                         "(or 4D with one volume) is required")
    shape = shape[:3] if len(shape) == 4 else shape
    if len(shape) != 3 or min(shape) < 2:
        raise InputError(f"{name}: image of shape {img.shape} is {min(len(shape), 2)}D; "
                         "a 3D volume is required")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise InputError(f"{name}: the affine is not invertible or not finite")
    if data is None:
        data = np.asanyarray(img.dataobj, dtype=np.float32)  # no cached copy in img
    data = np.asarray(data, dtype=np.float32).reshape(shape)
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputError(f"{name}: {bad} voxels are NaN or Inf (missing or infinite values)")
    lo, hi = float(data.min()), float(data.max())
    if hi == lo:
        what = "all zero" if hi == 0 else f"constant (every voxel = {hi:g})"
        raise InputError(f"{name}: image is {what}; nothing to segment")
    return data
