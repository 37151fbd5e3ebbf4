"""Participant and group drivers of ``l2s-bids``.

Participant level: check arguments, worker options, templates of ``--output-spaces`` and dataset
(exit 2 before anything is written), clean stale Pydra state under the work folder, skip images
whose derivatives are complete, and run one single-image workflow per remaining image through the
chosen Pydra worker. Each successful result is published (atomically, from its cached result
folder) as soon as its workflow has finished, while the others run, and a subject's report is
written once its last image is done. ``logs/run_summary.tsv`` and ``logs/status.json`` are
updated as images finish; this invocation's record is ``logs/<run-id>/``
(:mod:`~l2s_pipelines.bids_app.runlog`).
One failing image never stops the others unless ``--stop-on-first-crash``.

Exit codes: 0 everything asked for succeeded (or was already complete); 2 bad arguments or
dataset; 3 some images failed; 4 all images failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from pathlib import Path

from l2s_pipelines.bids_app.cli import EXIT_ALL_FAILED, EXIT_BAD_INPUT, EXIT_OK, EXIT_SOME_FAILED  # noqa: F401
from l2s_pipelines.errors import InputError, ModelError

LOG = logging.getLogger("l2s.run")
POLL_S = 0.5
#: States that count as "this image's job is over" for the progress display.
_COUNTED = ("finishing", "ok", "failed", "skipped", "not_run")
#: Row states after which an image changes no more in this run.
_FINAL = ("ok", "skipped", "failed", "not_run")


def run(opts, command=None) -> int:
    """Run one ``l2s-bids`` invocation; returns the exit code. ``InputError``/``ModelError``
    raised here are dataset-level problems (the CLI maps them to exit code 2). ``command``
    (the argument list) is recorded in ``logs/<run-id>/run.json``."""
    if opts.analysis_level == "group":
        from l2s_pipelines.bids_app.group import run_group

        if not opts.output_dir.is_dir():
            raise InputError(f"{opts.output_dir}: output folder does not exist; run the participant level first")
        return run_group(opts.output_dir, opts)
    return run_participant(opts, command=command)


def resolve_model(model_dir) -> tuple[Path, dict]:
    """Model folder and manifest, checked without torch: manifest schema and labels, weights
    file complete, sha256 equal to the manifest's. Raises :class:`ModelError` naming the file."""
    from l2s_pipelines.io import checkpoint as ck

    path = Path(model_dir) if model_dir is not None else ck.default_model_dir()
    manifest = ck.read_manifest(path)
    weights = ck.weights_path(path, manifest)
    ck.check_safetensors_file(weights)
    if ck.sha256_file(weights) != manifest["weights"].get("sha256"):
        raise ModelError(f"{weights}: sha256 mismatch with {path / ck.MANIFEST_NAME}; the weights "
                         "file is corrupt or was replaced")
    return path.absolute(), manifest


class Board:
    """Per-image status: a progress bar on a terminal, log lines otherwise, and the status
    files of ``runlog`` (this run's and the merged ones) rewritten on every change."""

    def __init__(self, images, runlog):
        self.rows = [{"subject": im.subject, "session": im.session, "input": im.path, "status": "pending",
                      "error": "", "runtime_s": "", "peak_memory_mb": "", "device": ""} for im in images]
        self.runlog, self._lock = runlog, threading.Lock()
        #: Images whose result has been published or recorded as failed (by :func:`_collect`).
        self.collected: set[int] = set()
        #: Subjects whose report has been written in this run.
        self.reported: set[str] = set()
        self.collect_lock = threading.Lock()
        self._t0 = [None] * len(self.rows)
        self._bar, self._counted = None, set()
        self._on_close = contextlib.ExitStack()
        if sys.stderr.isatty():
            from tqdm.contrib.logging import logging_redirect_tqdm

            from l2s_pipelines.system import terminal_bar

            self._bar = terminal_bar(len(self.rows), unit="image", desc="l2s-bids")
            self._on_close.enter_context(logging_redirect_tqdm())  # log lines above the bar, not on it

    def set(self, i: int, status: str, **fields) -> None:
        with self._lock:
            row = self.rows[i]
            if row["status"] == status and not fields:
                return
            if status == "running" and self._t0[i] is None:
                self._t0[i] = time.monotonic()
            if status in ("ok", "failed") and not row.get("runtime_s") and self._t0[i] is not None:
                row["runtime_s"] = round(time.monotonic() - self._t0[i], 1)
            row.update(status=status, **fields)
            label = f"sub-{row['subject']}" + (f" ses-{row['session']}" if row["session"] else "")
            if status == "running" and self._bar is None:
                LOG.info("%s %s: started", label, Path(row["input"]).name)
            if status in _COUNTED and i not in self._counted:
                self._counted.add(i)
                if self._bar is not None:
                    self._bar.set_postfix_str(f"{label}: {status}", refresh=False)
                    self._bar.update(1)
                else:
                    LOG.info("[%d/%d] %s %s: %s", len(self._counted), len(self.rows), label,
                             Path(row["input"]).name, status)
            if status in ("failed", "not_run") and row["error"]:
                LOG.warning("%s %s: %s", label, Path(row["input"]).name, row["error"])
            self._write_status()

    def _write_status(self) -> None:
        self.runlog.update(self.rows)

    def exit_code(self) -> int:
        """0 when no image failed, 4 when all did, else 3."""
        failed = sum(r["status"] in ("failed", "not_run") for r in self.rows)
        if failed == 0:
            return EXIT_OK
        return EXIT_ALL_FAILED if failed == len(self.rows) else EXIT_SOME_FAILED

    def close(self) -> None:
        self._on_close.close()
        if self._bar is not None:
            self._bar.close()


def _watch(board: Board, tasks: dict[int, object], images, opts, stop: threading.Event) -> None:
    """Poll the Pydra cache folders of the image workflows: mark an image running when its job
    lock appears, and publish it (or record its error) as soon as its workflow has settled, so
    that results appear while the run goes on. The main thread collects whatever is left when
    the Submitter returns; a collection that raises here is left to it."""
    from l2s_pipelines.workflows.execution import job_state

    while not stop.wait(POLL_S):
        for i, task in tasks.items():
            if board.rows[i]["status"] not in ("pending", "running"):  # collected, or left to the end
                continue
            state = job_state(task, opts.work_dir)
            if state in ("done", "failed"):
                board.set(i, "running")  # logs its start if it ran between two polls
                try:
                    _collect(board, i, task, images[i], opts, final=False)
                except Exception as exc:  # noqa: BLE001 (_NotYet or a bug: retried by the main thread)
                    board.set(i, "finishing")
                    LOG.debug("image %d: collection deferred: %s", i, exc)
            elif state == "running":
                board.set(i, "running")


class _NotYet(Exception):
    """The watcher leaves an image to the main thread's final collection."""


def _collect(board: Board, i: int, task, im, opts, final: bool = True) -> None:
    """Publish image ``i`` from its cached result, or record its error; once per image, whichever
    of the watcher and the main thread comes first. Not ``final`` (the watcher, while the run
    goes on), a missing result or a publishing error raises :class:`_NotYet` instead of failing
    the image (a shared file system may show the result before all of it): the final collection
    retries, and publishing again is safe (atomic writes). A task error recorded by Pydra fails
    the image at once."""
    with board.collect_lock:
        if i in board.collected:
            return
        _publish_or_fail(board, i, task, im, opts, final)
        board.collected.add(i)
        subject = board.rows[i]["subject"]
        if all(r["status"] in _FINAL for r in board.rows if r["subject"] == subject):
            _subject_report(board, subject, opts)  # the subject's last image: its report now


def _publish_or_fail(board: Board, i: int, task, im, opts, final: bool) -> None:
    from l2s_pipelines.bids_app.derivatives import publish_image_results
    from l2s_pipelines.workflows.execution import job_error, load_job_result

    result = load_job_result(task, opts.work_dir)
    if result is None and not final:
        raise _NotYet("no readable result yet")
    if result is None or result.errored or result.outputs is None:
        board.set(i, "failed", error=job_error(task, opts.work_dir) if result is not None else "not run (no result)")
        return
    out_dir = Path(result.outputs.out_dir)
    spaces_dir = getattr(result.outputs, "spaces_dir", None)
    try:
        info = json.loads((out_dir / "info.json").read_text(encoding="utf-8"))
        publish_image_results(out_dir, opts.output_dir, entities=im.entities, source_file=im.path,
                              save_probseg=opts.save_probseg, bids_dir=opts.bids_dir,
                              spaces_dir=Path(spaces_dir) if spaces_dir else None,
                              spaces=opts.output_spaces)
    except Exception as exc:  # a publishing problem fails this image only
        if not final:
            raise _NotYet(f"publishing: {type(exc).__name__}: {exc}") from exc
        board.set(i, "failed", error=f"publishing: {type(exc).__name__}: {exc}")
        return
    board.set(i, "ok", runtime_s=info.get("runtime_s", ""), peak_memory_mb=info.get("peak_memory_mb", ""),
              device=info.get("device", ""))


def _execute(board: Board, todo: list[int], tasks: dict, images, opts) -> None:
    """Run the image workflows (all at once, or one by one with --stop-on-first-crash)."""
    from l2s_pipelines.workflows.execution import make_submitter, pool_processes
    from l2s_pipelines.workflows.participant import init_participant_wf

    batches = [[i] for i in todo] if opts.stop_on_first_crash else [todo]
    nprocs = pool_processes(opts.parallel_images, max((len(b) for b in batches), default=1))
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(board, {i: tasks[i] for i in todo}, images, opts, stop),
                               daemon=True)
    watcher.start()
    try:
        with make_submitter(opts.plugin, work_dir=opts.work_dir, nprocs=nprocs,
                            plugin_args=opts.plugin_args) as sub:
            for batch in batches:
                wf, _ = init_participant_wf(image_tasks=[tasks[i] for i in batch],
                                            entities=[images[i].entities for i in batch],
                                            job_per_image=opts.job_per_image(len(batch)),
                                            cache_root=opts.work_dir)
                try:
                    sub(wf, raise_errors=False)
                except Exception as exc:  # errors of single images are read from their own records
                    LOG.debug("participant workflow reported: %s", exc)
                for i in batch:
                    _collect(board, i, tasks[i], images[i], opts)
                if opts.stop_on_first_crash and any(board.rows[i]["status"] == "failed" for i in batch):
                    for j in todo[todo.index(batch[-1]) + 1:]:
                        board.set(j, "not_run", error="not run: --stop-on-first-crash after an earlier failure")
                    break
    finally:
        stop.set()
        watcher.join()


def _subject_report(board: Board, subject: str, opts) -> None:
    """Write ``sub-<subject>.html`` (its images' failures listed); a report that cannot be
    written fails the subject's successful images."""
    from l2s_pipelines.bids_app.report import write_subject_report

    rows = [(i, r) for i, r in enumerate(board.rows) if r["subject"] == subject]
    errors = [f"{Path(r['input']).name}: {r['error']}" for _, r in rows if r["status"] in ("failed", "not_run")]
    board.reported.add(subject)
    try:
        write_subject_report(opts.output_dir, subject, errors=errors)
    except Exception as exc:
        LOG.error("sub-%s: subject report failed: %s", subject, exc)
        for i, r in rows:
            if r["status"] == "ok":
                board.set(i, "failed", error=f"report: {type(exc).__name__}: {exc}")


def _subject_reports(board: Board, opts) -> None:
    """The reports of the subjects not yet reported (by :func:`_collect`, as their last image
    finished)."""
    for subject in dict.fromkeys(r["subject"] for r in board.rows):
        if subject not in board.reported:
            _subject_report(board, subject, opts)


def _image_tasks(images, model_dir: Path, manifest: dict, opts, resolution: int = 1) -> dict:
    from l2s_pipelines.workflows.participant import ImageOptions, init_single_image_wf

    options = ImageOptions.from_manifest(
        model_dir=model_dir, manifest=manifest, device=opts.device, save_probseg=opts.save_probseg,
        seed=opts.random_seed, nthreads=opts.omp_nthreads, mem_mb=opts.job_mem_mb,
        output_spaces=opts.output_spaces, suffix=opts.input_suffix, resolution=resolution)
    tuned = set(manifest.get("training", {}).get("tune_subjects", []) or [])
    return {i: init_single_image_wf(source=im.path, reference=im.reference, options=options,
                                    used_for_tuning=f"sub-{im.subject}" in tuned or im.subject in tuned)
            for i, im in enumerate(images)}


def template_resolution(spaces, preferred=(1, 2)) -> int:
    """The first TemplateFlow resolution (``res-01``, else ``res-02``) whose files are present for
    every template in ``spaces`` (1 when there are none). Raises the InputError of
    :func:`~l2s_pipelines.workflows.templates.get_template_files` for ``res-01`` (naming the
    missing file, TEMPLATEFLOW_HOME and the pre-fetch command) when no resolution is complete."""
    from l2s_pipelines.workflows.templates import get_template_files

    first_error = None
    for res in preferred:
        try:
            for template_id in spaces:
                get_template_files(template_id, res)
            return res
        except InputError as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return preferred[0]


def run_participant(opts, command=None) -> int:
    """The participant level (see the module docstring); returns the exit code."""
    from l2s_pipelines.bids_app import derivatives as deriv
    from l2s_pipelines.bids_app import queries
    from l2s_pipelines.bids_app.options import check_paths
    from l2s_pipelines.bids_app.runlog import RunLog
    from l2s_pipelines.model_card import accuracy_warning
    from l2s_pipelines.workflows.execution import clean_work_dir, worker_spec
    from l2s_pipelines.workflows.participant import boilerplate

    check_paths(opts)
    worker_spec(opts.plugin, opts.plugin_args, nprocs=opts.parallel_images)  # unknown --plugin-args: exit 2
    resolution = template_resolution(opts.output_spaces)  # a missing template: exit 2, nothing run
    model_dir, manifest = resolve_model(opts.model_dir)
    accuracy_note = accuracy_warning(manifest)
    if accuracy_note:
        LOG.warning(accuracy_note)
    layout = queries.load_layout(opts.bids_dir, validate=not opts.skip_bids_validation)
    images = queries.collect_images(layout, suffix=opts.input_suffix, participants=opts.participant_label,
                                    sessions=opts.session_label, filters=opts.bids_filters)
    roots = queries.reference_roots(opts.bids_dir, opts.output_dir, opts.reference_derivatives)
    images = queries.attach_references(images, roots, required=opts.reference_derivatives is not None)
    LOG.info("%d image(s) selected, %d with a reference", len(images), sum(bool(im.reference) for im in images))
    if opts.boilerplate_only:
        text = boilerplate(manifest=manifest, suffix=opts.input_suffix)
        deriv.atomic_write_text(opts.logs_dir / "CITATION.md", text)
        print(text)
        return EXIT_OK
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    deriv.write_dataset_description(opts.output_dir, bids_dir=opts.bids_dir, model_manifest=manifest)
    deriv.write_bidsignore(opts.output_dir)
    deriv.clean_stale_temporaries(opts.output_dir)
    runlog = RunLog(opts.logs_dir)
    runlog.start(opts, command)
    board = Board(images, runlog)
    try:
        if opts.reports_only:
            for i, im in enumerate(images):
                complete = deriv.image_is_complete(opts.output_dir, im.entities, spaces=opts.output_spaces)
                board.set(i, "skipped" if complete else "failed", error="" if complete else "no outputs to report")
        else:
            clean_work_dir(opts.work_dir)
            todo = []
            for i, im in enumerate(images):
                other = deriv.conflicting_source(opts.output_dir, im.entities, im.path)
                if other:
                    board.set(i, "failed", error=f"{deriv.derivative_prefix(opts.output_dir, im.entities)}_dseg.json "
                              f"holds the segmentation of {other}, not of {im.path}; refusing to overwrite it "
                              "(use another OUTPUT_DIR per input contrast)")
                elif deriv.image_is_complete(opts.output_dir, im.entities, spaces=opts.output_spaces):
                    board.set(i, "skipped", error="")
                else:
                    todo.append(i)
            if todo:
                _execute(board, todo, _image_tasks(images, model_dir, manifest, opts, resolution), images, opts)
        _subject_reports(board, opts)
    finally:
        board.close()
        runlog.finish(board.rows, board.exit_code())
    failed = sum(r["status"] in ("failed", "not_run") for r in board.rows)
    LOG.info("done: %d ok, %d already complete, %d failed; summary in %s (this run: %s)",
             sum(r["status"] == "ok" for r in board.rows), sum(r["status"] == "skipped" for r in board.rows),
             failed, opts.logs_dir / "run_summary.tsv", runlog.run_dir)
    return board.exit_code()
