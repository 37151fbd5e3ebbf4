"""Participant level through the cluster workers and with template-space outputs, end to end on
the tiny generated dataset: ``--plugin dask`` (a private LocalCluster), ``--plugin slurm`` and
``--plugin sge`` (the stand-in scheduler commands of tests/hpc_standins run the job scripts
locally, so Pydra's SLURM worker and the project's SGE worker really run), ``--output-spaces`` with the test-only TemplateFlow home, ``--mem``
reaching the segmentation task, and the ``--plugin-args`` checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import files_under, image_path, read_summary, run_cli
from template_fixtures import TEST_TEMPLATE, build_templateflow_home
from test_derivatives import VALIDATOR, _validate

STANDINS = Path(__file__).parent / "hpc_standins"
SECOND = TEST_TEMPLATE + "B"  # a template id never published here


@pytest.fixture(scope="module")
def tf_home(tmp_path_factory) -> Path:
    """Test-only TemplateFlow home (the test template at res-02 only)."""
    return build_templateflow_home(tmp_path_factory.mktemp("tf"))


def _result_infos(work: Path) -> list[dict]:
    """``info.json`` of every segmentation task's result folder in a Pydra work folder (not the
    copies the workflows keep of their outputs)."""
    return [json.loads(p.read_text()) for p in work.glob("python-*/result/info.json")]


def test_dask_plugin_local_cluster_and_mem(bids_dir, model_dir, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = run_cli(bids_dir, out, "participant", "--model", model_dir, "-w", work, "--participant-label", "02",
                   "--nprocs", "2", "--omp-nthreads", "1", "--mem", "1200M", "--plugin", "dask",
                   "--plugin-args", "n_workers=1", "threads_per_worker=1", "processes=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(r["subject"], r["session"], r["status"]) for r in read_summary(out)] == \
        [("02", "1", "ok"), ("02", "2", "ok")]
    for ses in ("1", "2"):
        dseg = nib.load(out / "sub-02" / f"ses-{ses}" / "anat" / f"sub-02_ses-{ses}_dseg.nii.gz")
        assert dseg.shape == nib.load(image_path(bids_dir, "02", ses)).shape
    # --mem is shared by the --nprocs parallel jobs: 1200 MiB / 2 per segmentation
    infos = _result_infos(work)
    assert len(infos) == 2 and all(i["memory_budget_mb"] == 600 for i in infos)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("plugin, resources, granularity", [
    ("slurm", ["sbatch_args=--time=00:05:00"], "task"),
    ("slurm", ["sbatch_args=--time=00:05:00"], "image"),
    ("sge", ["default_qsub_args=-l h_rt=00:05:00", "collect_jobs_delay=0"], "task"),  # the project's SGE worker
    ("sge", ["default_qsub_args=-l h_rt=00:05:00", "collect_jobs_delay=0"], "image"),
])
def test_cluster_plugin_with_standin_scheduler(bids_dir, model_dir, tmp_path, monkeypatch, plugin, resources,
                                               granularity):
    state = tmp_path / "scheduler"
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HPC_STANDIN_STATE", str(state))
    out, work = tmp_path / "out", tmp_path / "work"
    base = (bids_dir, out, "participant", "--model", model_dir, "-w", work, "--participant-label", "01",
            "--nprocs", "1", "--plugin", plugin, "--cluster-jobs", granularity, "--plugin-args", "poll_delay=0",
            *resources)
    proc = run_cli(*base, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["status"] for r in read_summary(out)] == ["ok"]
    assert (out / "sub-01" / "anat" / "sub-01_dseg.json").is_file()
    # task: every node (check, segment, measures, figures, result) went through the scheduler
    # (SGE may submit the nodes ready together as one array: check and segment, then measures and
    # figures); image: one job ran
    # them all. Either way with the user's resource request, and each job ran.
    submissions = sorted(state.glob("*.args"))
    if granularity == "image":
        assert len(submissions) == 1
        assert len(list(work.glob("python-*/result/info.json"))) == 1  # the tasks kept their own cache
    else:
        assert len(submissions) == 5 if plugin == "slurm" else 3 <= len(submissions) <= 5
    request = resources[0].split("=", 1)[1]
    assert all(request in a.read_text() for a in submissions)
    assert {(state / f"{a.name.split('.')[0]}.rc").read_text().strip() for a in submissions} == {"0"}
    if granularity == "image":  # a rerun finds the image complete: skipped, nothing submitted
        proc = run_cli(*base, timeout=280)
        assert proc.returncode == 0 and [r["status"] for r in read_summary(out)] == ["skipped"]
        assert len(list(state.glob("*.args"))) == 1


def test_unknown_plugin_args_exit_2_before_writing(bids_dir, model_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(bids_dir, out, "participant", "--model", model_dir, "-w", tmp_path / "w",
                   "--plugin", "sge", "--plugin-args", "sbatch_args=-p x")
    assert proc.returncode == 2
    assert "sbatch_args" in proc.stderr and "default_qsub_args" in proc.stderr
    assert not out.exists()


def test_worker_spec_passes_project_workers_as_classes():
    from l2s_pipelines.workflows import execution
    from l2s_pipelines.workflows.dask_worker import DaskWorker
    from l2s_pipelines.workflows.sge_worker import SgeWorker

    worker, kwargs = execution.worker_spec("sge", {"default_qsub_args": "-l h_vmem=8G"})
    assert worker is SgeWorker and kwargs == {"default_qsub_args": "-l h_vmem=8G"}
    assert execution.worker_spec("dask", {"address": "tcp://h:8786"})[0] is DaskWorker
    assert set(execution.worker_options("dask")) == {"address", "n_workers", "threads_per_worker",
                                                     "processes", "memory_limit"}
    with pytest.raises(Exception, match="not accepted by the dask worker"):
        execution.worker_spec("dask", {"n_procs": 2})


def _space_files(anat: Path, stem: str, template_id: str) -> list[Path]:
    return [anat / f"{stem}_space-{template_id}_dseg.nii.gz", anat / f"{stem}_space-{template_id}_dseg.json",
            anat / f"{stem}_from-T1w_to-{template_id}_mode-image_xfm.txt"]


@pytest.mark.timeout(300)
def test_output_spaces_end_to_end(bids_dir, model_dir, tmp_path, tf_home, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tf_home))
    out, work = tmp_path / "derivatives" / "l2s", tmp_path / "work"
    base = (bids_dir, out, "participant", "--model", model_dir, "-w", work, "--participant-label", "01",
            "--nprocs", "1")
    # a template that is not in TEMPLATEFLOW_HOME: exit 2 before anything is written or run
    proc = run_cli(*base, "--output-spaces", "MNI152NLin2009cAsym")
    assert proc.returncode == 2
    assert f"TEMPLATEFLOW_HOME={tf_home}" in proc.stderr and "pre-fetch" in proc.stderr
    assert not out.exists() and not files_under(work)

    proc = run_cli(*base, "--output-spaces", TEST_TEMPLATE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    anat = out / "sub-01" / "anat"
    dseg_path, sidecar_path, xfm = _space_files(anat, "sub-01", TEST_TEMPLATE)
    assert all(p.is_file() for p in (dseg_path, sidecar_path, xfm))
    mask = nib.load(tf_home / f"tpl-{TEST_TEMPLATE}" / f"tpl-{TEST_TEMPLATE}_res-02_desc-brain_mask.nii.gz")
    dseg = nib.load(dseg_path)
    assert dseg.shape == mask.shape and np.allclose(dseg.affine, mask.affine)
    native_values = set(np.unique(np.asarray(nib.load(anat / "sub-01_dseg.nii.gz").dataobj)).tolist())
    assert set(np.unique(np.asarray(dseg.dataobj)).tolist()) <= native_values
    side = json.loads(sidecar_path.read_text())
    assert side["SpatialReference"] == TEST_TEMPLATE
    assert side["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz", "bids::sub-01/anat/sub-01_dseg.nii.gz"]
    assert side["Transform"]["File"] == xfm.name and "affine" in side["RegistrationMethod"]
    etiv = side["EstimatedTotalIntracranialVolume"]
    assert etiv["Value"] > 0 and "determinant" in etiv["Method"] and etiv["Units"] == "mm^3"
    assert set(side["TissueDice"]) == {"CSF", "GM", "WM"}
    assert all(0.0 <= v <= 1.0 for v in side["TissueDice"].values())
    report = (out / "sub-01.html").read_text()
    assert "Template spaces" in report and "determinant" in report and TEST_TEMPLATE in report
    if Path(VALIDATOR).exists():
        assert _validate(out) == []

    # same command again: complete, skipped; a space not yet published makes the image incomplete
    # (the run then redoes it: tested through image_is_complete, which the driver asks)
    from l2s_pipelines.bids_app.derivatives import image_is_complete

    proc = run_cli(*base, "--output-spaces", TEST_TEMPLATE)
    assert proc.returncode == 0 and [r["status"] for r in read_summary(out)] == ["skipped"]
    assert image_is_complete(out, {"subject": "01"}, spaces=[TEST_TEMPLATE])
    assert not image_is_complete(out, {"subject": "01"}, spaces=[TEST_TEMPLATE, SECOND])
    xfm.unlink()
    assert not image_is_complete(out, {"subject": "01"}, spaces=[TEST_TEMPLATE])


@pytest.mark.timeout(300)
def test_one_job_per_image_isolates_a_failing_image(bids_dir, model_dir, tmp_path, monkeypatch):
    """--cluster-jobs image: a broken image fails its own job only, and its error (file and
    reason) reaches the summary as with one job per task."""
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HPC_STANDIN_STATE", str(tmp_path / "scheduler"))
    bad = image_path(bids_dir, "02", "1")
    bad.write_bytes(bad.read_bytes()[:300])
    out = tmp_path / "out"
    proc = run_cli(bids_dir, out, "participant", "--model", model_dir, "-w", tmp_path / "work",
                   "--participant-label", "02", "--nprocs", "1", "--plugin", "slurm",
                   "--plugin-args", "poll_delay=0", timeout=280)
    assert proc.returncode == 3, proc.stderr[-3000:]
    rows = read_summary(out)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert str(bad) in rows[0]["error"] and "truncated" in rows[0]["error"]
    assert len(list((tmp_path / "scheduler").glob("*.args"))) == 2
    assert not (out / "sub-02" / "ses-1").exists()
