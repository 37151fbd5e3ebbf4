"""Robustness properties a user's data exercises, end to end with the bundled model: the same
scan stored with permuted or flipped axes, with its orientation in the qform only, or with an
sform that disagrees with its qform, and the scan scaled and shifted in intensity, each segments
the same as the original (Dice between the two outputs, on the original grid, >= 0.95).

The scan is the ICBM 2009a T1w template that nilearn ships, pooled to 2 mm (the model's grid)
to keep the run short on a few CPU cores."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from conftest import read_summary, run_cli
from template_fixtures import _nilearn_map, _pool2

MIN_DICE = 0.95


def _save(path, data, affine, *, qform_only=False, wrong_qform=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    if qform_only:
        img.set_qform(affine, code=1)
        img.set_sform(None, code=0)
    elif wrong_qform:  # the sform (code 2) is the orientation; a stale qform says otherwise
        img.set_sform(affine, code=2)
        img.set_qform(np.diag([3.0, 3.0, 3.0, 1.0]), code=1)
    nib.save(img, path)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text("{}")


def _variants(data, affine):
    """subject -> (data, affine, save options, function mapping its dseg back to the original grid)."""
    perm = (2, 0, 1)
    perm_aff = affine.copy()
    perm_aff[:, :3] = affine[:, list(perm)]
    flip_aff = affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    same = lambda d: d  # noqa: E731
    return {
        "orig": (data, affine, {}, same),
        "perm": (np.transpose(data, perm), perm_aff, {}, lambda d: np.transpose(d, np.argsort(perm))),
        "flip": (data[::-1], flip_aff, {}, lambda d: d[::-1]),
        "qform": (data, affine, {"qform_only": True}, same),
        "sform": (data, affine, {"wrong_qform": True}, same),
        "intensity": (data * 3.7 + 250.0, affine, {}, same),
    }


def _mean_dice(a, b):
    labels = [v for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
    return float(np.mean([2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in labels]))


def test_storage_and_intensity_variants_segment_the_same(tmp_path):
    t1 = _nilearn_map("t1")
    data, affine = _pool2(t1.get_fdata(dtype=np.float32), t1.affine)
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "robustness", "BIDSVersion": "1.9.0"}))
    variants = _variants(data, affine)
    for sub, (d, aff, opts, _) in variants.items():
        _save(bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz", d, aff, **opts)
    out = tmp_path / "out"
    proc = run_cli(bids, out, "participant", "-w", tmp_path / "w", "--nprocs", "2", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {r["status"] for r in read_summary(out)} == {"ok"}
    ref = np.asarray(nib.load(out / "sub-orig" / "anat" / "sub-orig_dseg.nii.gz").dataobj)
    assert len(np.unique(ref)) > 5  # the bundled model found structures
    for sub, (_, _, _, back) in variants.items():
        seg = nib.load(out / f"sub-{sub}" / "anat" / f"sub-{sub}_dseg.nii.gz")
        src = nib.load(bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
        assert np.allclose(seg.affine, src.affine) and seg.shape == src.shape
        dice = _mean_dice(back(np.asarray(seg.dataobj)), ref)
        assert dice >= MIN_DICE, (sub, dice)
