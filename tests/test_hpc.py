"""Distributed execution: a small Pydra workflow through the Dask, SLURM and SGE workers.

SLURM and SGE run through stand-in scheduler commands (tests/hpc_standins/) that execute the
job scripts locally, so Pydra's real slurm/sge worker code (script writing, submission,
polling, accounting) runs unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import pytest

os.environ.setdefault("NO_ET", "1")
os.environ.setdefault("NIPYPE_NO_ET", "1")

from pydra.compose import python, workflow  # noqa: E402
from pydra.engine.submitter import Submitter  # noqa: E402

from l2s_pipelines.workflows.dask_worker import DaskWorker  # noqa: E402
from l2s_pipelines.workflows.sge_worker import SgeWorker  # noqa: E402

STANDINS = Path(__file__).parent / "hpc_standins"

# Job scripts run in fresh interpreters that cannot import this test module: ship the task
# functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@python.define(outputs=["square", "pid"])
def Square(x: int) -> tuple[int, int]:
    """Square ``x``; also report the process id that ran the job."""
    return x * x, os.getpid()


@python.define(outputs=["total"])
def Total(values: list[int]) -> int:
    """Sum the squares gathered from the split."""
    return int(sum(values))


@workflow.define(outputs=["total", "squares", "pids"])
def SumOfSquares(xs: list[int]) -> tuple[int, list[int], list[int]]:
    """Square each input in its own job (split), then add them up (combine)."""
    square = workflow.add(Square().split(x=xs).combine("x"), name="square")
    total = workflow.add(Total(values=square.square), name="total")
    return total.total, square.square, square.pid


def _run(tmp_path: Path, worker, **kwargs):
    wf = SumOfSquares(xs=[1, 2, 3])
    with Submitter(worker=worker, cache_root=tmp_path / "cache", **kwargs) as sub:
        res = sub(wf)
    assert not res.errored, res.errors
    return res.outputs


@pytest.fixture
def standin_path(tmp_path, monkeypatch):
    """Put the stand-in scheduler commands first on PATH with a private state folder."""
    state = tmp_path / "scheduler"
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HPC_STANDIN_STATE", str(state))
    return state


def test_dask_local_cluster(tmp_path):
    outputs = _run(tmp_path, DaskWorker, n_workers=1, threads_per_worker=2, processes=False)
    assert outputs.total == 14
    assert sorted(outputs.squares) == [1, 4, 9]


def test_dask_worker_pickles_without_loop_or_client(tmp_path):
    worker = DaskWorker(n_workers=1, processes=False)
    with Submitter(worker=worker, cache_root=tmp_path / "cache") as sub:
        assert sub.worker.loop is not None
        clone = cloudpickle.loads(cloudpickle.dumps(sub.worker))
    assert clone.loop is None and clone._client is None and clone._cluster is None
    assert (clone.n_workers, clone.processes) == (1, False)
    assert DaskWorker.plugin_name() == "dask"


@pytest.mark.timeout(120)
def test_slurm_worker_with_standin_commands(tmp_path, standin_path):
    outputs = _run(tmp_path, "slurm", poll_delay=0, sbatch_args="--time=00:05:00")
    assert outputs.total == 14
    assert sorted(outputs.squares) == [1, 4, 9]
    # each job ran in its own process, submitted through sbatch with Pydra's arguments
    assert len(set(outputs.pids)) == 3 and os.getpid() not in outputs.pids
    submissions = sorted(standin_path.glob("*.args"))
    assert len(submissions) == 4  # three squares and the total
    for args in submissions:
        text = args.read_text()
        assert "--time=00:05:00" in text and "--job-name=" in text and "--error=" in text
    assert all((standin_path / f"{a.stem.split('.')[0]}.rc").read_text().strip() == "0"
               for a in submissions)


def test_slurm_worker_reports_failed_job(tmp_path, standin_path):
    @python.define(outputs=["out"])
    def Fails(x: int) -> int:
        raise ValueError(f"bad subject {x}")

    with Submitter(worker="slurm", poll_delay=0, cache_root=tmp_path / "cache") as sub:
        res = sub(Fails(x=7), raise_errors=False)
    assert res.errored
    assert "bad subject 7" in str(res.errors)
    # the job script itself exited non-zero, as seen by the stand-in scheduler
    assert [p.read_text().strip() for p in standin_path.glob("*.rc")] == ["1"]


def test_sge_worker_rejects_broken_result_file_polling():
    with pytest.raises(ValueError, match="poll_for_result_file"):
        SgeWorker(poll_for_result_file=True)


@pytest.mark.timeout(120)
def test_sge_worker_with_standin_commands(tmp_path, standin_path):
    outputs = _run(tmp_path, SgeWorker, poll_delay=0, collect_jobs_delay=0,
                   default_qsub_args="-l h_vmem=1G")
    assert outputs.total == 14
    assert sorted(outputs.squares) == [1, 4, 9]
    assert os.getpid() not in outputs.pids
    # resource requests go in default_qsub_args (qsub_args only names -o/-e in 1.0a12)
    submissions = list(standin_path.glob("*.args"))
    assert submissions and all("-l h_vmem=1G" in a.read_text() for a in submissions)
    assert all(" -t 1-" in f" {a.read_text()}" for a in submissions)
