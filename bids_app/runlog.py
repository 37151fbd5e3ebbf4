"""Run records and merged logs of ``l2s-bids`` participant runs (fMRIPrep-style run folders).

Every invocation writes its own record, and the aggregate files merge all of them::

    OUTPUT_DIR/logs/<run-id>/run.json          command line, start and end, exit code, host,
                                                versions, threads and memory (see RunLog.start)
    OUTPUT_DIR/logs/<run-id>/config.json       the run options; load_config() rebuilds them
    OUTPUT_DIR/logs/<run-id>/status.json       this invocation's images (rewritten as they finish)
    OUTPUT_DIR/logs/<run-id>/run_summary.tsv   this invocation's images (+ .json data dictionary)
    OUTPUT_DIR/logs/status.json                every image of every run: its latest status
    OUTPUT_DIR/logs/run_summary.tsv            the same as a table (+ .json data dictionary)

The aggregate files are merged under a lock (:func:`~l2s_pipelines.bids_app.locks.locked`):
tasks of a SLURM array writing into one output folder at the same time each replace only the
rows of their own images (keyed by input path). A run id is ``YYYYMMDD-HHMMSS_<8 hex>`` (UTC).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import uuid
from datetime import datetime, timezone
from pathlib import Path

from l2s_pipelines.bids_app.derivatives import atomic_write_text, write_json
from l2s_pipelines.bids_app.locks import locked
from l2s_pipelines.bids_app.options import RunOptions
from l2s_pipelines.bids_app.provenance import software_versions
from l2s_pipelines.bids_app.tables import write_table
from l2s_pipelines.errors import InputError

SUMMARY_COLUMNS = ("subject", "session", "input", "status", "error", "runtime_s", "peak_memory_mb", "device",
                   "run_id", "updated")
SUMMARY_DICTIONARY = {
    "subject": "Participant label (without sub-).", "session": "Session label (without ses-).",
    "input": "Input image (absolute path).",
    "status": {"Description": "Latest state of the image.", "Levels": {
        "pending": "selected, not started", "running": "being processed", "finishing": "being published",
        "ok": "segmented and published", "skipped": "outputs already complete (nothing redone)",
        "failed": "failed (see error)", "not_run": "not run after --stop-on-first-crash"}},
    "error": "One-line reason of a failure.", "runtime_s": {"Description": "Run time of the image.", "Units": "s"},
    "peak_memory_mb": {"Description": "Peak resident memory of the worker process.", "Units": "MiB"},
    "device": "Device the network ran on.", "run_id": "Invocation that wrote this row (logs/<run_id>/).",
    "updated": "When this row was last written (UTC, ISO 8601).",
}
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """``YYYYMMDD-HHMMSS_<8 hex>`` in UTC: sorts by time, unique across array tasks."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"


def options_to_dict(opts: RunOptions) -> dict:
    """The options as JSON values (paths as strings, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
    return out


def load_config(path) -> RunOptions:
    """Rebuild the :class:`RunOptions` of a run from its ``logs/<run-id>/config.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["options"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable l2s-bids run config ({exc})") from exc
    kwargs = {}
    for f in dataclasses.fields(RunOptions):
        if f.name not in data:
            continue
        value, kind = data[f.name], str(f.type)
        if "Path" in kind and value is not None:
            value = Path(value)
        elif "tuple" in kind:
            value = tuple(value)
        kwargs[f.name] = value
    return RunOptions(**kwargs)


def _rows_frame(rows):
    import pandas as pd

    frame = pd.DataFrame([{c: r.get(c, "") for c in SUMMARY_COLUMNS} for r in rows], columns=list(SUMMARY_COLUMNS))
    frame = frame.replace({"": None})
    for col in ("error", "input"):
        frame[col] = frame[col].map(lambda v: None if v is None else str(v).replace("\t", " ").replace("\n", " "))
    return frame


def _status_doc(rows, **extra) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {**extra, "updated": utcnow(), "total": len(rows), "counts": counts,
            "finished": all(r["status"] not in ("pending", "running", "finishing") for r in rows),
            "images": rows}


class RunLog:
    """The record of one invocation (``logs/<run_id>/``) and its share of the merged logs."""

    def __init__(self, logs_dir, run_id: str | None = None):
        self.logs_dir = Path(logs_dir)
        self.run_id = run_id or new_run_id()
        self.run_dir = self.logs_dir / self.run_id
        self.started = utcnow()
        self._record: dict = {}

    def start(self, opts: RunOptions, command=None) -> Path:
        """Write ``run.json`` (command line, host, versions, threads, memory) and ``config.json``."""
        command = list(command) if command is not None else ["l2s-bids"]
        write_json(self.run_dir / "config.json", {"run_id": self.run_id, "options": options_to_dict(opts)})
        self._record = {
            "RunId": self.run_id, "Started": self.started, "Finished": None, "ExitCode": None,
            "CommandLine": shlex.join(command), "Argv": command, "Host": platform.node(),
            "WorkingDirectory": os.getcwd(), "Versions": software_versions(),
            "Threads": {"nthreads": opts.nprocs, "omp_nthreads": opts.omp_nthreads,
                        "parallel_images": opts.parallel_images,
                        **{v: os.environ.get(v) for v in _THREAD_VARS}},
            "Memory": {"mem_mb": opts.mem_mb, "per_image_mb": opts.job_mem_mb or None},
            "Config": "config.json"}
        return write_json(self.run_dir / "run.json", self._record)

    def update(self, rows: list[dict]) -> None:
        """This run's ``status.json``, then the merged ``logs/status.json`` and summary."""
        stamped = [{**r, "run_id": self.run_id, "updated": utcnow()} for r in rows]
        write_json(self.run_dir / "status.json", _status_doc(stamped, run_id=self.run_id, started=self.started))
        merge_logs(self.logs_dir, stamped)

    def finish(self, rows: list[dict], exit_code: int) -> None:
        """This run's ``run_summary.tsv`` and the end of ``run.json``; the merged logs."""
        self.update(rows)
        write_table(_rows_frame([{**r, "run_id": self.run_id} for r in rows]), self.run_dir / "run_summary.tsv",
                    SUMMARY_DICTIONARY)
        if self._record:
            self._record.update(Finished=utcnow(), ExitCode=int(exit_code))
            write_json(self.run_dir / "run.json", self._record)


def merge_logs(logs_dir, rows: list[dict]) -> list[dict]:
    """Replace the rows of these images (by input path) in ``logs/status.json`` and
    ``logs/run_summary.tsv``, under a lock; returns all merged rows (sorted by input)."""
    logs_dir = Path(logs_dir)
    status = logs_dir / "status.json"
    with locked(logs_dir / ".logs.lock"):
        try:
            old = json.loads(status.read_text(encoding="utf-8")).get("images", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            old = []
        merged = {r.get("input"): r for r in old if isinstance(r, dict)}
        merged.update({r["input"]: r for r in rows})
        images = [merged[k] for k in sorted(merged, key=str)]
        atomic_write_text(status, json.dumps(_status_doc(images), indent=2, default=str) + "\n")
        write_table(_rows_frame(images), logs_dir / "run_summary.tsv", SUMMARY_DICTIONARY)
    return images
