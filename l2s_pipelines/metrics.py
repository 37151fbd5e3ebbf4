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
from scipy import ndimage

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
    """Map a label-value array to channel indices (int64); values not in ``values`` -> -1."""
    lab = np.asarray(label_map).astype(np.int64, copy=False)
    vmax = max(int(lab.max(initial=0)), max(values)) + 1
    lut = np.full(vmax + 1, -1, dtype=np.int64)
    lut[list(values)] = np.arange(len(values))
    return lut[np.clip(lab, -1, vmax)]


def _counts(label_map: np.ndarray, values, mask: np.ndarray | None = None) -> np.ndarray:
    idx = _channel_index(label_map, values)
    if mask is not None:
        idx = idx[mask]
    idx = idx[idx >= 0]
    return np.bincount(idx.ravel(), minlength=len(values)).astype(np.float64)


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
    keep = ref != ignore_value
    k = len(table.values)
    pi, ri = _channel_index(pred, table.values)[keep], _channel_index(ref, table.values)[keep]
    both = pi[(pi == ri) & (pi >= 0)]
    inter = np.bincount(both, minlength=k).astype(float)
    npred = np.bincount(pi[pi >= 0], minlength=k).astype(float)
    nref = np.bincount(ri[ri >= 0], minlength=k).astype(float)
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
    pred, ref = np.asarray(pred), np.asarray(ref)
    keep = ref != ignore_value
    pi, ri = _channel_index(pred, table.values)[keep], _channel_index(ref, table.values)[keep]
    out = {}
    for t in tissues:
        members = np.array([i for i, tt in enumerate(table.tissue) if tt == t], dtype=np.int64)
        p, r = np.isin(pi, members), np.isin(ri, members)
        denom = p.sum() + r.sum()
        out[t] = float(2 * (p & r).sum() / denom) if denom > 0 else math.nan
    return out


def _flag(name, value, threshold, flagged, description) -> dict:
    return {"name": name, "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value),
            "threshold": threshold, "flagged": bool(flagged), "description": description}


def _largest_component_fraction(mask: np.ndarray) -> float:
    if not mask.any():
        return math.nan
    sl = ndimage.find_objects(mask.astype(np.uint8))[0]
    lab, n = ndimage.label(mask[sl], structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(lab.ravel())[1:]
    return float(sizes.max() / sizes.sum())


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
    for v, tissue in zip(table.values, table.tissue):
        if v == 0 or (tissue not in FRAGMENT_TISSUES and v not in FRAGMENT_EXTRA_VALUES):
            continue
        frac = _largest_component_fraction(dseg == v)
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
