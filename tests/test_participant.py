"""Participant level end to end through the ``cf`` worker on the tiny generated dataset: outputs,
summary and status files, rerun and skip, redo of missing or failed images, selection, and a
run killed with SIGKILL then restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np

from conftest import blob_volumes, files_under, image_path, read_summary, run_cli, save_nifti


def test_full_run_rerun_and_redo(bids_dir, model_dir, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    args = (bids_dir, out, "participant", "--model", model_dir, "-w", work, "--nprocs", "2", "--save-probseg")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_summary(out)
    assert [(r["subject"], r["session"], r["status"]) for r in rows] == \
        [("01", "n/a", "ok"), ("02", "1", "ok"), ("02", "2", "ok")]
    assert all(r["device"] == "cpu" and float(r["runtime_s"]) > 0 and float(r["peak_memory_mb"]) > 0 for r in rows)
    status = json.loads((out / "logs" / "status.json").read_text())
    assert status["finished"] and status["counts"] == {"ok": 3}
    for sub, ses in (("01", None), ("02", "1"), ("02", "2")):
        src = nib.load(image_path(bids_dir, sub, ses))
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        anat = out / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        dseg = nib.load(anat / f"{stem}_dseg.nii.gz")
        assert dseg.shape == src.shape and np.allclose(dseg.affine, src.affine)
        assert np.issubdtype(dseg.get_data_dtype(), np.integer)
        assert nib.load(anat / f"{stem}_probseg.nii.gz").shape == (*src.shape, 33)
        dice = (anat / f"{stem}_desc-dice_stats.tsv").read_text().splitlines()
        col = dice[0].split("\t").index("dice")
        vals = [float(x.split("\t")[col]) for x in dice[1:] if x.split("\t")[col] != "n/a"]
        assert vals and all(0.0 <= v <= 1.0 for v in vals)
    sidecar = json.loads((out / "sub-01" / "anat" / "sub-01_dseg.json").read_text())
    assert sidecar["UsedForTuning"] is True  # the test model lists sub-01 as a tuning subject
    # the test model records no accuracy: one sentence in the sidecar, the report and the log
    note = sidecar["Model"]["AccuracyWarning"]
    assert "no measured accuracy" in note and note in sidecar["Warnings"]
    assert note in (out / "sub-01.html").read_text() and note in proc.stderr
    # rerun: everything already complete, nothing recomputed
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["status"] for r in read_summary(out)] == ["skipped"] * 3
    # a deleted output is redone, the others skipped
    (out / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_dseg.json").unlink()
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["status"] for r in read_summary(out)] == ["skipped", "skipped", "ok"]


def test_failure_isolated_then_fixed(bids_dir, model_dir, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    bad = image_path(bids_dir, "02", "1")
    bad.write_bytes(bad.read_bytes()[:300])
    args = (bids_dir, out, "participant", "--model", model_dir, "-w", work, "--nprocs", "2")
    proc = run_cli(*args)
    assert proc.returncode == 3, proc.stderr[-3000:]
    rows = read_summary(out)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert str(bad) in rows[1]["error"] and "truncated" in rows[1]["error"]
    assert "truncated" in (out / "sub-02.html").read_text()
    assert not (out / "sub-02" / "ses-1").exists()
    # the image is repaired: the stale Pydra error is cleaned and only that image is redone
    img, _ = blob_volumes(11)
    save_nifti(bad, img)
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["status"] for r in read_summary(out)] == ["skipped", "ok", "skipped"]


def test_all_failed_exit_4_and_stop_on_first_crash(bids_dir, model_dir, tmp_path):
    for sub, ses in (("01", None), ("02", "1"), ("02", "2")):
        save_nifti(image_path(bids_dir, sub, ses), np.zeros((40, 40, 40), np.float32))
    out = tmp_path / "out"
    proc = run_cli(bids_dir, out, "participant", "--model", model_dir, "-w", tmp_path / "w",
                   "--stop-on-first-crash", "--plugin", "cf")
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert [r["status"] for r in read_summary(out)] == ["failed", "not_run", "not_run"]


def test_selection_by_participant_and_session(bids_dir, model_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(bids_dir, out, "participant", "--participant_label", "sub-02", "--session-label", "ses-2",
                   "--model", model_dir, "-w", tmp_path / "w", "--nprocs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(r["subject"], r["session"]) for r in read_summary(out)] == [("02", "2")]
    assert not (out / "sub-01").exists() and not (out / "sub-02" / "ses-1").exists()
    # a T2w of the same session into the same folder would take the T1w's names: refused, named
    t2w = image_path(bids_dir, "02", "2", suffix="T2w")
    t2w.write_bytes(image_path(bids_dir, "02", "2").read_bytes())
    before = (out / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_dseg.json").read_text()
    proc = run_cli(bids_dir, out, "participant", "--participant_label", "02", "--session-label", "2",
                   "--input-suffix", "T2w", "--model", model_dir, "-w", tmp_path / "w", "--nprocs", "1")
    assert proc.returncode == 4, proc.stderr[-3000:]
    row, = [r for r in read_summary(out) if r["input"] == str(t2w)]  # the T1w row stays, merged
    assert row["status"] == "failed" and "sub-02_ses-2_T1w.nii.gz" in row["error"] and str(t2w) in row["error"]
    assert (out / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_dseg.json").read_text() == before


def test_identical_files_do_not_collapse(tmp_path, model_dir):
    from conftest import build_bids

    bids = build_bids(tmp_path / "bids", {"01": [None], "02": [None]}, reference=False)
    image_path(bids, "02", None).write_bytes(image_path(bids, "01", None).read_bytes())
    out = tmp_path / "out"
    proc = run_cli(bids, out, "participant", "--model", model_dir, "-w", tmp_path / "w", "--nprocs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sources = [json.loads((out / f"sub-{s}" / "anat" / f"sub-{s}_dseg.json").read_text())["Sources"] for s in ("01", "02")]
    assert "sub-01_T1w" in json.dumps(sources[0]) and "sub-02_T1w" in json.dumps(sources[1])


def test_images_are_published_as_they_finish(bids_dir, model_dir, tmp_path):
    """More images than run at once: each image runs as one job, and is published with its
    subject's report as soon as it is done, while the others run (not every segmentation
    first and every result at the end of the run)."""
    out = tmp_path / "out"
    proc = run_cli(bids_dir, out, "participant", "--model", model_dir, "-w", tmp_path / "w", "--nprocs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    first_published = log.index("[1/3] sub-01 sub-01_T1w.nii.gz: ok")
    assert first_published < log.index("sub-02 ses-1 sub-02_ses-1_T1w.nii.gz: started")
    assert log.index("[2/3] sub-02 ses-1") < log.index("sub-02 ses-2 sub-02_ses-2_T1w.nii.gz: started")
    # sub-01's report was written when its only image was published, before sub-02's images ran
    report_mtime = (out / "sub-01.html").stat().st_mtime
    assert report_mtime < (out / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_dseg.json").stat().st_mtime
    assert (out / "sub-02.html").stat().st_mtime >= (out / "sub-02" / "ses-2" / "anat" /
                                                     "sub-02_ses-2_dseg.json").stat().st_mtime


def test_sigkill_then_restart_completes_cleanly(bids_dir, model_dir, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, "-m", "l2s_pipelines.bids_app.cli", str(bids_dir), str(out), "participant",
           "--model", str(model_dir), "-w", str(work), "--nprocs", "2"]
    env = dict(os.environ, NO_ET="1", NIPYPE_NO_ET="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(work.glob("*.lock")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker pool, mid-run
    proc.wait()
    rerun = run_cli(*cmd[3:])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [r["status"] in ("ok", "skipped") for r in read_summary(out)] == [True] * 3
    leftovers = [f for f in files_under(out) if "tmp" in f.rsplit("/", 1)[-1]]
    assert not leftovers and not list(work.rglob("*.lock"))
