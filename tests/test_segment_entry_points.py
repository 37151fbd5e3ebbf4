"""Plain-file entry points (issue 11, items 6-7): ``l2s-segment``, the Python API, the Pydra task
and the nipype interface, whose examples in docs/plain_files.md are executed here as written."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import affine_for, blob_volumes, save_nifti

REPO = Path(__file__).resolve().parents[1]


def run_segment(*args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ET="1", NIPYPE_NO_ET="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "l2s_pipelines.bids_app.segment_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def code_block(markdown: Path, marker: str) -> str:
    """The fenced code block that follows ``<!-- example: marker -->`` in ``markdown``."""
    m = re.search(rf"<!-- example: {marker} -->\s*```(?:python)?\n(.*?)```", markdown.read_text(), re.S)
    assert m, f"{markdown}: no code block after <!-- example: {marker} -->"
    return m.group(1)


@pytest.fixture()
def scans(tmp_path) -> Path:
    """A folder with two small images (40^3 at 2 mm) and one corrupt file."""
    folder = tmp_path / "scans"
    for i, name in enumerate(("a", "b")):
        save_nifti(folder / f"{name}.nii.gz", blob_volumes(i)[0])
    (folder / "broken.nii.gz").write_bytes(gzip.compress(b"not a NIfTI header"))
    (folder / "notes.txt").write_text("ignored: not a NIfTI file")
    return folder


def _no_temporaries(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if ".l2s-tmp-" in p.name]
    assert not left, left


def test_folder_run_same_segmenter_and_tables_as_the_app(scans, model_dir, tmp_path):
    from l2s_pipelines.inference import Segmenter

    out = tmp_path / "segs"
    proc = run_segment(scans, "-o", out, "--model", model_dir, "--device", "cpu", "--threads", "1",
                       "--volumes", out / "volumes.csv", "--qc", out / "qc.csv", "--posteriors")
    assert proc.returncode == 3, proc.stderr  # one of three inputs failed: exit code 3
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"l2s-segment: error: {scans / 'broken.nii.gz'}: "), errors
    for name in ("a", "b"):
        for suffix in ("_dseg.nii.gz", "_dseg.tsv", "_dseg.json", "_probseg.nii.gz", "_desc-volumes_morph.tsv",
                       "_desc-volumes_morph.json", "_desc-qc_stats.tsv", "_desc-qc_stats.json"):
            assert (out / f"{name}{suffix}").is_file(), f"{name}{suffix}"
    assert not list(out.glob("broken*"))
    _no_temporaries(out)
    # the labels are the Segmenter's, bit for bit
    seg = Segmenter.from_package(model_dir, "cpu", threads=1)
    res = seg.segment(nib.load(scans / "a.nii.gz"))
    written = nib.load(out / "a_dseg.nii.gz")
    assert np.array_equal(np.asarray(written.dataobj), res.dseg)
    assert np.allclose(written.affine, affine_for())
    # volumes: the app's table (fixed decimals, n/a, data dictionary), hard volume = voxels x 8 mm^3
    rows = list(csv.DictReader((out / "a_desc-volumes_morph.tsv").open(), delimiter="\t"))
    hard = {int(r["index"]): float(r["volume_hard_mm3"]) for r in rows}
    for value in np.unique(res.dseg):
        assert hard[int(value)] == pytest.approx(8.0 * (res.dseg == value).sum())
    assert json.loads((out / "a_desc-volumes_morph.json").read_text())["volume_soft_mm3"]["Units"] == "mm^3"
    lut = (out / "a_dseg.tsv").read_text().splitlines()
    assert lut[0] == "index\tname\tabbreviation\tcolor"
    assert {int(line.split("\t")[0]) for line in lut[1:]} == set(np.unique(res.dseg).tolist())
    sidecar = json.loads((out / "a_dseg.json").read_text())
    assert sidecar["Sources"] == [(scans / "a.nii.gz").absolute().as_uri()]
    assert sidecar["Model"]["SHA256"] == seg.manifest["weights"]["sha256"] and sidecar["Threads"] == 1
    # the test model records no accuracy: one sentence in the log (once) and in every sidecar, as in l2s-bids
    note = sidecar["Model"]["AccuracyWarning"]
    assert "no measured accuracy" in note and sidecar["Warnings"] == [note]
    assert [line for line in proc.stderr.splitlines() if "warning:" in line] == [f"l2s-segment: warning: {note}"]
    post = nib.load(out / "a_probseg.nii.gz")
    assert post.shape == (*res.dseg.shape, 33)
    # the CSVs: one row per segmented image, none for the broken one
    vol = list(csv.DictReader((out / "volumes.csv").open()))
    assert [Path(r["input"]).name for r in vol] == ["a.nii.gz", "b.nii.gz"]
    assert float(vol[0]["Left-Cerebral-White-Matter"]) == pytest.approx(
        float(next(r["volume_soft_mm3"] for r in rows if r["index"] == "2")), abs=0.01)
    qc = list(csv.DictReader((out / "qc.csv").open()))
    assert len(qc) == 2 and {"n_flagged", "flagged", "implausible_tiv", "low_confidence"} <= set(qc[0])
    assert int(qc[0]["n_flagged"]) == len([f for f in qc[0]["flagged"].split(";") if f])


def test_single_file_output_and_resample_to_model_grid(model_dir, tmp_path):
    src = save_nifti(tmp_path / "one_mm.nii.gz", blob_volumes(3, shape=(48, 48, 48), zooms=(1.0,) * 3)[0],
                     affine_for((1.0,) * 3, (48, 48, 48)))
    dest = tmp_path / "out" / "sub-01_dseg.nii.gz"
    proc = run_segment(src, "-o", dest, "--model", model_dir, "--device", "cpu", "--threads", "1", "--resample")
    assert proc.returncode == 0, proc.stderr
    dseg, resampled = nib.load(dest), nib.load(tmp_path / "out" / "sub-01_resampled.nii.gz")
    assert dseg.shape == resampled.shape == (24, 24, 24)  # 48 mm at the model's 2 mm
    assert np.allclose(dseg.header.get_zooms()[:3], 2.0) and np.allclose(dseg.affine, resampled.affine)
    for name in ("sub-01_dseg.tsv", "sub-01_dseg.json", "sub-01_desc-volumes_morph.tsv", "sub-01_desc-qc_stats.tsv"):
        assert (tmp_path / "out" / name).is_file(), name
    assert json.loads((tmp_path / "out" / "sub-01_dseg.json").read_text())["SpatialReference"] == \
        "sub-01_resampled.nii.gz"
    _no_temporaries(tmp_path / "out")


def test_exit_codes_and_nothing_written_on_bad_arguments(scans, model_dir, tmp_path):
    out = tmp_path / "o"
    two = run_segment(scans / "a.nii.gz", scans / "b.nii.gz", "-o", out / "x.nii.gz", "--model", model_dir)
    assert two.returncode == 2 and "exactly one input" in two.stderr
    none = run_segment(tmp_path / "missing.nii.gz", "-o", out, "--model", model_dir)
    assert none.returncode == 2 and "missing.nii.gz: no such file or folder" in none.stderr
    clash = tmp_path / "other"
    save_nifti(clash / "a.nii.gz", blob_volumes(5)[0])
    dup = run_segment(scans / "a.nii.gz", clash / "a.nii.gz", "-o", out, "--model", model_dir)
    assert dup.returncode == 2 and "both would write" in dup.stderr
    same = run_segment(scans / "a.nii.gz", "-o", scans / "a.nii.gz", "--model", model_dir)
    assert same.returncode == 2 and "would be overwritten" in same.stderr
    inside = run_segment(scans, "-o", scans, "--model", model_dir)
    assert inside.returncode == 2 and "also an input folder" in inside.stderr
    bad_model = run_segment(scans / "a.nii.gz", "-o", out, "--model", tmp_path / "no-model")
    assert bad_model.returncode == 2 and "no-model" in bad_model.stderr
    assert not out.exists()
    every = run_segment(scans / "broken.nii.gz", scans / "notes.txt", "-o", out, "--model", model_dir,
                        "--device", "cpu")
    assert every.returncode == 4, every.stderr
    assert "notes.txt: not a NIfTI file" in every.stderr and not list(out.glob("*_dseg*"))


def test_a_failure_while_publishing_leaves_no_partial_set(scans, model_dir, tmp_path, monkeypatch):
    import torch

    from l2s_pipelines.bids_app import cli, segment_cli, tables

    def fail(*args, **kwargs):
        raise OSError("disk full")

    for var in (*cli._THREAD_VARS, "NO_ET", "NIPYPE_NO_ET"):  # main() sets them; restored afterwards
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    monkeypatch.setattr(tables, "qc_frame", fail)  # after the label map and volumes are in place
    threads = torch.get_num_threads()
    code = segment_cli.main([str(scans / "a.nii.gz"), "-o", str(tmp_path / "o"), "--model", str(model_dir),
                             "--device", "cpu", "--threads", str(threads)])
    torch.set_num_threads(threads)
    assert code == 4
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize("marker", ["python", "pydra", "nipype"])
def test_docs_examples_run(marker, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_nifti(tmp_path / "sub-01_T1w.nii.gz", blob_volumes(1)[0])
    exec(compile(code_block(REPO / "docs" / "plain_files.md", marker), "docs/plain_files.md", "exec"), {})
    if marker == "python":
        written = tmp_path / "sub-01_dseg.nii.gz"
    else:
        printed = [w for w in capsys.readouterr().out.split() if w.endswith("dseg.nii.gz")]
        written = Path(printed[-1])
        assert written.name == "dseg.nii.gz" and (written.parent / "volumes.tsv").is_file()
        assert json.loads((written.parent / "qc.json").read_text())["flags"]
        info = json.loads((written.parent / "info.json").read_text())
        assert info["source"] == str(tmp_path / "sub-01_T1w.nii.gz") and info["model_sha256"]
    assert nib.load(written).shape == (40, 40, 40)


def test_nipype_interface_reference_and_posteriors(model_dir, tmp_path):
    from nipype import Node

    from l2s_pipelines.workflows.nipype_interface import L2SSegment

    img, lab = blob_volumes(2)
    src, ref = save_nifti(tmp_path / "t1.nii.gz", img), save_nifti(tmp_path / "ref.nii.gz", lab)
    node = Node(L2SSegment(in_file=str(src), reference=str(ref), model=str(model_dir), device="cpu",
                           posteriors=True), name="seg", base_dir=str(tmp_path / "work"))
    out = node.run().outputs
    rows = list(csv.DictReader(open(out.dice), delimiter="\t"))
    assert {int(r["index"]) for r in rows} >= {2, 3, 41, 42} and nib.load(out.probseg).shape[-1] == 33
    bad = Node(L2SSegment(in_file=str(ref), reference=str(src), model=str(model_dir), device="cpu"),
               name="bad", base_dir=str(tmp_path / "work"))
    with pytest.raises(Exception, match="ref.nii.gz|t1.nii.gz"):
        bad.run()
