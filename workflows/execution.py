"""Pydra execution: Submitter set-up per plugin, work-folder hygiene, per-job result lookup.

Plugins and the ``--plugin-args`` keys each accepts (passed to the worker as keyword arguments;
unknown keys are an :class:`~l2s_pipelines.errors.InputError`, see :data:`PLUGIN_ARGS`):

- ``cf``: local process pool; ``n_procs`` (default ``--nprocs``).
- ``debug``: serial, in this process; no keys.
- ``slurm``: Pydra's ``SlurmWorker``; ``sbatch_args`` (resource requests, e.g.
  ``"--cpus-per-task=4 --mem=16G --time=01:00:00"``), ``poll_delay`` (s).
- ``sge``: the project's :class:`~l2s_pipelines.workflows.sge_worker.SgeWorker` (pydra 1.0a12's
  own is broken); resource requests go in ``default_qsub_args`` (e.g. ``"-l h_vmem=16G -pe smp
  4"``), ``qsub_args`` only adds to them; also ``poll_delay``, ``max_job_array_length``,
  ``collect_jobs_delay``, ``indirect_submit_host``, ``max_threads``, ``max_mem_free``, ...
- ``dask``: the project's :class:`~l2s_pipelines.workflows.dask_worker.DaskWorker`;
  ``address`` (an existing scheduler) or a private LocalCluster with ``n_workers``,
  ``threads_per_worker``, ``processes``, ``memory_limit``.

Pydra finds workers by name only inside its own package, so ``sge`` and ``dask`` are passed as
classes (imported only when chosen).

Example
-------
>>> with make_submitter("cf", work_dir="work", nprocs=2) as sub:  # doctest: +SKIP
...     result = sub(workflow_task)
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

from l2s_pipelines.errors import InputError

LOG = logging.getLogger("l2s.execution")
#: Worker class of each plugin (module path); ``cf``, ``debug`` and ``slurm`` go to the
#: Submitter by name, the others as classes.
WORKER_CLASSES = {
    "cf": "pydra.workers.cf.ConcurrentFuturesWorker",
    "debug": "pydra.workers.debug.DebugWorker",
    "slurm": "pydra.workers.slurm.SlurmWorker",
    "sge": "l2s_pipelines.workflows.sge_worker.SgeWorker",
    "dask": "l2s_pipelines.workflows.dask_worker.DaskWorker",
}
BY_NAME = ("cf", "debug", "slurm")
DASK_WORKER = WORKER_CLASSES["dask"]
#: The ``--plugin-args`` mapping, for ``l2s-bids --help``.
PLUGIN_ARGS = ("cf: n_procs; slurm: sbatch_args (resources, e.g. \"--cpus-per-task=4 --mem=16G\"), "
               "poll_delay; sge: default_qsub_args (resources, e.g. \"-l h_vmem=16G -pe smp 4\"), "
               "qsub_args, poll_delay, max_job_array_length; dask: address (existing scheduler) or "
               "n_workers, threads_per_worker, processes, memory_limit (private LocalCluster)")
_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)): (.+)$")


def worker_class(plugin: str):
    """The worker class of ``plugin`` (imports pydra's submitter first: circular import)."""
    import pydra.engine.submitter  # noqa: F401

    if plugin not in WORKER_CLASSES:
        raise ValueError(f"unknown plugin {plugin!r}; choose {', '.join(WORKER_CLASSES)}")
    module, _, name = WORKER_CLASSES[plugin].rpartition(".")
    return getattr(importlib.import_module(module), name)


def worker_options(plugin: str) -> list[str]:
    """Keyword arguments the worker of ``plugin`` accepts (its ``attrs`` init fields)."""
    import attrs

    return [f.alias or f.name for f in attrs.fields(worker_class(plugin))
            if f.init and f.name not in ("loop", "error")]


def worker_spec(plugin: str, plugin_args: dict | None = None, *, nprocs: int = 1):
    """``(worker, kwargs)`` for :class:`pydra.engine.submitter.Submitter`: a name for ``cf``,
    ``debug`` and ``slurm``, a class for ``sge`` and ``dask``.

    ``nprocs`` is the default ``n_procs`` of the ``cf`` worker; ``plugin_args`` override it.
    Raises InputError for a key the worker does not accept.
    """
    if plugin not in WORKER_CLASSES:
        raise ValueError(f"unknown plugin {plugin!r}; choose {', '.join(WORKER_CLASSES)}")
    kwargs = dict(plugin_args or {})
    if plugin == "cf":
        kwargs.setdefault("n_procs", int(nprocs))
    accepted = worker_options(plugin)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise InputError(f"--plugin-args {', '.join(unknown)}: not accepted by the {plugin} worker "
                         f"(accepted: {', '.join(accepted) or 'none'})")
    return (plugin if plugin in BY_NAME else worker_class(plugin)), kwargs


def pool_processes(parallel_images: int, images_at_once: int) -> int:
    """Processes of the local ``cf`` pool: one per image processed at once, so that no more
    than ``parallel_images`` segmentations (each with its own threads and memory share) ever
    run together. When every image of a run fits at once (``images_at_once <=
    parallel_images``: e.g. one subject per cluster array job) no further segmentation can
    start, so each image gets a second process: its measures and figures (one thread each,
    after its segmentation) then run side by side instead of one after the other.

    >>> pool_processes(1, 1), pool_processes(2, 1), pool_processes(1, 20), pool_processes(4, 3)
    (2, 2, 1, 6)
    """
    parallel_images, images_at_once = max(1, int(parallel_images)), max(1, int(images_at_once))
    return 2 * images_at_once if images_at_once <= parallel_images else parallel_images


def make_submitter(plugin: str, *, work_dir, nprocs: int = 1, plugin_args: dict | None = None):
    """A Pydra ``Submitter`` caching under ``work_dir`` (created)."""
    import pydra.engine.submitter as submitter_mod  # before pydra.workers.base (circular import)

    worker, kwargs = worker_spec(plugin, plugin_args, nprocs=nprocs)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    return submitter_mod.Submitter(cache_root=Path(work_dir), worker=worker, **kwargs)


#: Marker file written at the top of a work folder l2s-bids owns; only such a folder is cleaned.
WORK_MARKER = ".l2s-pipelines-work"
#: Top-level entries of Pydra's cache layout (flat under ``cache_root``): job folders
#: ``<type>-<md5 hex>``, their locks ``<folder>.lock`` / ``<folder>_save.lock`` and the
#: per-run ``<uuid4 hex>_info.json`` checksum files.
_PYDRA_ENTRY = re.compile(r"^(?:[a-z]+-[0-9a-f]{32}(?:(?:_save)?\.lock)?|[0-9a-f]{32}_info\.json)$")


def _is_pydra_entry(entry: Path) -> bool:
    """True for a top-level entry of Pydra's cache layout (a folder for job names, a plain
    file for locks and info files; never a symlink)."""
    if entry.is_symlink() or not _PYDRA_ENTRY.match(entry.name):
        return False
    return entry.is_dir() if "." not in entry.name else entry.is_file()


def check_work_dir(work_dir) -> None:
    """Refuse a work folder l2s-bids cannot prove it owns: it must be absent, empty, marked by
    :data:`WORK_MARKER`, or hold only entries of Pydra's cache layout (an older run's cache).
    Raises :class:`InputError` naming the folder and one foreign entry; writes nothing."""
    work = Path(work_dir)
    if not work.exists():
        return
    if not work.is_dir():
        raise InputError(f"{work}: work folder is not a folder")
    if (work / WORK_MARKER).is_file() and not (work / WORK_MARKER).is_symlink():
        return
    foreign = sorted(e.name for e in work.iterdir() if not _is_pydra_entry(e))
    if foreign:
        raise InputError(f"{work}: work folder holds files l2s-bids did not create (e.g. {foreign[0]!r}); "
                         "use a new or empty folder for -w")


def claim_work_dir(work_dir) -> Path:
    """Check the work folder (:func:`check_work_dir`), create it and write its marker.
    Returns the folder (Pydra's ``cache_root``)."""
    work = Path(work_dir)
    check_work_dir(work)
    work.mkdir(parents=True, exist_ok=True)
    marker = work / WORK_MARKER
    if not marker.is_file():
        marker.write_text("Pydra cache of l2s-bids; l2s-bids removes stale locks and error records "
                          "of its own jobs here.\n", encoding="utf-8")
    return work


def clean_work_dir(work_dir) -> dict[str, int]:
    """Claim ``work_dir`` (:func:`claim_work_dir`: refused unless provably ours) and remove
    stale Pydra state left by a killed or failed run, only in Pydra's own layout at its top
    level: job locks ``<type>-<hash>.lock`` (a later run would wait on them forever),
    ``_error.pklz`` with the ``_result.pklz`` beside it inside job folders (the first rerun
    would report the old error), and ``<uuid>_info.json`` checksum files. Nothing else is
    touched, and symlinks are never followed.

    Only call this when no other run uses ``work_dir``. Returns counts per kind.
    """
    work = claim_work_dir(work_dir)
    counts = {"locks": 0, "errors": 0}
    for entry in sorted(work.iterdir()):
        if not _is_pydra_entry(entry):
            continue
        if entry.name.endswith(".lock") or entry.name.endswith("_info.json"):
            entry.unlink(missing_ok=True)
            counts["locks"] += entry.name.endswith(".lock")
        elif (entry / "_error.pklz").is_file() and not (entry / "_error.pklz").is_symlink():
            (entry / "_error.pklz").unlink()
            if (entry / "_result.pklz").is_file() and not (entry / "_result.pklz").is_symlink():
                (entry / "_result.pklz").unlink()
            counts["errors"] += 1
    if any(counts.values()):
        LOG.info("cleaned %d stale lock(s) and %d error record(s) under %s", counts["locks"], counts["errors"], work)
    return counts


def job_dir(task, work_dir) -> Path:
    """Cache folder of a task whose inputs are all plain values (the same inside or outside a
    workflow, since Pydra names folders by input checksum)."""
    return Path(work_dir) / task._checksum


def job_state(task, work_dir) -> str:
    """``"running"`` while Pydra holds the job lock of ``task`` (its result and error records are
    written under it), then ``"done"`` or ``"failed"``; ``"pending"`` before it starts."""
    d = job_dir(task, work_dir)
    if d.with_suffix(".lock").exists():
        return "running"
    if (d / "_error.pklz").exists():
        return "failed"
    if (d / "_result.pklz").exists():
        return "done"
    return "pending"


def load_job_result(task, work_dir):
    """The Pydra ``Result`` of ``task`` from its cache folder, or None when there is none."""
    from pydra.engine.result import load_result

    return load_result(task._checksum, [Path(work_dir)])


def job_error(task, work_dir) -> str:
    """One line describing why ``task`` failed: the innermost ``Error: message`` line of the
    recorded traceback (e.g. ``InputError: /x/sub-01_T1w.nii.gz: 4D image ...``)."""
    import cloudpickle as cp

    path = job_dir(task, work_dir) / "_error.pklz"
    try:
        with open(path, "rb") as fh:
            record = cp.load(fh)
        message = record.get("error message", "")
    except (OSError, EOFError, ValueError, AttributeError) as exc:
        return f"failed (no readable error record at {path}: {exc})"
    return summarise_error(message if isinstance(message, str) else "".join(message))


def summarise_error(text: str) -> str:
    """The most specific ``Type: message`` line of a (possibly nested) traceback text."""
    best = ""
    for line in text.splitlines():
        m = _ERROR_LINE.match(line)
        if m and not m.group(2).startswith("Workflow job"):
            best = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    return best or (text.strip().splitlines() or ["unknown error"])[-1][:500]
