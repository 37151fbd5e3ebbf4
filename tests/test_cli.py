"""Command line parsing, options, execution helpers and dataset-level errors (exit code 2).

All in-process and fast: these paths stop before any Pydra worker starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pty
import select
import sys
from pathlib import Path

import pytest

from l2s_pipelines.bids_app import cli
from l2s_pipelines.bids_app.options import parse_mem, parse_plugin_args, strip_prefix
from l2s_pipelines.errors import InputError
from l2s_pipelines.workflows import execution
from l2s_pipelines.workflows.sge_worker import SgeWorker


@pytest.fixture(autouse=True)
def _keep_env(monkeypatch):
    """main() sets thread and telemetry variables; restore them after each test."""
    for var in (*cli._THREAD_VARS, "NO_ET", "NIPYPE_NO_ET"):
        monkeypatch.setenv(var, "1")


def opts_for(*argv):
    return cli.options_from_args(cli.build_parser().parse_args([str(a) for a in argv]))


def test_both_spellings_and_prefixes(tmp_path):
    a = opts_for(tmp_path / "b", tmp_path / "o", "participant", "--participant-label", "sub-01", "02",
                 "--session_label", "ses-1", "--n_cpus", "3", "--omp_nthreads", "2", "--mem", "4G",
                 "--save_probseg", "--notrack", "-vv", "--plugin-args", "max_jobs=4", "flag=true")
    assert a.participant_label == ("01", "02") and a.session_label == ("1",)
    assert (a.nprocs, a.omp_nthreads, a.mem_mb, a.save_probseg, a.verbosity) == (3, 2, 4096, True, 2)
    assert a.plugin_args == {"max_jobs": 4, "flag": True}
    assert a.work_dir == Path.cwd() / "work" and a.bids_dir.is_absolute()
    b = opts_for(tmp_path / "b", tmp_path / "o", "participant", "--participant_label", "01",
                 "--nthreads", "1", "--save-probseg", "--output-spaces", "MNI152NLin2009cAsym")
    assert b.participant_label == ("01",) and b.nprocs == 1 and b.output_spaces == ("MNI152NLin2009cAsym",)


def test_cpu_allocation_from_slurm(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    a = opts_for(tmp_path, tmp_path / "o", "participant", "--omp-nthreads", "2")
    assert (a.nprocs, a.omp_nthreads, a.parallel_images) == (6, 2, 3)  # 6 threads in all


@pytest.mark.parametrize("text,mb", [("8000", 8000), ("8G", 8192), ("512MB", 512), ("1.5gb", 1536), ("2048k", 2)])
def test_parse_mem(text, mb):
    assert parse_mem(text) == mb


def test_bad_values_raise():
    with pytest.raises(InputError, match="--mem"):
        parse_mem("lots")
    with pytest.raises(InputError, match="alphanumeric"):
        strip_prefix(["sub-0_1"], "sub-")
    with pytest.raises(InputError, match="key=value"):
        parse_plugin_args(["novalue"])
    assert parse_plugin_args(['{"n_procs": 2}']) == {"n_procs": 2}


def test_version_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and "l2s-bids 0.1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["a", "b", "participant", "--no-such-option"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["a", "b", "everything"])
    assert exc.value.code == 2
    assert cli.main(["a", "b", "participant", "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_worker_spec_per_plugin():
    assert execution.worker_spec("cf", {}, nprocs=3) == ("cf", {"n_procs": 3})
    assert execution.worker_spec("cf", {"n_procs": 1}, nprocs=3) == ("cf", {"n_procs": 1})
    assert execution.worker_spec("slurm", {"sbatch_args": "-p x"}) == ("slurm", {"sbatch_args": "-p x"})
    assert execution.worker_spec("sge", {})[0] is SgeWorker and execution.worker_spec("debug", {})[0] == "debug"
    worker, _ = execution.worker_spec("dask", {})
    assert worker.__name__ == "DaskWorker"
    with pytest.raises(ValueError, match="unknown plugin"):
        execution.worker_spec("psij", {})


def test_cf_pool_never_runs_more_segmentations_than_parallel_images(monkeypatch, tmp_path):
    """The cf pool gets a second process per image only when every image of the run fits at
    once (then no further segmentation exists to start): measures and figures run side by
    side. With more images than --parallel-images, one process per parallel image."""
    from types import SimpleNamespace

    from l2s_pipelines.bids_app import run

    assert [execution.pool_processes(p, n) for p, n in ((1, 1), (2, 1), (2, 2), (1, 5), (3, 4))] == [2, 2, 4, 1, 3]
    seen = []

    class Stop(Exception):
        pass

    def submitter(plugin, *, work_dir, nprocs, plugin_args):
        seen.append(nprocs)
        raise Stop

    monkeypatch.setattr(execution, "make_submitter", submitter)
    for todo, parallel, crash_stop in (([0], 1, False), ([0, 1], 1, False), ([0, 1], 1, True), ([0, 1], 2, False)):
        opts = SimpleNamespace(stop_on_first_crash=crash_stop, parallel_images=parallel, plugin="cf",
                               work_dir=tmp_path, plugin_args={})
        with pytest.raises(Stop):
            run._execute(None, todo, {i: None for i in todo}, [], opts)
    assert seen == [2, 1, 2, 4]  # --stop-on-first-crash runs the images one at a time


def test_job_granularity_per_plugin_and_batch(tmp_path):
    """cf runs one job per image (depth first: images finish and are published one after
    another) only when a batch holds more images than run at once; cluster workers follow
    --cluster-jobs; debug runs tasks."""
    def granularity(*extra):
        o = opts_for(tmp_path / "b", tmp_path / "o", "participant", "--nprocs", "2", *extra)
        return [o.job_per_image(n) for n in (1, 2, 3)]

    assert opts_for(tmp_path / "b", tmp_path / "o", "participant", "--nprocs", "2").parallel_images == 2
    assert granularity() == [False, False, True]
    assert granularity("--parallel-images", "1", "--omp-nthreads", "2") == [False, True, True]
    assert granularity("--plugin", "slurm") == [True] * 3
    assert granularity("--plugin", "sge", "--cluster-jobs", "task") == [False] * 3
    assert granularity("--plugin", "debug") == [False] * 3


def test_watcher_leaves_an_unreadable_result_to_the_final_collection(monkeypatch, tmp_path):
    """While the run goes on, an image whose result cannot be read yet is left for later (not
    failed); the collection after the Submitter returns fails it, named, once."""
    from types import SimpleNamespace

    from l2s_pipelines.bids_app import run

    monkeypatch.setattr(execution, "load_job_result", lambda task, work_dir: None)
    reports = []
    monkeypatch.setattr(run, "_subject_report", lambda board, subject, opts: reports.append(subject))
    image = SimpleNamespace(subject="01", session="", path=str(tmp_path / "sub-01_T1w.nii.gz"))
    board = run.Board([image], SimpleNamespace(update=lambda rows: None))
    opts = SimpleNamespace(work_dir=tmp_path, output_dir=tmp_path / "out")
    with pytest.raises(run._NotYet):
        run._collect(board, 0, None, image, opts, final=False)
    assert board.rows[0]["status"] == "pending" and not board.collected and not reports
    run._collect(board, 0, None, image, opts)
    run._collect(board, 0, None, image, opts)  # once per image
    assert board.rows[0]["status"] == "failed" and "no result" in board.rows[0]["error"]
    assert board.collected == {0} and reports == ["01"]


@contextlib.contextmanager
def pty_as_stderr(monkeypatch):
    """A fresh pseudo-terminal (it reports 0 x 0) as ``sys.stderr``: yields ``(stream, shown)``,
    ``shown()`` returning what the terminal has received (read until 0.5 s without output)."""
    master, slave = pty.openpty()
    stream = open(slave, "w", closefd=False)
    monkeypatch.setattr(sys, "stderr", stream)  # tqdm sizes bars on stderr itself

    def shown() -> str:
        stream.flush()
        received = b""
        while select.select([master], [], [], 0.5)[0]:
            received += os.read(master, 4096)
        return received.decode()

    try:
        yield stream, shown
    finally:
        stream.close()
        os.close(master)
        os.close(slave)


def test_progress_bar_shows_on_a_terminal_that_reports_no_width(monkeypatch):
    """A fresh pseudo-terminal reports 0 columns, where a plain tqdm bar prints nothing."""
    from l2s_pipelines.system import terminal_bar

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    with pty_as_stderr(monkeypatch) as (stream, shown):
        assert tuple(os.get_terminal_size(stream.fileno())) == (0, 0)
        bar = terminal_bar(3, desc="l2s-bids", unit="image")
        bar.update(3)
        bar.close()
        text = shown()
    assert "l2s-bids: 100%" in text and "3/3" in text


def test_log_lines_print_above_the_progress_bar_on_a_terminal(monkeypatch):
    """On a terminal, an image's failure is logged on a line of its own (the bar is cleared and
    redrawn), and closing the board restores the logging handlers."""
    from types import SimpleNamespace

    from l2s_pipelines.bids_app import run

    root = logging.getLogger()
    with pty_as_stderr(monkeypatch) as (stream, shown):
        handler = logging.StreamHandler(stream)
        root.addHandler(handler)
        try:
            image = SimpleNamespace(subject="01", session="", path="/data/sub-01_T1w.nii.gz")
            board = run.Board([image, image], SimpleNamespace(update=lambda rows: None))
            board.set(0, "failed", error="InputError: declared size")
            board.close()
            assert handler in root.handlers
        finally:
            root.removeHandler(handler)
        lines = shown().replace("\r", "\n").split("\n")
    failure = [line for line in lines if "InputError: declared size" in line]
    assert failure == ["sub-01 sub-01_T1w.nii.gz: InputError: declared size"], lines
    assert any("l2s-bids:" in line and "1/2" in line for line in lines)


def test_clean_work_dir_and_error_summary(tmp_path):
    job = tmp_path / "work" / f"python-{'a' * 32}"
    job.mkdir(parents=True)
    (tmp_path / "work" / f"python-{'a' * 32}.lock").write_text("")
    (job / "_error.pklz").write_bytes(b"x")
    (job / "_result.pklz").write_bytes(b"x")
    keep = tmp_path / "work" / f"python-{'d' * 32}" / "_result.pklz"
    keep.parent.mkdir()
    keep.write_bytes(b"x")
    assert execution.clean_work_dir(tmp_path / "work") == {"locks": 1, "errors": 1}
    assert not list((tmp_path / "work").rglob("*.lock")) and not (job / "_result.pklz").exists()
    assert keep.exists()
    text = ('RuntimeError: Workflow job img1 failed with errors:\n  File "x"\n'
            "l2s_pipelines.errors.InputError: /d/sub-01_T1w.nii.gz: 4D image with 3 volumes\n")
    assert execution.summarise_error(text) == "InputError: /d/sub-01_T1w.nii.gz: 4D image with 3 volumes"


def test_boilerplate_only(bids_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main([str(bids_dir), str(out), "participant", "--boilerplate-only", "--model", str(model_dir),
                     "-w", str(tmp_path / "work")])
    assert code == 0
    text = (out / "logs" / "CITATION.md").read_text()
    assert "tiny-untrained-test" in text and "33 labels" in text and text in capsys.readouterr().out


def test_bids_filter_file(bids_dir, tmp_path):
    from l2s_pipelines.bids_app import queries

    layout = queries.load_layout(bids_dir)
    f = tmp_path / "filter.json"
    f.write_text(json.dumps({"t1w": {"session": None}}))
    images = queries.collect_images(layout, filters=opts_for(bids_dir, tmp_path / "o", "participant",
                                                             "--bids-filter-file", f).bids_filters)
    assert [im.subject for im in images] == ["01"]
    f.write_text(json.dumps({"t1w": {"session": "*"}}))
    images = queries.collect_images(layout, filters=json.loads(f.read_text()))
    assert [(im.subject, im.session) for im in images] == [("02", "1"), ("02", "2")]
    f.write_text("{not json")
    with pytest.raises(InputError, match="filter.json.*not valid JSON"):
        opts_for(bids_dir, tmp_path / "o", "participant", "--bids-filter-file", f)


def test_references_found_and_output_excluded(bids_dir, tmp_path):
    from l2s_pipelines.bids_app import queries

    out = bids_dir / "derivatives" / "l2s"
    (out / "sub-01" / "anat").mkdir(parents=True)
    (out / "dataset_description.json").write_text("{}")
    layout = queries.load_layout(bids_dir)
    images = queries.attach_references(queries.collect_images(layout), queries.reference_roots(bids_dir, out))
    assert all("derivatives/reference" in im.reference and "desc-reference_dseg" in im.reference for im in images)
    assert [Path(im.reference).name.split("_desc")[0] for im in images] == \
        [Path(im.path).name.split("_T1w")[0] for im in images]
