"""Checks of an input image before segmentation (numpy + nibabel only).

One function serves the Pydra check task and the Segmenter, so both refuse the same images with
the same messages.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import nibabel as nib
import numpy as np

from l2s_pipelines.errors import InputError

#: Bytes per native voxel held while segmenting, besides the on-disk array: the float32 copy
#: and the int16 labels (see :mod:`l2s_pipelines.inference.memory`).
NATIVE_BYTES_PER_VOXEL = 4 + 2
_CHUNK = 1 << 20


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _gzip_data_bytes(path: str, need: int) -> int:
    """Decompressed length of a gzip file, counted by streaming (nothing kept) and stopped once
    ``need`` bytes are seen. A single-member file whose size trailer (ISIZE, length mod 2^32)
    equals ``need`` is taken at its word without decompressing."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() >= 18:
            fh.seek(-4, os.SEEK_END)
            if int.from_bytes(fh.read(4), "little") == need % 2**32:
                return need
        fh.seek(0)
        total, d = 0, zlib.decompressobj(wbits=31)
        while total < need:
            block = d.unconsumed_tail or fh.read(_CHUNK)
            if not block:
                break
            total += len(d.decompress(block, _CHUNK))
            if d.eof:  # a further gzip member may follow
                rest = d.unused_data
                d = zlib.decompressobj(wbits=31)
                if rest:
                    total += len(d.decompress(rest, _CHUNK))
    return total


def check_nifti_file(path, budget_bytes: int | None = None, *, count_data: bool = True):
    """Open a NIfTI file's header and check its declared size before any voxel is read.

    Refuses (InputError naming ``path``) dimensions that are not positive, voxel data shorter
    than the header declares (a forged or truncated file: counted by streaming for ``.gz``,
    never held; skipped with ``count_data=False``, for a caller that reads the voxels next and
    turns a short read into the same error), and, with ``budget_bytes``, an image whose native
    buffers (the on-disk array plus :data:`NATIVE_BYTES_PER_VOXEL` per voxel) exceed the
    budget. Returns the image with its data not yet read.
    """
    path = str(path)
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
        itemsize = np.dtype(img.get_data_dtype()).itemsize
        offset = int(getattr(img.dataobj, "offset", 0))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except Exception as exc:  # bad header (ImageFileError), truncated gzip (EOFError), zlib.error
        raise InputError(f"{path}: unreadable or truncated NIfTI ({type(exc).__name__})") from exc
    if not shape or min(shape) < 1:
        raise InputError(f"{path}: header declares the shape {shape}; every dimension must be positive")
    nvox = math.prod(shape)
    need = nvox * itemsize
    if budget_bytes and nvox * (itemsize + NATIVE_BYTES_PER_VOXEL) > budget_bytes:
        raise InputError(f"{path}: image of {'x'.join(map(str, shape))} voxels needs about "
                         f"{_gib(nvox * (itemsize + NATIVE_BYTES_PER_VOXEL))} of memory, more than the "
                         f"budget of {_gib(budget_bytes)} (raise --mem or run fewer jobs at once)")
    if not count_data:
        return img
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    try:
        have = _gzip_data_bytes(path, offset + need) - offset if gz else os.path.getsize(path) - offset
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: unreadable or truncated NIfTI ({type(exc).__name__})") from exc
    if have < need:
        raise InputError(f"{path}: header declares {'x'.join(map(str, shape))} voxels of "
                         f"{img.get_data_dtype()} ({need} bytes) but the file holds {max(have, 0)} bytes "
                         "of voxel data (truncated or inconsistent header)")
    return img


def check_image_header(img, name: str) -> tuple[int, int, int]:
    """The header part of :func:`check_input_image`, no voxel read: a NIfTI image, 3D (or 4D
    with one volume) of at least 2 voxels per axis, with a finite invertible affine. Returns the
    3D shape ``(X, Y, Z)``; raises InputError naming ``name`` and the problem."""
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
    return shape


def check_input_image(img, name: str, data: np.ndarray | None = None) -> np.ndarray:
    """Check ``img`` (3D, or 4D with one volume; invertible affine; finite; not constant).

    ``data``: its voxel array when already read (else read here). Returns the float32
    ``(X, Y, Z)`` voxel array; raises InputError naming ``name`` and the problem.
    """
    shape = check_image_header(img, name)
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
