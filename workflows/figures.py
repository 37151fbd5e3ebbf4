"""Report figures: three-plane mosaics of an image with its segmentation, drawn with nilearn.

Each plane is one nilearn slicer (``plot_anat``, black background, the look of fMRIPrep and
sMRIPrep reports) with the slice coordinates in mm and L/R markers; the labels are a coloured
overlay (``alpha``) with their in-plane boundaries drawn opaque on the slices shown. Colours are
FreeSurfer's (as in ``dseg.tsv``) except nearly grey ones, which vanish on a grey image and get a
display colour (:func:`display_colour`). With a reference label map, a fourth figure shows where
prediction and reference disagree. Volumes are reoriented to RAS (closest canonical) and cropped to
the labelled box; the slicers get an axis-aligned affine with the same voxel size and origin, so
nothing is resampled (coordinates of oblique images are those of the nearest RAS axes).

Example
-------
>>> labels = LabelTable.default().to_dict()
>>> plot_segmentation_mosaics("sub-01_T1w.nii.gz", "dseg.nii.gz", labels, "figures")  # doctest: +SKIP
['figures/mosaic_sagittal.png', 'figures/mosaic_coronal.png', 'figures/mosaic_axial.png']
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from l2s_pipelines.errors import InputError
from l2s_pipelines.labels import DEFAULT_SOURCE_MAP, IGNORE_VALUE, LabelTable
from l2s_pipelines.planes import PLANE_AXIS as _PLANE_AXIS
from l2s_pipelines.planes import PLANES

#: nilearn's display mode for each plane (RAS axis sliced through: ``_PLANE_AXIS``).
_DISPLAY_MODE = {"sagittal": "x", "coronal": "y", "axial": "z"}
#: Display colour of light, nearly grey labels (cerebral white matter is ``#f5f5f5`` in FreeSurfer).
WHITE_MATTER_DISPLAY = "#4aa8ff"
#: Display colour of dark, nearly grey labels (CSF is ``#3c3c3c`` in FreeSurfer).
DARK_GREY_DISPLAY = "#9fe2bf"
#: Colour of voxels where prediction and reference disagree.
DISAGREEMENT_COLOUR = "#ff00ff"
#: Largest max-min RGB spread (0-1) of a colour treated as grey.
_ACHROMATIC_CHROMA = 0.12
_TILE_WIDTH_IN = 2.0
_DPI = 100


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend, imported on first use (the
    reports import this module's colours without paying for matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_entries(labels) -> list[dict]:
    """``[{"value", "name", "abbreviation", "color"}]`` of a label table given as
    ``LabelTable.to_dict()`` or a manifest's list of labels (:meth:`LabelTable.from_dict`,
    :meth:`LabelTable.entries`)."""
    return LabelTable.from_dict(labels).entries()


def _hex_to_rgb(color: str) -> tuple[float, float, float]:
    color = str(color).lstrip("#")
    return tuple(int(color[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


def display_colour(colour: str) -> str:
    """Colour a label is drawn in by the report figures and legends (``"#rrggbb"``).

    FreeSurfer's colour (``dseg.tsv`` keeps it) unless nearly grey, which vanishes on a grey-scale
    image: light grey (cerebral white matter, ``#f5f5f5``) becomes :data:`WHITE_MATTER_DISPLAY`,
    dark grey (CSF, ``#3c3c3c``) :data:`DARK_GREY_DISPLAY`.
    """
    rgb = _hex_to_rgb(colour)
    if max(rgb) - min(rgb) > _ACHROMATIC_CHROMA:
        return "#" + str(colour).lstrip("#").lower()
    return WHITE_MATTER_DISPLAY if sum(rgb) / 3 >= 0.5 else DARK_GREY_DISPLAY


def _boundaries(lab: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)`` mask of foreground pixels whose 4-neighbour has another label."""
    edge = np.zeros(lab.shape, dtype=bool)
    diff_v = lab[1:, :] != lab[:-1, :]
    diff_h = lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    return edge & (lab > 0)


def _slice_positions(mask: np.ndarray, axis: int, n: int) -> list[int]:
    """``n`` slice indices spread over the extent of ``mask`` along ``axis`` (15% to 85%)."""
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(mask.any(axis=other))
    lo, hi = (present[0], present[-1]) if present.size else (0, mask.shape[axis] - 1)
    return sorted({int(round(p)) for p in np.linspace(lo + 0.15 * (hi - lo), lo + 0.85 * (hi - lo), n)})


def _crop_box(grey: np.ndarray | None, lab: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Box of ``(X, Y, Z)`` holding the labels (without labels: the visible intensity of the
    normalised ``grey``, needed only then), ``margin`` voxels wider."""
    content = lab > 0 if grey is None or (lab > 0).any() else grey > 0.05
    if not content.any():
        return tuple(slice(0, n) for n in lab.shape)
    box = []
    for axis in range(3):
        present = np.flatnonzero(content.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(present[0] - margin, 0), present[-1] + margin + 1))
    return tuple(box)


def _load_labels(path, shape, image_path) -> np.ndarray:
    try:
        lab = np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise InputError(f"{path}: cannot read label map for figures ({exc})") from exc
    lab = lab.reshape(lab.shape[:3]) if lab.ndim == 4 and lab.shape[3] == 1 else lab
    if lab.shape != shape:
        raise InputError(f"{path}: grid {lab.shape} differs from image {image_path} {shape}")
    return lab.astype(np.int32) if lab.dtype.kind in "ui" else np.rint(lab).astype(np.int32)


def _load_pair(image_path, dseg_path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (float32) and labels in closest-canonical (RAS) orientation, and the image's
    axis-aligned RAS affine (voxel size and origin kept)."""
    try:
        img = nib.as_closest_canonical(nib.load(str(image_path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise InputError(f"{image_path} / {dseg_path}: cannot read for figures ({exc})") from exc
    data = data.reshape(data.shape[:3]) if data.ndim == 4 and data.shape[3] == 1 else data
    if data.ndim != 3:
        raise InputError(f"{image_path}: a 3D image is needed for figures, got shape {data.shape}")
    lab = _load_labels(dseg_path, data.shape, image_path)
    affine = np.diag([*(float(z) for z in img.header.get_zooms()[:3]), 1.0])
    affine[:3, 3] = img.affine[:3, 3]
    return data, lab, affine


def _normalise(data: np.ndarray, box: tuple[slice, ...] | None = None) -> np.ndarray:
    """Grey values of ``data[box]`` (default: all) scaled to 0-1 between the 1st and 99.5th
    percentiles of the whole image (every second voxel along each axis)."""
    sample = data[::2, ::2, ::2]
    sample = sample[np.isfinite(sample)]
    lo, hi = np.percentile(sample, (1, 99.5)) if sample.size else (0.0, 1.0)
    part = data if box is None else data[box]
    grey = np.nan_to_num((part - lo) / max(hi - lo, 1e-6), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(grey, 0, 1, out=grey)


class _Volumes:
    """Grey image, label maps (display indices 1..K, 0 = none) and affine, cropped."""

    def __init__(self, image_path, dseg_path, labels, reference_path=None):
        data, lab, affine = _load_pair(image_path, dseg_path)
        ref = _load_labels(reference_path, data.shape, image_path) if reference_path else None
        box = _crop_box(None if (lab > 0).any() else _normalise(data), lab, margin=6)
        self.affine = affine.copy()
        self.affine[:3, 3] = affine[:3, :3] @ [b.start for b in box] + affine[:3, 3]
        self.grey = _normalise(data, box)
        entries = label_entries(labels)
        self.colours = [display_colour(e["color"]) for e in entries] + ["#808080"]
        lut = np.full(int(max(lab.max(), ref.max() if ref is not None else 0, 0)) + 1, len(entries) + 1, np.int16)
        lut[0] = 0
        for i, e in enumerate(entries):
            if 0 < e["value"] < lut.size:
                lut[e["value"]] = i + 1
        self.index = lut[np.clip(lab[box], 0, None)]
        self.reference = None
        if ref is not None:
            ref = ref[box]
            ignore = ref == IGNORE_VALUE
            mapping = (labels.get("source_map") if isinstance(labels, dict) else None) or DEFAULT_SOURCE_MAP
            for src, dst in mapping.items():
                ref[ref == int(src)] = int(dst)
            self.reference = lut[np.clip(np.where(ignore, 0, ref), 0, lut.size - 1)]
            self.ignore = ignore

    def image(self, data: np.ndarray) -> nib.Nifti1Image:
        return nib.Nifti1Image(np.asarray(data, dtype=np.float32), self.affine)

    def cuts(self, plane: str, n: int) -> tuple[list[int], list[float]]:
        """Slice indices and their world coordinates (mm) along the plane's axis."""
        axis = _PLANE_AXIS[plane]
        mask = self.index > 0 if (self.index > 0).any() else self.grey > 0.1
        idx = _slice_positions(mask, axis, n)
        return idx, [float(self.affine[axis, axis] * i + self.affine[axis, 3]) for i in idx]

    def boundary_volume(self, index: np.ndarray, plane: str, slices: list[int]) -> np.ndarray:
        """``index`` restricted to its in-plane boundaries on ``slices`` (zero elsewhere)."""
        axis = _PLANE_AXIS[plane]
        out = np.zeros_like(index)
        for i in slices:
            where = (slice(None),) * axis + (i,)
            two_d = index[where]
            out[where] = np.where(_boundaries(two_d), two_d, 0)
        return out

    def aspect(self, plane: str) -> float:
        """Height / width (mm) of one tile of ``plane``."""
        axis = _PLANE_AXIS[plane]
        w_axis, h_axis = (a for a in range(3) if a != axis)
        size = np.asarray(self.grey.shape) * np.abs(np.diag(self.affine)[:3])
        return float(size[h_axis] / size[w_axis])


def _slicer(vols: _Volumes, plane: str, coords: list[float], figure, axes=None):
    """A nilearn slicer of the grey image: black background, no cross, no colour bar."""
    from nilearn import plotting

    return plotting.plot_anat(vols.image(vols.grey), display_mode=_DISPLAY_MODE[plane], cut_coords=coords,
                              figure=figure, axes=axes, annotate=False, draw_cross=False, black_bg=True,
                              dim=0, vmin=0.0, vmax=1.0, colorbar=False)


def _overlay(display, vols: _Volumes, index: np.ndarray, colours: list[str], alpha: float) -> None:
    """Values 1..len(colours) of ``index`` drawn in those colours (0 transparent, no resampling)."""
    if not (index > 0).any():
        return
    from matplotlib.colors import ListedColormap

    display.add_overlay(vols.image(index), threshold=0.5, cmap=ListedColormap(colours), vmin=0.5,
                        vmax=len(colours) + 0.5, transparency=alpha, resampling_interpolation="nearest",
                        interpolation="nearest")


def _annotate(display, plane: str, coords: list[float], size: int = 9) -> None:
    """Slice positions (mm) on every cut, L/R on coronal and axial cuts; sagittal cuts say which
    hemisphere they cut (x < 0: left)."""
    display.annotate(left_right=True, positions=True, size=size)
    if plane == "sagittal":
        for coord, cut in zip(coords, display.axes.values()):
            side = "L" if coord < 0 else "R" if coord > 0 else "mid"
            cut.ax.text(0.02, 0.98, side, transform=cut.ax.transAxes, color="w", fontsize=size,
                        va="top", ha="left", bbox={"facecolor": "k", "edgecolor": "none", "pad": 1})


def _figure(vols: _Volumes, planes, n: int, caption_in: float = 0.0) -> tuple:
    """A black figure for ``n`` tiles per plane; returns it and each row's height as a share."""
    width = _TILE_WIDTH_IN * n
    heights = [max(_TILE_WIDTH_IN * vols.aspect(p), 1.0) for p in planes]
    total = sum(heights) + caption_in
    return _pyplot().figure(figsize=(width, total), facecolor="k"), [h / total for h in heights]


def plot_segmentation_mosaics(image_path, dseg_path, labels, out_dir, *, reference_path=None,
                              n_slices: int = 6, alpha: float = 0.45) -> list[str]:
    """Write one PNG mosaic per plane (sagittal, coronal, axial) of ``image`` with ``dseg`` on top.

    Parameters
    ----------
    image_path, dseg_path : path-like
        3D NIfTI image and its label map on the same grid (label values, not channel indices).
    labels : dict or list
        ``LabelTable.to_dict()`` (values, names, colours "#rrggbb"); see :func:`label_entries`.
        Labels not in it are drawn grey.
    out_dir : path-like
        Folder created if needed; files ``mosaic_<plane>.png``.
    reference_path : path-like, optional
        Reference label map on the same grid (255 = ignore); adds ``mosaic_disagreement.png``
        (:func:`plot_disagreement`).
    n_slices : int
        Slices per plane, spread over 15-85% of the segmented extent.
    alpha : float
        Opacity of the label colours inside structures; boundaries are drawn opaque.

    Returns
    -------
    list of str
        Paths of the PNG files: the three planes in order, then the disagreement figure if any.
    """
    vols = _Volumes(image_path, dseg_path, labels, reference_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for plane in PLANES:
        slices, coords = vols.cuts(plane, n_slices)
        fig, _ = _figure(vols, [plane], len(slices))
        display = _slicer(vols, plane, coords, fig)
        _overlay(display, vols, vols.index, vols.colours, alpha)
        _overlay(display, vols, vols.boundary_volume(vols.index, plane, slices), vols.colours, 1.0)
        _annotate(display, plane, coords)
        path = out_dir / f"mosaic_{plane}.png"
        fig.savefig(path, dpi=_DPI, facecolor="k")
        _pyplot().close(fig)
        paths.append(str(path))
    if vols.reference is not None:
        paths.append(str(plot_disagreement(vols, out_dir / "mosaic_disagreement.png", n_slices)))
    return paths


def disagreement_fraction(vols: _Volumes) -> float:
    """Share of the voxels labelled in prediction or reference (ignored voxels left out) where
    the two differ."""
    labelled = ((vols.index > 0) | (vols.reference > 0)) & ~vols.ignore
    differ = (vols.index != vols.reference) & labelled
    return float(differ.sum() / labelled.sum()) if labelled.any() else 0.0


def plot_disagreement(vols: _Volumes, path, n_slices: int = 6) -> Path:
    """One PNG, a row per plane (the same slices as the mosaics): the reference's label
    boundaries in their display colours and, filled in :data:`DISAGREEMENT_COLOUR`, the voxels
    where the prediction differs from the reference (ignored reference voxels left out)."""
    differ = ((vols.index != vols.reference) & ~vols.ignore).astype(np.int16)
    fig, shares = _figure(vols, PLANES, n_slices, caption_in=0.3)
    top = 1.0
    for plane, share in zip(PLANES, shares):
        slices, coords = vols.cuts(plane, n_slices)
        ax = fig.add_axes([0.0, top - share, 1.0, share])
        top -= share
        display = _slicer(vols, plane, coords, fig, axes=ax)
        _overlay(display, vols, differ, [DISAGREEMENT_COLOUR], 0.8)
        _overlay(display, vols, vols.boundary_volume(vols.reference, plane, slices), vols.colours, 1.0)
        _annotate(display, plane, coords)
    fig.text(0.5, 0.12 * (1 - sum(shares)), f"magenta: prediction differs from reference ({100 * disagreement_fraction(vols):.1f}% "
             "of labelled voxels); lines: reference label boundaries", color="w", ha="center", va="bottom",
             fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=_DPI, facecolor="k")
    _pyplot().close(fig)
    return path
