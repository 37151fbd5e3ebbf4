"""Report figures: three-plane mosaics of an image with its segmentation as coloured overlay.

The mosaics are composed directly in numpy (grey image, label colours blended with an alpha,
label boundaries drawn opaque) and written with ``matplotlib.pyplot.imsave`` on the Agg
backend: no figure layout is involved, so a 256^3 volume takes well under a second.

Example
-------
>>> labels = {"values": [0, 2], "names": ["background", "wm"], "colors": ["#000000", "#f5f5f5"]}
>>> plot_segmentation_mosaics("sub-01_T1w.nii.gz", "dseg.nii.gz", labels, "figures")  # doctest: +SKIP
['figures/mosaic_sagittal.png', 'figures/mosaic_coronal.png', 'figures/mosaic_axial.png']
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from l2s_pipelines.errors import InputError  # noqa: E402

PLANES = ("sagittal", "coronal", "axial")
#: RAS axis sliced through for each plane.
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def label_entries(labels) -> list[dict]:
    """Normalise a label table description to ``[{"value", "name", "abbreviation", "color"}]``.

    Accepts ``LabelTable.to_dict()`` output in either of its plausible shapes: a mapping of
    parallel lists (``values``/``names``/``colors``[/``abbreviations``]), a mapping with a
    ``labels`` list, or a list of rows (``index`` or ``value``, ``name``, ``color``).
    """
    if isinstance(labels, dict) and "labels" in labels and not isinstance(labels.get("values"), list):
        labels = labels["labels"]
    if isinstance(labels, dict):
        values = labels.get("values", labels.get("index"))
        if values is None:
            raise InputError(f"label table: no 'values' in keys {sorted(labels)}")
        n = len(values)
        names = labels.get("names") or [str(v) for v in values]
        colors = labels.get("colors") or ["#808080"] * n
        abbrevs = labels.get("abbreviations") or labels.get("abbreviation") or [None] * n
        rows = [
            {"value": values[i], "name": names[i], "abbreviation": abbrevs[i], "color": colors[i]}
            for i in range(n)
        ]
    else:
        rows = []
        for row in labels:
            value = row.get("value", row.get("index"))
            rows.append({"value": value, "name": row.get("name", str(value)),
                         "abbreviation": row.get("abbreviation"), "color": row.get("color", "#808080")})
    out = []
    for row in rows:
        name = str(row["name"])
        abbrev = row["abbreviation"] or "".join(w[0] for w in name.replace("_", "-").split("-") if w).upper()
        out.append({"value": int(row["value"]), "name": name, "abbreviation": str(abbrev),
                    "color": str(row["color"]).lower()})
    return out


def _hex_to_rgb(color: str) -> tuple[float, float, float]:
    color = color.lstrip("#")
    return tuple(int(color[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


def _colour_lut(entries: list[dict], max_value: int) -> np.ndarray:
    """``(max_value + 1, 3)`` float RGB per label value; unknown values grey."""
    lut = np.full((max_value + 1, 3), 0.5, dtype=np.float32)
    for row in entries:
        if 0 <= row["value"] <= max_value:
            lut[row["value"]] = _hex_to_rgb(row["color"])
    return lut


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


def _upsample(rgb: np.ndarray, pixel_mm: tuple[float, float], min_height: int) -> np.ndarray:
    """Nearest-neighbour upsampling of ``(H, W, 3)`` to square pixels and a readable size."""
    base = min(pixel_mm)
    fh, fw = (max(1, int(round(p / base))) for p in pixel_mm)
    scale = max(1, int(np.ceil(min_height / (rgb.shape[0] * fh))))
    return np.repeat(np.repeat(rgb, fh * scale, axis=0), fw * scale, axis=1)


def _crop_to_content(grey: np.ndarray, lab: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop both ``(X, Y, Z)`` volumes to the box holding labels or visible intensity."""
    content = (lab > 0) | (grey > 0.05)
    if not content.any():
        return grey, lab
    box = []
    for axis in range(3):
        present = np.flatnonzero(content.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(present[0] - margin, 0), present[-1] + margin + 1))
    return grey[tuple(box)], lab[tuple(box)]


def _load_pair(image_path, dseg_path) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Both volumes in closest-canonical (RAS) orientation; returns image, labels, zooms (mm)."""
    try:
        img = nib.as_closest_canonical(nib.load(str(image_path)))
        seg = nib.as_closest_canonical(nib.load(str(dseg_path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
        lab = np.asarray(seg.dataobj).astype(np.int32)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise InputError(f"{image_path} / {dseg_path}: cannot read for figures ({exc})") from exc
    data = data.reshape(data.shape[:3]) if data.ndim == 4 and data.shape[3] == 1 else data
    if data.shape != lab.shape:
        raise InputError(f"{dseg_path}: grid {lab.shape} differs from image {image_path} {data.shape}")
    return data, lab, tuple(float(z) for z in seg.header.get_zooms()[:3])


def plot_segmentation_mosaics(image_path, dseg_path, labels, out_dir, *, n_slices: int = 6,
                              alpha: float = 0.45, min_height: int = 200) -> list[str]:
    """Write one PNG mosaic per plane (sagittal, coronal, axial) of ``image`` with ``dseg`` on top.

    Parameters
    ----------
    image_path, dseg_path : path-like
        3D NIfTI image and its label map on the same grid (label values, not channel indices).
    labels : dict or list
        ``LabelTable.to_dict()`` (values, names, colours "#rrggbb"); see :func:`label_entries`.
    out_dir : path-like
        Folder created if needed; files ``mosaic_<plane>.png``.
    n_slices : int
        Slices per plane, spread over 15-85% of the segmented extent.
    alpha : float
        Opacity of the label colours inside structures; boundaries are drawn opaque.
    min_height : int
        Minimum height in pixels of each tile (small images are upsampled, nearest neighbour).

    Returns
    -------
    list of str
        Paths of the three PNG files, in plane order.
    """
    data, lab, zooms = _load_pair(image_path, dseg_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = data[::2, ::2, ::2]
    sample = sample[np.isfinite(sample)]
    lo, hi = np.percentile(sample, (1, 99.5)) if sample.size else (0.0, 1.0)
    grey = np.nan_to_num((data - lo) / max(hi - lo, 1e-6), nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(grey, 0, 1, out=grey)
    lut = _colour_lut(label_entries(labels), int(max(lab.max(), 0)))
    grey, lab = _crop_to_content(grey, lab, margin=4)
    mask = lab > 0 if (lab > 0).any() else grey > 0.1
    paths = []
    for plane in PLANES:
        axis = _PLANE_AXIS[plane]
        in_plane = [a for a in range(3) if a != axis]
        tiles = []
        for idx in _slice_positions(mask, axis, n_slices):
            index = (slice(None),) * axis + (idx,)
            g2 = grey[index]
            l2 = np.clip(lab[index], 0, None)
            rgb = np.repeat(g2[..., None], 3, axis=2)
            colour = lut[l2]
            inside = (l2 > 0)[..., None]
            rgb = np.where(inside, (1 - alpha) * rgb + alpha * colour, rgb)
            edge = _boundaries(l2)[..., None]
            rgb = np.where(edge, colour, rgb)
            # rows = second in-plane axis flipped (superior/anterior up), columns = first axis.
            rgb = np.flip(np.transpose(rgb, (1, 0, 2)), axis=0)
            tiles.append(_upsample(rgb, (zooms[in_plane[1]], zooms[in_plane[0]]), min_height))
        height = max(t.shape[0] for t in tiles)
        padded = [np.pad(t, ((0, height - t.shape[0]), (2, 2), (0, 0))) for t in tiles]
        path = out_dir / f"mosaic_{plane}.png"
        plt.imsave(path, np.clip(np.concatenate(padded, axis=1), 0, 1))
        paths.append(str(path))
    return paths
