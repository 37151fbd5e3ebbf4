"""Loading label maps and images (RAS, checked), 2D slicing, and training datasets.

All loaders reorient to RAS (``nib.as_closest_canonical``: voxel axis 0 = left->right) and
raise :class:`l2s_pipelines.errors.InputError` naming the file on unusable input.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from l2s_pipelines.errors import InputError
from l2s_pipelines.inference.memory import available_memory_bytes
from l2s_pipelines.io.checks import check_nifti_file
from l2s_pipelines.io.preprocess import normalise_intensity, reorient_to_ras, resample_to_voxel_size
from l2s_pipelines.planes import PLANE_AXIS


def _read(path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load, reorient to RAS and read the data array (3D; trailing singleton dims dropped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    check_nifti_file(path, available_memory_bytes())  # declared size: against the file and memory
    try:
        img = reorient_to_ras(nib.load(str(path)))
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as e:
        raise InputError(f"{path}: cannot read NIfTI image ({type(e).__name__}: {e})") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return img, data


def load_label_map(path, *, voxel_size=None) -> tuple[torch.Tensor, np.ndarray]:
    """Read an integer label map.

    Parameters
    ----------
    path : NIfTI file
    voxel_size : float or 3 floats (mm), optional: nearest-neighbour resampling target

    Returns
    -------
    labels : LongTensor (1, X, Y, Z) in RAS
    affine : (4, 4) voxel -> world (mm) of the returned grid

    Raises InputError for unreadable files, non-3D data, non-finite, negative or non-integer
    values (e.g. a float map with fractional values), and all-zero maps.
    """
    img, data = _read(path)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise InputError(f"{path}: label map contains NaN or infinite values")
        if not np.array_equal(data, np.round(data)):
            raise InputError(f"{path}: label map has non-integer values (stored as {data.dtype}); "
                             "is this an intensity image rather than a segmentation?")
    elif data.dtype.kind not in "iub":
        raise InputError(f"{path}: unsupported label map data type {data.dtype}")
    data = data.astype(np.int64)
    if data.min() < 0:
        raise InputError(f"{path}: label map has negative values")
    if not data.any():
        raise InputError(f"{path}: label map is empty (all zero)")
    affine = img.affine
    if voxel_size is not None:
        data, affine = resample_to_voxel_size(data, affine, voxel_size, order=0)
    return torch.from_numpy(np.ascontiguousarray(data))[None], affine


def load_image(path, *, voxel_size=None) -> tuple[torch.Tensor, np.ndarray]:
    """Read an intensity image as float32 (1, X, Y, Z) in RAS, optionally resampled linearly
    to ``voxel_size`` mm. Raises InputError for unreadable, non-3D, non-finite or constant
    images. Intensities are not normalised (see :func:`normalise_intensity`)."""
    img, data = _read(path)
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise InputError(f"{path}: image contains NaN or infinite values")
    if data.max() == data.min():
        raise InputError(f"{path}: image is constant ({float(data.max())})")
    affine = img.affine
    if voxel_size is not None:
        data, affine = resample_to_voxel_size(data, affine, voxel_size, order=1)
    return torch.from_numpy(np.ascontiguousarray(data))[None], affine


def slices_2d(volume: torch.Tensor, plane: str) -> torch.Tensor:
    """Cut a RAS volume (1, X, Y, Z) into 2D slices (N, 1, H, W).

    sagittal: N = X, (H, W) = (Y, Z); coronal: N = Y, (X, Z); axial: N = Z, (X, Y). In coronal
    and axial slices the first in-plane axis is left-right (what the generator flips).
    """
    if plane not in PLANE_AXIS:
        raise ValueError(f"unknown plane {plane!r}; choose from {sorted(PLANE_AXIS)}")
    return volume[0].movedim(PLANE_AXIS[plane], 0).unsqueeze(1)


def crop_or_pad(x: torch.Tensor, start, size, fill=0) -> torch.Tensor:
    """Window of ``size`` starting at ``start`` over the last ``len(size)`` dims of ``x``;
    positions outside ``x`` are filled with ``fill``."""
    nd = len(size)
    out = torch.full((*x.shape[:-nd], *size), fill, dtype=x.dtype)
    src, dst = [], []
    for s0, n, n_in in zip(start, size, x.shape[-nd:]):
        lo, hi = max(s0, 0), min(s0 + n, n_in)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s0, hi - s0))
    out[(..., *dst)] = x[(..., *src)]
    return out


def _random_window(shape, size, generator) -> list[int]:
    """Start of a window of ``size`` uniformly inside ``shape`` (centred where larger)."""
    out = []
    for n_in, n in zip(shape, size):
        if n_in > n:
            out.append(int(torch.randint(0, n_in - n + 1, (1,), generator=generator)))
        else:
            out.append(-((n - n_in) // 2))
    return out


class _SliceIndex:
    """Volumes kept whole; 2D samples are (volume, slice) pairs of slices with content."""

    def __init__(self, masks, plane, min_fraction):
        axis = PLANE_AXIS[plane]
        pairs = []
        for v, m in enumerate(masks):
            other = tuple(a for a in range(3) if a != axis)
            frac = m.float().mean(dim=other)
            keep = torch.nonzero(frac >= min_fraction * frac.max()).flatten()
            pairs += [(v, int(s)) for s in keep]
        self.pairs = pairs
        self.axis = axis

    def draw(self, batch_size, generator):
        idx = torch.randint(0, len(self.pairs), (batch_size,), generator=generator)
        return [self.pairs[i] for i in idx.tolist()]

    def slab(self, volume: torch.Tensor, s: int, depth: int) -> torch.Tensor:
        """``depth`` neighbouring slices of ``volume`` (X, Y, Z) centred on slice ``s`` along the
        plane's axis, as ``(H, W, depth)`` (in-plane axes in increasing order, then the slices in
        increasing order; zeros beyond the volume)."""
        moved = volume.movedim(self.axis, -1)
        return crop_or_pad(moved, (0, 0, s - depth // 2), (*moved.shape[:2], depth))


class LabelMapDataset:
    """Label maps held in memory (int16, RAS, cropped to their non-zero bounding box).

    Parameters
    ----------
    paths : label map files
    voxel_size : mm, optional nearest resampling
    ndim : 2 (random slices along ``plane``) or 3 (random 3D windows)
    plane : "sagittal", "coronal" or "axial" (2D only)
    min_fraction : a slice is used when its content fraction is at least this share of the
        fullest slice of its volume (skips near-empty slices)
    content_labels : label values that count as content for that choice (e.g. the label table's
        structures, so that slices of the neck, with only extracerebral labels, are skipped);
        default: every non-zero label
    slab_depth : 2D only: 0 for slices, or an odd number of neighbouring slices drawn around each
        chosen slice as a 3D block ``(H, W, slab_depth)`` (for inputs of several slices,
        :class:`l2s_pipelines.synth.slab.SlabGenerator`)
    """

    def __init__(self, paths, *, voxel_size=None, ndim: int = 3, plane: str = "axial",
                 min_fraction: float = 0.25, content_labels=None, slab_depth: int = 0):
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if slab_depth and (ndim != 2 or slab_depth % 2 == 0 or slab_depth < 0):
            raise ValueError(f"slab_depth must be 0 or odd, and 2D only, got {slab_depth} with ndim={ndim}")
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise InputError("no label maps given")
        self.ndim, self.plane, self.slab_depth = ndim, plane, int(slab_depth)
        self.volumes = []
        for p in self.paths:
            lab, _ = load_label_map(p, voxel_size=voxel_size)
            if lab.max() > torch.iinfo(torch.int16).max:
                raise InputError(f"{p}: label values above 32767 are not supported")
            nz = torch.nonzero(lab[0])
            lo, hi = nz.min(0).values, nz.max(0).values + 1
            self.volumes.append(lab[0, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].to(torch.int16).clone())
        self.index = None
        if ndim == 2:
            content = None
            if content_labels is not None:
                content = torch.tensor(sorted({int(v) for v in content_labels} - {0}), dtype=torch.int16)
            masks = [(v != 0) if content is None else torch.isin(v, content) for v in self.volumes]
            if not any(bool(m.any()) for m in masks):
                raise InputError(f"{self.paths[0].parent}: no slice of these label maps holds any of the "
                                 f"content labels {content.tolist()}")
            self.index = _SliceIndex(masks, plane, min_fraction)

    def __len__(self) -> int:
        return len(self.volumes)

    def label_values(self) -> list[int]:
        """Sorted label values present in the maps."""
        return sorted(set().union(*(set(torch.unique(v).tolist()) for v in self.volumes)))

    def sample_batch(self, batch_size: int, generator: torch.Generator, patch_size=None) -> torch.Tensor:
        """Random label maps (B, 1, *patch) long: 2D slices or 3D windows of ``patch_size``
        (default: the largest volume / slice shape; smaller inputs are zero-padded, centred).
        With ``slab_depth``: blocks ``(B, 1, *patch, slab_depth)`` of neighbouring slices."""
        if self.ndim == 2:
            picks = self.index.draw(batch_size, generator)
            if self.slab_depth:
                items = [self.index.slab(self.volumes[v], s, self.slab_depth) for v, s in picks]
            else:
                items = [self.volumes[v].select(self.index.axis, s) for v, s in picks]
        else:
            idx = torch.randint(0, len(self.volumes), (batch_size,), generator=generator)
            items = [self.volumes[i] for i in idx.tolist()]
        if patch_size is None:
            patch_size = tuple(max(it.shape[d] for it in items) for d in range(self.ndim))
        depth = (self.slab_depth,) if self.slab_depth else ()
        out = [crop_or_pad(it, _random_window(it.shape, patch_size, generator) + [0] * len(depth),
                           (*patch_size, *depth)) for it in items]
        return torch.stack(out)[:, None].long()


class RealPairDataset:
    """Real images with reference labels, preprocessed as at inference.

    Images: RAS, linear resampling to ``voxel_size``, :func:`normalise_intensity`. Labels: RAS,
    nearest resampling, mapped to channel indices of ``label_table`` (255 -> IGNORE_INDEX).
    A reference value that is neither in the table nor 255 raises InputError.
    """

    def __init__(self, image_paths, label_paths, label_table, *, voxel_size=None, ndim: int = 3,
                 plane: str = "axial", min_fraction: float = 0.25, slices: int = 1):
        image_paths, label_paths = list(image_paths), list(label_paths)
        if len(image_paths) != len(label_paths) or not image_paths:
            raise InputError(f"need as many images as label maps (got {len(image_paths)} images, "
                             f"{len(label_paths)} label maps)")
        if slices < 1 or slices % 2 == 0 or (slices > 1 and ndim != 2):
            raise ValueError(f"slices must be odd and > 1 only in 2D, got {slices} with ndim={ndim}")
        self.ndim, self.plane, self.table, self.slices = ndim, plane, label_table, int(slices)
        self.image_paths = [Path(p) for p in image_paths]
        self.label_paths = [Path(p) for p in label_paths]
        self.images, self.targets, self.affines = [], [], []
        allowed = set(label_table.values) | {255}
        for ip, lp in zip(self.image_paths, self.label_paths):
            image, affine = load_image(ip, voxel_size=voxel_size)
            labels, laff = load_label_map(lp, voxel_size=voxel_size)
            if labels.shape != image.shape or not np.allclose(laff, affine, atol=1e-3):
                raise InputError(f"{lp}: reference grid {tuple(labels.shape[1:])} does not match "
                                 f"image {ip} {tuple(image.shape[1:])}")
            unknown = sorted(set(torch.unique(labels).tolist()) - allowed)
            if unknown:
                raise InputError(f"{lp}: reference has label values outside the label table: {unknown}")
            self.images.append(normalise_intensity(image))
            self.targets.append(label_table.source_to_target(labels[0]))
            self.affines.append(affine)
        masks = [(t > 0) for t in self.targets]
        self.index = _SliceIndex(masks, plane, min_fraction) if ndim == 2 else None

    def __len__(self) -> int:
        return len(self.images)

    def all_volumes(self) -> list[dict]:
        """Every subject: {"image": (1, X, Y, Z) float32, "target": (X, Y, Z) long,
        "affine": (4, 4), "image_path", "label_path"}."""
        return [dict(image=i, target=t, affine=a, image_path=ip, label_path=lp)
                for i, t, a, ip, lp in zip(self.images, self.targets, self.affines,
                                            self.image_paths, self.label_paths)]

    def sample_batch(self, batch_size: int, generator: torch.Generator, patch_size=None):
        """Random (image (B, C, *patch) float32, target (B, *patch) long) pairs: 2D slices
        with content or 3D windows; outside the volume image 0, target 0 (background). ``C`` is 1,
        or in 2D ``slices`` neighbouring slices centred on the target's (in increasing order)."""
        if self.ndim == 2:
            picks = self.index.draw(batch_size, generator)
            ax = self.index.axis
            items = [(self.index.slab(self.images[v][0], s, self.slices).movedim(-1, 0),
                      self.targets[v].select(ax, s)) for v, s in picks]
        else:
            idx = torch.randint(0, len(self.images), (batch_size,), generator=generator)
            items = [(self.images[i][0], self.targets[i]) for i in idx.tolist()]
        if patch_size is None:
            patch_size = tuple(max(it[1].shape[d] for it in items) for d in range(self.ndim))
        images, targets = [], []
        for img, tgt in items:
            start = _random_window(tgt.shape, patch_size, generator)
            images.append(crop_or_pad(img, start, patch_size))
            targets.append(crop_or_pad(tgt, start, patch_size))
        images = torch.stack(images)
        return (images if self.ndim == 2 else images[:, None]), torch.stack(targets)
