"""A Pydra 1.0 worker that runs jobs on a dask.distributed cluster.

Pydra 1.0a12 looks workers up by name only inside the ``pydra.workers`` namespace package, so
this worker is selected by passing the class (or an instance) to the Submitter::

    from l2s_pipelines.workflows.dask_worker import DaskWorker
    with Submitter(worker=DaskWorker, address="tcp://scheduler:8786", cache_root=work) as sub:
        sub(wf)
    # or a private LocalCluster on this machine:
    with Submitter(worker=DaskWorker, n_workers=2, threads_per_worker=1, cache_root=work) as sub:
        sub(wf)

Each job is pickled with cloudpickle in the submitting process, shipped to a dask worker as
bytes, and run there with ``job.run(rerun)``; the job writes its result into Pydra's cache
folder (which must therefore be on a file system shared by all dask workers).
"""

from __future__ import annotations

import asyncio
import typing as ty

import attrs
import cloudpickle as cp

import pydra.engine.submitter  # noqa: F401  (must precede pydra.workers.base: circular import)
from pydra.workers import base

if ty.TYPE_CHECKING:
    from pydra.engine.job import Job
    from pydra.engine.result import Result


def _unpickle_and_run(job_pkl: bytes, rerun: bool) -> "Result":
    """Run one pickled Pydra job inside a dask worker and return its Result."""
    job = cp.loads(job_pkl)
    return job.run(rerun=rerun)


@attrs.define
class DaskWorker(base.Worker):
    """Submit Pydra jobs to a dask.distributed scheduler.

    Parameters
    ----------
    address:
        Scheduler address (``tcp://host:8786``) of an existing cluster, e.g. one started with
        ``dask scheduler`` / ``dask worker`` or dask-jobqueue. ``None`` starts a LocalCluster.
    n_workers, threads_per_worker, processes:
        LocalCluster layout when ``address`` is None. ``processes=False`` runs the dask
        workers as threads of this process (no fork; handy for tests).
    memory_limit:
        Per-worker memory limit of the LocalCluster (dask syntax, e.g. ``"4GB"``; ``"auto"``).
    """

    address: str | None = None
    n_workers: int = 1
    threads_per_worker: int = 1
    processes: bool = True
    memory_limit: str = "auto"
    _client: ty.Any = attrs.field(default=None, init=False, eq=False, repr=False)
    _cluster: ty.Any = attrs.field(default=None, init=False, eq=False, repr=False)

    def __getstate__(self) -> dict[str, ty.Any]:
        """Pickle only the configuration: not the event loop, client or cluster."""
        state = super().__getstate__()
        state["_client"] = None
        state["_cluster"] = None
        return state

    @classmethod
    def plugin_name(cls) -> str:
        """Name shown in Pydra's logs (the class lives outside the ``pydra.workers`` namespace)."""
        return "dask"

    def _get_client(self):
        """Connect to the scheduler (or start the LocalCluster) on first use."""
        if self._client is None:
            from dask.distributed import Client, LocalCluster

            if self.address is None:
                self._cluster = LocalCluster(
                    n_workers=self.n_workers,
                    threads_per_worker=self.threads_per_worker,
                    processes=self.processes,
                    memory_limit=self.memory_limit,
                    dashboard_address=None,
                )
                self._client = Client(self._cluster)
            else:
                self._client = Client(self.address)
        return self._client

    async def run(self, job: "Job[base.TaskType]", rerun: bool = False) -> "Result":
        """Run ``job`` on the cluster; resolves when its result has been computed."""
        assert self.loop, "No event loop available to submit tasks"
        client = self._get_client()
        future = client.submit(
            _unpickle_and_run, cp.dumps(job), rerun, pure=False
        )
        waiter = self.loop.create_future()

        def _done(fut) -> None:
            # Called from the dask client's thread: hand the outcome over to Pydra's loop.
            def _resolve() -> None:
                if waiter.done():
                    return
                try:
                    waiter.set_result(fut.result())
                except BaseException as exc:  # noqa: BLE001 - propagated to Pydra as is
                    waiter.set_exception(exc)

            self.loop.call_soon_threadsafe(_resolve)

        future.add_done_callback(_done)
        try:
            return await waiter
        except asyncio.CancelledError:
            future.cancel()
            raise

    def close(self) -> None:
        """Close the client and, when this worker started it, the LocalCluster."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
