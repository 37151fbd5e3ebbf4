"""Metrics on hand-checkable arrays."""

import math

import numpy as np
import pytest

from l2s_pipelines import metrics
from l2s_pipelines.labels import LabelTable


@pytest.fixture(scope="module")
def table():
    return LabelTable.default()


def test_dice_identical_disjoint_and_ignore(table):
    a = np.zeros((6, 6, 6), np.int16)
    a[:3] = 2
    a[3:] = 41
    rows = {r["index"]: r for r in metrics.dice_scores(a, a, table)}
    assert rows[2]["dice"] == 1.0 and rows[41]["dice"] == 1.0
    assert math.isnan(rows[3]["dice"])  # absent from both maps
    b = np.where(a == 2, 41, 2).astype(np.int16)
    rows = {r["index"]: r for r in metrics.dice_scores(b, a, table)}
    assert rows[2]["dice"] == 0.0 and rows[41]["dice"] == 0.0
    ref = a.copy()
    ref[3:] = 255  # ignore every voxel where pred and ref disagree below
    pred = a.copy()
    pred[3:] = 3
    rows = {r["index"]: r for r in metrics.dice_scores(pred, ref, table, voxel_volume_mm3=2.0)}
    assert rows[2]["dice"] == 1.0 and math.isnan(rows[3]["dice"])
    assert rows[2]["volume_pred_mm3"] == 3 * 36 * 2.0 and rows[2]["volume_diff_pct"] == 0.0


def test_dice_partial_and_volume_difference(table):
    ref = np.zeros((10,), np.int16)
    pred = np.zeros((10,), np.int16)
    ref[:4] = 17
    pred[2:8] = 17
    row = next(r for r in metrics.dice_scores(pred, ref, table) if r["index"] == 17)
    assert row["dice"] == pytest.approx(2 * 2 / (4 + 6))
    assert row["volume_diff_pct"] == pytest.approx(50.0)
    assert metrics.mean_dice([row, {"index": 0, "dice": 0.1}, {"index": 5, "dice": math.nan}]) == row["dice"]


def test_tissue_dice_merges_labels(table):
    ref = np.array([2, 41, 3, 42, 0], np.int16)
    pred = np.array([41, 2, 3, 0, 0], np.int16)  # L/R swaps stay white matter
    td = metrics.tissue_dice(pred, ref, table)
    assert td["white_matter"] == 1.0
    assert td["cortex"] == pytest.approx(2 * 1 / 3)
    assert math.isnan(td["deep_grey"])


def test_volumes_hard_soft_and_tiv(table):
    k = len(table)
    dseg = np.zeros((4, 5, 6), np.int16)
    dseg[1:3, 1:4, 1:5] = 17  # 24 voxels
    post = np.zeros(dseg.shape + (k,), np.float32)
    post[..., 0] = 1.0
    post[dseg == 17] = 0
    post[dseg == 17, table.index_of(17)] = 0.75
    post[dseg == 17, table.index_of(53)] = 0.25
    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    vol = metrics.label_volumes(dseg, post, affine, table)
    rows = {r["index"]: r for r in vol["rows"]}
    assert rows[17]["volume_hard_mm3"] == pytest.approx(24 * 3.0)
    assert rows[17]["volume_soft_mm3"] == pytest.approx(24 * 0.75 * 3.0)
    assert rows[53]["volume_hard_mm3"] == 0 and rows[53]["volume_soft_mm3"] == pytest.approx(24 * 0.25 * 3.0)
    assert vol["tiv_mm3"] == pytest.approx(24 * 3.0)
    assert "soft" in vol["tiv_method"] and "24" in vol["tiv_method"]
    hard_only = metrics.label_volumes(dseg, None, 3.0, table)
    assert hard_only["tiv_mm3"] == 72.0 and "hard" in hard_only["tiv_method"]


def _brain(table, left_extent=10, right_extent=10):
    """Toy 2 mm-free map: one cube per label; left/right hippocampus with chosen extents."""
    dseg = np.zeros((60, 40, 40), np.int16)
    for i, v in enumerate(table.values[1:]):
        dseg[(i % 8) * 7:(i % 8) * 7 + 5, (i // 8) * 9:(i // 8) * 9 + 5, 0:5] = v
    dseg[:, :, 10:20] = 0
    dseg[0:left_extent, 0:10, 10:20] = 17
    dseg[30:30 + right_extent, 0:10, 10:20] = 53
    return dseg


def _flags(flags):
    return {f["name"]: f for f in flags}


def test_qc_asymmetry_flag(table):
    sym, asym = _brain(table), _brain(table, left_extent=10, right_extent=4)
    for dseg, expected in ((sym, False), (asym, True)):
        vol = metrics.label_volumes(dseg, None, 1.0, table)
        f = _flags(metrics.qc_flags(dseg, None, vol, table))["asymmetry_Left-Hippocampus"]
        assert f["flagged"] is expected
        assert f["threshold"] == metrics.ASYMMETRY_MAX
    f = _flags(metrics.qc_flags(asym, None, metrics.label_volumes(asym, None, 1.0, table), table))
    n_left, n_right = np.sum(asym == 17), np.sum(asym == 53)
    assert f["asymmetry_Left-Hippocampus"]["value"] == pytest.approx((n_left - n_right) / (n_left + n_right))
    assert f["implausible_tiv"]["flagged"]  # a toy brain is far too small
    assert not f["missing_labels"]["flagged"]
    assert f["low_confidence"]["value"] is None and not f["low_confidence"]["flagged"]


def test_qc_missing_fragmented_and_confidence(table):
    dseg = _brain(table)
    dseg[dseg == 18] = 0  # remove left amygdala
    dseg[40:45, 30:35, 30:35] = 3  # a detached island of left cortex, larger than the cube
    k = len(table)
    post = np.full(dseg.shape + (k,), 0.5 / (k - 1), np.float32)
    idx = np.searchsorted(np.array(table.values), dseg)
    np.put_along_axis(post, idx[..., None], 0.5, axis=-1)
    vol = metrics.label_volumes(dseg, post, 1.0, table)
    f = _flags(metrics.qc_flags(dseg, post, vol, table))
    assert f["missing_labels"]["flagged"] and f["missing_labels"]["value"] == 1
    assert "Left-Amygdala" in f["missing_labels"]["description"]
    assert f["fragmented_Left-Cerebral-Cortex"]["flagged"]
    assert f["fragmented_Left-Cerebral-Cortex"]["value"] == pytest.approx(0.5)
    assert not f["fragmented_Right-Cerebral-Cortex"]["flagged"]
    assert f["low_confidence"]["value"] == pytest.approx(0.5) and f["low_confidence"]["flagged"]


def test_write_tsv_nan_as_na(tmp_path, table):
    rows = metrics.dice_scores(np.zeros(3, np.int16), np.zeros(3, np.int16), table)
    metrics.write_tsv(rows, tmp_path / "d.tsv", metrics.DICE_COLUMNS)
    lines = (tmp_path / "d.tsv").read_text().splitlines()
    assert lines[0].split("\t") == list(metrics.DICE_COLUMNS)
    assert lines[2].split("\t")[2] == "n/a" and lines[1].split("\t")[2] == "1.0"


def test_precomputed_soft_sums_and_confidence(table):
    """Soft sums / mean confidence given directly give the same volumes and flag as posteriors."""
    dseg = _brain(table)
    k = len(table)
    post = np.full(dseg.shape + (k,), 0.4 / (k - 1), np.float32)
    np.put_along_axis(post, np.searchsorted(np.array(table.values), dseg)[..., None], 0.6, axis=-1)
    affine = np.diag([1.5, 1.0, 1.0, 1.0])
    from_post = metrics.label_volumes(dseg, post, affine, table)
    sums = post.reshape(-1, k).sum(0, dtype=np.float64)
    given = metrics.label_volumes(dseg, None, affine, table, soft_sums=sums)
    assert given["tiv_mm3"] == pytest.approx(from_post["tiv_mm3"]) and "soft" in given["tiv_method"]
    for a, b in zip(given["rows"], from_post["rows"]):
        assert a["volume_soft_mm3"] == pytest.approx(b["volume_soft_mm3"], rel=1e-6)
        assert a["volume_hard_mm3"] == b["volume_hard_mm3"]
    assert given["rows"][1]["volume_soft_mm3"] == pytest.approx(1.5 * sums[1])
    with pytest.raises(ValueError, match="soft_sums"):
        metrics.label_volumes(dseg, None, 1.0, table, soft_sums=sums[:-1])
    f = _flags(metrics.qc_flags(dseg, None, given, table, mean_confidence=0.6))["low_confidence"]
    g = _flags(metrics.qc_flags(dseg, post, from_post, table))["low_confidence"]
    assert f["value"] == pytest.approx(g["value"]) == pytest.approx(0.6)
    assert f["flagged"] and g["flagged"]
    assert not _flags(metrics.qc_flags(dseg, None, given, table, mean_confidence=0.9))["low_confidence"]["flagged"]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.float32])
def test_label_maps_of_every_dtype_count_alike(table, dtype):
    """Dice, tissue Dice, volumes and fragment checks give the same numbers whatever integer
    (or float) type a label map is stored in; values outside the table (a negative one, 7, 99)
    count in no label, and the reference's ignore value (255, where the type holds it) in none."""
    rng = np.random.default_rng(3)
    values = np.array(table.values[:20] + [7, 99], dtype=np.int64)
    pred64 = rng.choice(values, size=(9, 10, 11))
    ref64 = rng.choice(values, size=(9, 10, 11))
    if np.dtype(dtype).kind != "u":
        pred64[0, 0, :4] = -3
    if np.dtype(dtype) != np.int8:
        ref64[1, :, :] = 255
    expected = metrics.dice_scores(pred64, ref64, table)
    got = metrics.dice_scores(pred64.astype(dtype), ref64.astype(dtype), table)
    for e, g in zip(expected, got):
        assert (math.isnan(e["dice"]) and math.isnan(g["dice"])) or e["dice"] == g["dice"]
        assert (e["volume_pred_mm3"], e["volume_ref_mm3"]) == (g["volume_pred_mm3"], g["volume_ref_mm3"])
    assert metrics.tissue_dice(pred64, ref64, table) == metrics.tissue_dice(pred64.astype(dtype),
                                                                             ref64.astype(dtype), table)
    # brute force for one label: ignore voxels out, -3/7/99 in no label
    keep = ref64 != 255
    p, r = (pred64 == 2) & keep, (ref64 == 2) & keep
    assert {x["index"]: x for x in got}[2]["dice"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
    assert {x["index"]: x for x in got}[2]["volume_pred_mm3"] == p.sum()
    vols = metrics.label_volumes(pred64.astype(dtype), None, 1.0, table)
    assert [r["volume_hard_mm3"] for r in vols["rows"]] == \
        [float((pred64 == v).sum()) for v in table.values]
    frac = metrics._largest_component_fractions(pred64.clip(0).astype(dtype), [2, 41, 3])
    assert frac == metrics._largest_component_fractions(pred64.clip(0), [2, 41, 3])
