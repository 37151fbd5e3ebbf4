"""Per-image metrics: label volumes, Dice against a reference, and automated QC flags.

numpy (and ``scipy.ndimage`` for connected components) only, no torch. Label maps hold label
*values* (e.g. 2, 41), posteriors are ``(*spatial, K)`` with channels in label-table order. A
``table`` is a :class:`l2s_pipelines.labels.LabelTable` (only ``values``, ``names``,
``lr_partner`` and ``tissue`` are used). Volumes are in mm^3.

QC flags (flags, not exclusions; every check yields rows ``{name, value, threshold, flagged,
description}``):

=====================  =====================================  =================================
flag name              value                                  flagged when
=====================  =====================================  =================================
``implausible_tiv``    TIV (mm^3, see :data:`TIV_METHOD`)     outside 900,000 - 2,200,000 mm^3
``missing_labels``     number of non-background labels with   > 0
                       zero voxels (names in description)
``asymmetry_<name>``   ``|L - R| / (L + R)`` of a left/right  > 0.25, checked only when the
                       pair's hard volumes                    larger side exceeds 1,000 mm^3
``fragmented_<name>``  largest 26-connected component /       < 0.90 (cerebral/cerebellar
                       label voxel count                      cortex, white matter, lateral
                                                              ventricles)
``low_confidence``     mean over voxels with ``dseg != 0``    < 0.70
                       of the maximum posterior
=====================  =====================================  =================================
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

TIV_RANGE_MM3 = (900_000.0, 2_200_000.0)
ASYMMETRY_MAX = 0.25
ASYMMETRY_MIN_VOLUME_MM3 = 1000.0
FRAGMENT_MIN_FRACTION = 0.90
FRAGMENT_TISSUES = ("cortex", "white_matter")
FRAGMENT_EXTRA_VALUES = (4, 43)  # FreeSurfer left / right lateral ventricle
CONFIDENCE_MIN = 0.70
TIV_METHOD = ("sum of soft volumes (posterior sums) of all non-background labels, label 24 (CSF) "
              "included; extra-cerebral CSF that the network assigns to background, dura and "
              "venous sinuses are excluded, so it underestimates a skull-based TIV")
TIV_METHOD_HARD = TIV_METHOD.replace("soft volumes (posterior sums)", "hard volumes (voxel counts)")
VOLUME_COLUMNS = ("index", "name", "volume_hard_mm3", "volume_soft_mm3")
DICE_COLUMNS = ("index", "name", "dice", "volume_pred_mm3", "volume_ref_mm3", "volume_diff_pct")


def voxel_volume(affine_or_volume) -> float:
    """Voxel volume in mm^3 from a 4x4 affine (``|det(A[:3, :3])|``) or a number passed through."""
    a = np.asarray(affine_or_volume, dtype=float)
    if a.shape == (4, 4):
        return float(abs(np.linalg.det(a[:3, :3])))
    return float(a)


def _channel_index(label_map: np.ndarray, values) -> np.ndarray:
    """Map a label-value array to channel indices; values not in ``values`` -> -1.

    Label maps stored as 8- or 16-bit integers (every dseg and most references) go through one
    lookup table on their own bits, with no wider copy; other dtypes are cast to int64 first.
    Returns int16 when the table allows (fewer than 32,767 labels), else int64."""
    lab = np.asarray(label_map)
    values = [int(v) for v in values]
    out_dtype = np.int16 if len(values) < np.iinfo(np.int16).max else np.int64
    if lab.dtype.kind in "ui" and lab.dtype.itemsize <= 2:
        bits = lab.view(np.dtype(f"u{lab.dtype.itemsize}"))  # negatives land above the max: -> -1
        lut = np.full(np.iinfo(bits.dtype).max + 1, -1, dtype=out_dtype)
        for i, v in enumerate(values):
            if 0 <= v < (lut.size >> (lab.dtype.kind == "i")):
                lut[v] = i
        return lut[bits]
    lab = lab.astype(np.int64, copy=False)
    vmax = max(int(lab.max(initial=0)), max(values)) + 1
    lut = np.full(vmax + 1, -1, dtype=out_dtype)
    lut[values] = np.arange(len(values))
    return lut[np.clip(lab, -1, vmax)]


def _counts(label_map: np.ndarray, values, mask: np.ndarray | None = None) -> np.ndarray:
    idx = _channel_index(label_map, values)
    if mask is not None:
        idx = idx[mask]
    idx = idx[idx >= 0]
    return np.bincount(idx.ravel(), minlength=len(values)).astype(np.float64)


def _joint_counts(pred: np.ndarray, ref: np.ndarray, values, ignore_value: int) -> np.ndarray:
    """Joint histogram ``(K + 1, K + 1)`` of (prediction, reference) channel indices, shifted by
    one so that row/column 0 counts values not in ``values``; voxels where ``ref ==
    ignore_value`` are left out. One pass over the voxels, no boolean-indexed copies."""
    k = len(values)
    pi = _channel_index(pred, values).astype(np.int32) + 1
    ri = _channel_index(ref, values).astype(np.int32) + 1
    ri[np.asarray(ref) == ignore_value] = k + 1  # an extra column, dropped below
    codes = pi.ravel() * (k + 2) + ri.ravel()
    joint = np.bincount(codes, minlength=(k + 1) * (k + 2)).reshape(k + 1, k + 2)
    return joint[:, :k + 1].astype(np.float64)


def soft_sums_of(posteriors: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Sum of posteriors per channel, ``(*spatial, K)`` -> ``(K,)`` float64, in slabs of
    ``chunk`` along the first axis (bounded temporary memory)."""
    post = np.asarray(posteriors)
    out = np.zeros(post.shape[-1], dtype=np.float64)
    for i in range(0, post.shape[0], chunk):
        out += post[i:i + chunk].reshape(-1, post.shape[-1]).sum(axis=0, dtype=np.float64)
    return out


soft_sums = soft_sums_of  # earlier name, kept for callers


def label_volumes(dseg: np.ndarray, posteriors: np.ndarray | None, voxel_volume_mm3, table, *,
                  soft_sums: np.ndarray | None = None) -> dict:
    """Volumes per label.

    Parameters
    ----------
    dseg : (*spatial) int array of label values.
    posteriors : (*spatial, K) float array in table order, or None (soft volumes then from
        ``soft_sums``, or NaN with TIV from hard volumes when both are None).
    voxel_volume_mm3 : float mm^3, or the image's 4x4 affine.
    table : LabelTable.
    soft_sums : (K,) posterior sums in voxels, precomputed (e.g.
        ``SegmentationResult.soft_sums``, accumulated slab by slab); used instead of
        ``posteriors`` so the full posterior array is not needed.

    Returns
    -------
    ``{"rows": [{index, name, volume_hard_mm3, volume_soft_mm3}, ...] (index = label value),
    "tiv_mm3": float, "tiv_method": str}``
    """
    vox = voxel_volume(voxel_volume_mm3)
    k = len(table.values)
    hard = _counts(dseg, table.values) * vox
    if soft_sums is not None:
        sums = np.asarray(soft_sums, dtype=np.float64)
        if sums.shape != (k,):
            raise ValueError(f"soft_sums of shape {sums.shape} do not match {k} labels")
        soft = sums * vox
    elif posteriors is not None:
        if posteriors.shape[-1] != k or posteriors.shape[:-1] != np.shape(dseg):
            raise ValueError(f"posteriors of shape {posteriors.shape} do not match dseg "
                             f"{np.shape(dseg)} with {k} labels")
        soft = soft_sums_of(posteriors) * vox
    else:
        soft = np.full(k, np.nan)
    rows = [{"index": int(v), "name": n, "volume_hard_mm3": float(h), "volume_soft_mm3": float(s)}
            for v, n, h, s in zip(table.values, table.names, hard, soft)]
    brain = [i for i, v in enumerate(table.values) if v != 0]
    if not np.isnan(soft).all():
        tiv, method = float(soft[brain].sum()), TIV_METHOD
    else:
        tiv, method = float(hard[brain].sum()), TIV_METHOD_HARD
    return {"rows": rows, "tiv_mm3": tiv, "tiv_method": method}


def dice_scores(pred: np.ndarray, ref: np.ndarray, table, ignore_value: int = 255,
                voxel_volume_mm3=1.0) -> list[dict]:
    """Dice per label between two label-value maps of the same shape.

    Voxels where ``ref == ignore_value`` are left out of every count. Labels absent from both
    maps get ``dice = NaN``; ``volume_diff_pct = 100 (pred - ref) / ref`` (NaN when ref is 0).
    Returns rows ``{index, name, dice, volume_pred_mm3, volume_ref_mm3, volume_diff_pct}``.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} shapes differ")
    vox = voxel_volume(voxel_volume_mm3)
    joint = _joint_counts(pred, ref, table.values, ignore_value)
    inter, npred, nref = np.diag(joint)[1:], joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)
    rows = []
    for i, (v, n) in enumerate(zip(table.values, table.names)):
        denom = npred[i] + nref[i]
        rows.append({"index": int(v), "name": n,
                     "dice": float(2 * inter[i] / denom) if denom > 0 else math.nan,
                     "volume_pred_mm3": float(npred[i] * vox), "volume_ref_mm3": float(nref[i] * vox),
                     "volume_diff_pct": float(100 * (npred[i] - nref[i]) / nref[i]) if nref[i] > 0 else math.nan})
    return rows


def mean_dice(rows: list[dict]) -> float:
    """Mean Dice over non-background labels (index != 0), NaN entries (label absent from both
    maps) skipped; NaN when no label is scored."""
    vals = [r["dice"] for r in rows if r["index"] != 0 and not math.isnan(r["dice"])]
    return float(np.mean(vals)) if vals else math.nan


def tissue_dice(pred: np.ndarray, ref: np.ndarray, table, ignore_value: int = 255,
                tissues=("csf", "cortex", "white_matter", "deep_grey")) -> dict[str, float]:
    """Dice per tissue class (labels merged by ``table.tissue``); ``{tissue: dice}``, NaN when
    the class is absent from both maps. ``ignore_value`` voxels of ``ref`` are left out."""
    joint = _joint_counts(pred, ref, table.values, ignore_value)
    out = {}
    for t in tissues:
        rows = np.array([i + 1 for i, tt in enumerate(table.tissue) if tt == t], dtype=np.int64)
        p, r = joint[rows, :].sum(), joint[:, rows].sum()
        both = joint[np.ix_(rows, rows)].sum()
        out[t] = float(2 * both / (p + r)) if p + r > 0 else math.nan
    return out


def _flag(name, value, threshold, flagged, description) -> dict:
    return {"name": name, "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value),
            "threshold": threshold, "flagged": bool(flagged), "description": description}


def _largest_component_fractions(dseg: np.ndarray, values) -> dict[int, float]:
    """``{value: largest 26-connected component / voxels of that label}`` (NaN when absent),
    each label examined inside its own bounding box, the boxes found in one pass. scipy is
    imported here only: the reports, which read this module's tables, do not pay for it."""
    from scipy import ndimage

    lab = np.asarray(dseg)
    if lab.dtype.kind not in "ui":
        lab = lab.astype(np.int64)
    values = [int(v) for v in values]
    top = max([v for v in values if v > 0], default=0)
    boxes = ndimage.find_objects(np.where(lab >= 0, lab, 0) if lab.dtype.kind == "i" else lab, max_label=top)
    structure = np.ones((3,) * lab.ndim, dtype=bool)
    out = {}
    for v in values:
        box = boxes[v - 1] if 0 < v <= len(boxes) else None
        if box is None:
            out[v] = math.nan
            continue
        components, _ = ndimage.label(lab[box] == v, structure=structure)
        sizes = np.bincount(components.ravel())[1:]
        out[v] = float(sizes.max() / sizes.sum())
    return out


def mean_max_posterior(posteriors: np.ndarray, mask: np.ndarray, chunk: int = 16) -> float:
    """Mean over ``mask`` voxels of ``max_k posteriors[..., k]``; slab-wise along axis 0."""
    total, count = 0.0, int(mask.sum())
    if count == 0:
        return math.nan
    for i in range(0, mask.shape[0], chunk):
        m = mask[i:i + chunk]
        total += float(np.asarray(posteriors[i:i + chunk]).max(axis=-1)[m].sum(dtype=np.float64))
    return total / count


def qc_flags(dseg: np.ndarray, posteriors: np.ndarray | None, volumes: dict, table, *,
             mean_confidence: float | None = None) -> list[dict]:
    """Automated QC flags (see the module docstring for names and thresholds).

    ``volumes`` is the output of :func:`label_volumes`. ``mean_confidence``: the precomputed
    mean maximum posterior over non-background voxels (e.g.
    ``SegmentationResult.mean_max_posterior``), used instead of ``posteriors``. With neither
    (``posteriors`` None), the low-confidence check is reported with value None, not flagged.
    """
    dseg = np.asarray(dseg)
    flags = []
    tiv = volumes["tiv_mm3"]
    lo, hi = TIV_RANGE_MM3
    flags.append(_flag("implausible_tiv", tiv, [lo, hi], not lo <= tiv <= hi,
                       f"total intracranial volume outside {lo:,.0f}-{hi:,.0f} mm^3 ({volumes['tiv_method']})"))
    hard = {r["index"]: r["volume_hard_mm3"] for r in volumes["rows"]}
    name_of = dict(zip(table.values, table.names))
    missing = [name_of[v] for v in table.values if v != 0 and hard.get(v, 0.0) == 0]
    flags.append(_flag("missing_labels", len(missing), 0, len(missing) > 0,
                       "non-background labels with zero volume: " + (", ".join(missing) or "none")))
    for v, partner in zip(table.values, table.lr_partner):
        if partner == v or v > partner:
            continue  # unpaired, or the pair is reported under its lower (left) value
        left, right = hard.get(v, 0.0), hard.get(partner, 0.0)
        checked = max(left, right) > ASYMMETRY_MIN_VOLUME_MM3
        asym = abs(left - right) / (left + right) if checked else math.nan
        flags.append(_flag(f"asymmetry_{name_of[v]}", asym, ASYMMETRY_MAX, checked and asym > ASYMMETRY_MAX,
                           f"|L-R|/(L+R) of {name_of[v]} / {name_of[partner]} hard volumes "
                           f"({left:.0f} / {right:.0f} mm^3); checked when a side exceeds "
                           f"{ASYMMETRY_MIN_VOLUME_MM3:.0f} mm^3"))
    checked = [v for v, tissue in zip(table.values, table.tissue)
               if v != 0 and (tissue in FRAGMENT_TISSUES or v in FRAGMENT_EXTRA_VALUES)]
    fractions = _largest_component_fractions(dseg, checked)
    for v in checked:
        frac = fractions[v]
        flags.append(_flag(f"fragmented_{name_of[v]}", frac, FRAGMENT_MIN_FRACTION,
                           not math.isnan(frac) and frac < FRAGMENT_MIN_FRACTION,
                           f"largest 26-connected component of {name_of[v]} as a fraction of its voxels"))
    if mean_confidence is not None:
        conf = float(mean_confidence)
    else:
        conf = mean_max_posterior(posteriors, dseg != 0) if posteriors is not None else math.nan
    flags.append(_flag("low_confidence", conf, CONFIDENCE_MIN, not math.isnan(conf) and conf < CONFIDENCE_MIN,
                       "mean maximum posterior over voxels labelled non-background"))
    return flags


def write_tsv(rows: list[dict], path: str | os.PathLike, columns=None) -> None:
    """Write rows as a tab-separated table (NaN written as ``n/a``, BIDS style)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["n/a" if isinstance(r[c], float) and math.isnan(r[c]) else r[c] for c in columns])
