"""Bad inputs: each gives a one-line error naming the file and the problem, the documented exit
code, and no partial output.

Dataset-level problems (exit 2, nothing written) run in-process; per-image problems run once,
end to end through the ``cf`` worker on one dataset that mixes bad and good images (exit 3, the
good ones published, the bad ones absent from the outputs). The large-matrix case uses a
128x128x96 1 mm stand-in for 512x512x400 (same code path: resampling plus the memory-bounded
window), to keep the test in seconds on 2 shared cores.
"""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import affine_for, blob_volumes, build_bids, files_under, image_path, read_summary, run_cli, save_nifti
from l2s_pipelines.bids_app import cli


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch):
    for var in (*cli._THREAD_VARS, "NO_ET", "NIPYPE_NO_ET"):
        monkeypatch.setenv(var, "1")


def expect_exit_2(argv, capsys, *needles):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert str(needle) in err, err
    return err


def test_dataset_level_errors(tmp_path, bids_dir, model_dir, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    base = ["participant", "--model", model_dir, "-w", work]
    expect_exit_2([tmp_path / "missing", out, *base], capsys, tmp_path / "missing", "does not exist")
    plain = tmp_path / "plain"
    plain.mkdir()
    expect_exit_2([plain, out, *base], capsys, plain, "dataset_description.json")
    expect_exit_2([bids_dir, bids_dir, *base], capsys, "must differ")
    expect_exit_2([bids_dir, out, "participant", "--model", model_dir, "-w", bids_dir / "work"], capsys,
                  bids_dir / "work", "inside the input")
    err = expect_exit_2([bids_dir, out, *base, "--participant-label", "07"], capsys, "07", "existing: 01, 02")
    assert "not found" in err
    expect_exit_2([bids_dir, out, *base, "--session-label", "9"], capsys, "existing: 1, 2")
    blocker = tmp_path / "afile"
    blocker.write_text("")
    expect_exit_2([bids_dir, blocker / "out", *base], capsys, "cannot be written")
    expect_exit_2([bids_dir, out, *base, "--input-suffix", "T2w"], capsys, "no T2w images")
    assert not out.exists() and not work.exists()


def test_subject_without_requested_image(tmp_path, model_dir, capsys):
    bids = build_bids(tmp_path / "bids", {"01": [None], "02": [None]})
    for p in (bids / "sub-02" / "anat").iterdir():
        p.rename(p.with_name(p.name.replace("T1w", "T2w")))
    expect_exit_2([bids, tmp_path / "out", "participant", "--participant-label", "02", "--model", model_dir,
                   "-w", tmp_path / "w"], capsys, "no T1w image for sub-02", "T2w")
    assert not (tmp_path / "out").exists()


def test_misnamed_file_is_not_an_image(tmp_path, model_dir, capsys):
    bids = build_bids(tmp_path / "bids", {"01": [None]})
    save_nifti(bids / "sub-01" / "anat" / "sub01_T1w.nii.gz", blob_volumes(0)[0])
    from l2s_pipelines.bids_app import queries

    images = queries.collect_images(queries.load_layout(bids))
    assert [im.path.rsplit("/", 1)[1] for im in images] == ["sub-01_T1w.nii.gz"]


@pytest.mark.parametrize("breakage", ["corrupt_weights", "other_label_set"])
def test_bad_model_package(tmp_path, bids_dir, model_dir, capsys, breakage):
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    if breakage == "corrupt_weights":
        blob = bytearray((bad / "model.safetensors").read_bytes())
        blob[-10] ^= 0xFF
        (bad / "model.safetensors").write_bytes(bytes(blob))
        needles = ("model.safetensors", "sha256")
    else:
        manifest = json.loads((bad / "manifest.json").read_text())
        manifest["labels"] = manifest["labels"][:24]
        (bad / "manifest.json").write_text(json.dumps(manifest))
        needles = ("manifest.json", "label set")
    expect_exit_2([bids_dir, tmp_path / "out", "participant", "--model", bad, "-w", tmp_path / "w"], capsys, *needles)
    assert not (tmp_path / "out").exists()


def _write_bad_images(bids):
    """Replace the images of extra subjects with broken or unusual ones; returns
    {subject: expected error fragment or None for 'must succeed'}."""
    img, _ = blob_volumes(5)
    aff = affine_for()
    cases = {}

    ref_root = bids / "derivatives" / "reference"

    def put(sub, data, affine=aff, expect=None):
        save_nifti(image_path(bids, sub, None), data, affine)
        image_path(ref_root, sub, None).with_name(f"sub-{sub}_desc-reference_dseg.nii.gz").unlink()
        cases[sub] = expect

    put("trunc", img)
    raw = gzip.decompress(image_path(bids, "trunc", None).read_bytes())
    image_path(bids, "trunc", None).write_bytes(gzip.compress(raw[: len(raw) // 2]))
    cases["trunc"] = "truncated"
    put("fourd", np.stack([img, img], -1), expect="4D image with 2 volumes")
    put("twod", img[:, :, 20:21], expect="2D")
    nan = img.copy()
    nan[3, 4, 5] = np.nan
    put("nan", nan, expect="NaN or Inf")
    put("zero", np.zeros_like(img), expect="all zero")
    aniso, _ = blob_volumes(6, shape=(60, 60, 9), zooms=(1.0, 1.0, 7.0))
    put("aniso", aniso, affine_for((1.0, 1.0, 7.0), (60, 60, 9)))
    rot = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    rot[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    put("oblique", img, rot @ aff)
    big, _ = blob_volumes(7, shape=(128, 128, 96), zooms=(1.0, 1.0, 1.0))
    put("large", big, affine_for((1.0, 1.0, 1.0), (128, 128, 96)))
    # a reference on another grid or with unknown labels never fails its image:
    # tests/test_inputs_to_outputs.py::test_questionable_reference_never_fails_the_image
    return cases


def test_per_image_errors_isolated(tmp_path, model_dir):
    subjects = ["good", "trunc", "fourd", "twod", "nan", "zero", "aniso", "oblique", "large"]
    bids = build_bids(tmp_path / "bids", {s: [None] for s in subjects})
    cases = _write_bad_images(bids)
    out = tmp_path / "out"
    proc = run_cli(bids, out, "participant", "--model", model_dir, "-w", tmp_path / "work", "--nprocs", "2")
    assert proc.returncode == 3, proc.stderr[-3000:]
    rows = {r["subject"]: r for r in read_summary(out)}
    assert rows["good"]["status"] == "ok"
    for sub, expect in cases.items():
        row = rows[sub]
        if expect is None:
            assert row["status"] == "ok", (sub, row["error"])
            continue
        assert row["status"] == "failed", sub
        assert expect in row["error"] and f"sub-{sub}_" in row["error"], (sub, row["error"])
        assert "\n" not in row["error"]
        assert not [f for f in files_under(out) if f.startswith(f"sub-{sub}/") and not f.endswith(".html")], sub
        assert expect in (out / f"sub-{sub}.html").read_text()
    oblique_in = nib.load(image_path(bids, "oblique", None))
    oblique_out = nib.load(out / "sub-oblique" / "anat" / "sub-oblique_dseg.nii.gz")
    assert np.allclose(oblique_out.affine, oblique_in.affine, atol=1e-5)
    assert oblique_out.shape == oblique_in.shape
    assert nib.load(out / "sub-aniso" / "anat" / "sub-aniso_dseg.nii.gz").shape == (60, 60, 9)
    assert not [f for f in files_under(out) if ".tmp" in f or "l2s-tmp" in f]
