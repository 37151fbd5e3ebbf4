"""Batch use: a run record per invocation (``logs/<run-id>/``), aggregate logs that merge every
run and stay correct when array tasks write at once, nipreps' thread options with their
arithmetic, and provenance (threads, CodeURL, no lock file left behind)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import build_bids, files_under, read_summary, run_cli
from l2s_pipelines.bids_app import cli
from l2s_pipelines.bids_app.options import resolve_threads
from l2s_pipelines.bids_app.runlog import load_config
from l2s_pipelines.errors import InputError


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch):
    for var in (*cli._THREAD_VARS, "NO_ET", "NIPYPE_NO_ET"):
        monkeypatch.setenv(var, "1")


def test_thread_options_keep_nipreps_meanings(tmp_path, capsys):
    # (cpus, --nthreads, --omp-nthreads, --parallel-images) -> (N, T, P): at most N threads in all
    assert resolve_threads(8) == (8, 1, 8)
    assert resolve_threads(8, 3, 3) == (3, 3, 1)  # not 3 images x 3 threads = 9 threads
    assert resolve_threads(8, None, 2) == (8, 2, 4)
    assert resolve_threads(8, 6, None, 2) == (6, 3, 2)
    assert resolve_threads(8, 4, 1, 2) == (4, 1, 2)
    with pytest.raises(InputError, match="2 x --omp-nthreads 3 = 6 threads exceed --nthreads 4"):
        resolve_threads(8, 4, 3, 2)
    with pytest.raises(InputError, match="--omp-nthreads 5 .* exceed --nthreads 4"):
        resolve_threads(8, 4, 5)
    parse = lambda *a: cli.options_from_args(cli.build_parser().parse_args(  # noqa: E731
        [str(tmp_path), str(tmp_path / "o"), "participant", *a]))
    o = parse("--nthreads", "3", "--omp-nthreads", "3", "--mem", "6G")
    assert (o.nprocs, o.omp_nthreads, o.parallel_images, o.job_mem_mb) == (3, 3, 1, 6144)
    o = parse("--n_cpus", "4", "--parallel_images", "2", "--mem", "6G")
    assert (o.nprocs, o.omp_nthreads, o.parallel_images, o.job_mem_mb) == (4, 2, 2, 3072)
    assert cli.main([str(tmp_path), str(tmp_path / "o"), "participant", "--nprocs", "2",
                     "--parallel-images", "2", "--omp-nthreads", "2"]) == 2
    assert "exceed --nthreads 2" in capsys.readouterr().err
    help_text = " ".join(cli.build_parser().format_help().split())
    assert "--parallel-images" in help_text and "as in fMRIPrep" in help_text


_WRITER = textwrap.dedent("""
    import sys
    from l2s_pipelines.bids_app.runlog import RunLog
    logs, task = sys.argv[1], int(sys.argv[2])
    log = RunLog(logs)
    rows = [{"subject": f"{task:02d}", "session": "", "input": f"/d/sub-{task:02d}_run-{i}_T1w.nii.gz",
             "status": "pending", "error": "", "runtime_s": "", "peak_memory_mb": "", "device": ""}
            for i in range(3)]
    for step in range(15):
        for r in rows:
            r["status"] = "running" if step < 14 else "ok"
        log.update(rows)
    log.finish(rows, 0)
""")


def test_aggregate_logs_merge_concurrent_array_tasks(tmp_path):
    logs = tmp_path / "out" / "logs"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(logs), str(t)]) for t in range(5)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 5
    rows = read_summary(tmp_path / "out")
    assert len(rows) == 15 and {r["status"] for r in rows} == {"ok"}
    assert sorted(r["input"] for r in rows) == sorted(f"/d/sub-{t:02d}_run-{i}_T1w.nii.gz" for t in range(5) for i in range(3))
    status = json.loads((logs / "status.json").read_text())
    assert status["total"] == 15 and status["counts"] == {"ok": 15} and status["finished"]
    run_dirs = [d for d in logs.iterdir() if d.is_dir()]
    assert len(run_dirs) == 5 and all(len(read_summary_in(d)) == 3 for d in run_dirs)
    assert not [f for f in files_under(logs) if f.endswith(".lock") or "tmp" in f]


def read_summary_in(run_dir):
    return (run_dir / "run_summary.tsv").read_text().splitlines()[1:]


def test_run_records_and_merged_logs_end_to_end(tmp_path, model_dir):
    bids = build_bids(tmp_path / "bids", {"01": [None], "02": [None]}, reference=False)
    out, work = tmp_path / "out", tmp_path / "w"
    common = ("--model", model_dir, "-w", work)
    proc = run_cli(bids, out, "participant", "--participant-label", "01", *common, "--nthreads", "2",
                   "--omp-nthreads", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(bids, out, "participant", "--participant-label", "02", *common, "--nprocs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(bids, out, "participant", "--participant-label", "01", *common, "--reports-only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the aggregate keeps every image, with its latest status and the run that wrote it
    rows = read_summary(out)
    assert [(r["subject"], r["status"]) for r in rows] == [("01", "skipped"), ("02", "ok")]
    runs = sorted(d for d in (out / "logs").iterdir() if d.is_dir())
    assert len(runs) == 3 and [r["run_id"] for r in rows] == [runs[2].name, runs[1].name]
    first = json.loads((runs[0] / "run.json").read_text())
    assert "--participant-label 01" in first["CommandLine"] and first["ExitCode"] == 0
    assert first["Threads"]["nthreads"] == 2 and first["Threads"]["omp_nthreads"] == 2
    assert first["Threads"]["parallel_images"] == 1 and first["Versions"]["torch"]
    opts = load_config(runs[0] / "config.json")
    assert opts.participant_label == ("01",) and opts.omp_nthreads == 2 and opts.model_dir == model_dir
    assert json.loads((out / "logs" / "run_summary.json").read_text())["status"]["Levels"]["skipped"]
    # provenance: threads of the segmentation, CodeURL, and no lock file left in the output
    side = json.loads((out / "sub-01" / "anat" / "sub-01_dseg.json").read_text())
    assert side["Threads"] == 2 and side["GeneratedBy"][0]["CodeURL"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["CodeURL"].startswith(("file://", "http"))
    assert not [f for f in files_under(out) if f.endswith(".lock")]
