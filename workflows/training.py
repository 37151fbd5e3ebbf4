"""Training as a Pydra workflow: one python task that calls the trainer.

The task takes the training spec as a JSON string (paths and plain values only, so Pydra hashes
it correctly; never tensors) and returns the model package folder, the ``metrics.jsonl`` path
and an error text (empty on success; the text of an :class:`~l2s_pipelines.errors.InputError`
raised while reading the inputs, so the command line can exit with code 2). torch is imported
inside the task only: the parent process never runs torch before the ``cf`` pool forks.

The spec (built by :func:`l2s_pipelines.bids_app.train_cli.build_spec`)::

    {"config": {TrainConfig keyword arguments; None = trainer default},
     "label_maps": [path, ...], "generation_labels": path | None,
     "real_train": [{"subject", "image", "reference"}, ...], "real_val": [...],
     "out_dir": trainer run folder, "model_dir": package folder, "nthreads": int | None}
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from pydra.compose import python, workflow


def _cpus() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", n)))


def train_from_spec(spec: dict) -> dict:
    """Run the trainer on a spec (see the module docstring); returns ``{"model_dir", "metrics"}``.

    Builds ``TrainConfig`` from ``spec["config"]`` (None values left to the trainer's
    defaults; keys the trainer does not know raise InputError), the datasets from the file
    lists, calls :func:`l2s_pipelines.train.trainer.train`, and installs the trained package
    into ``spec["model_dir"]`` when the trainer wrote it elsewhere.
    """
    import torch

    from l2s_pipelines.errors import InputError
    from l2s_pipelines.io.nifti import LabelMapDataset, RealPairDataset
    from l2s_pipelines.train.trainer import TrainConfig, train

    torch.set_num_threads(int(spec.get("nthreads") or _cpus()))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in spec["config"].items() if v is not None}
    for k in ("patch_size", "widths", "planes"):
        if isinstance(given.get(k), list):
            given[k] = tuple(given[k])
    unknown = sorted(set(given) - known)
    if unknown:
        raise InputError(f"options {unknown} are not supported by this trainer (TrainConfig)")
    config = TrainConfig(**given)
    label_maps = LabelMapDataset(spec["label_maps"], voxel_size=config.voxel_size,
                                 generation_labels=spec.get("generation_labels"))

    def pairs(key):
        items = spec.get(key) or []
        if not items:
            return None
        return RealPairDataset([p["image"] for p in items], [p["reference"] for p in items],
                               voxel_size=config.voxel_size,
                               subjects=[p["subject"] for p in items])

    out_dir = Path(spec["out_dir"])
    result = train(config, label_maps=label_maps, real_train=pairs("real_train"),
                   real_val=pairs("real_val"), out_dir=out_dir)
    pkg = Path(getattr(result, "package_dir", None) or result)
    model_dir = Path(spec["model_dir"])
    if pkg.resolve() != model_dir.resolve():
        model_dir.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "manifest.json"):  # weights first (see checkpoint.py)
            shutil.copyfile(pkg / name, model_dir / f".{name}.tmp")
            os.replace(model_dir / f".{name}.tmp", model_dir / name)
    metrics = out_dir / "metrics.jsonl"
    return {"model_dir": str(model_dir), "metrics": str(metrics) if metrics.is_file() else ""}


def _train_task(spec_json: str) -> tuple[str, str, str]:
    """Train from a JSON spec; returns (model_dir, metrics path, input error text or "")."""
    from l2s_pipelines.errors import InputError

    try:
        out = train_from_spec(json.loads(spec_json))
    except InputError as exc:
        return "", "", str(exc)
    return out["model_dir"], out["metrics"], ""


#: Pydra task: ``TrainModel(spec_json=...)`` -> outputs ``model_dir``, ``metrics``, ``error``.
TrainModel = python.define(_train_task, outputs=["model_dir", "metrics", "error"], name="TrainModel")


def init_train_wf(*, spec: dict, name: str = "train_wf"):
    """Build the training workflow: one :data:`TrainModel` task.

    Parameters
    ----------
    spec : dict
        Training spec (see the module docstring); paths and plain JSON values only.
    name : str
        Workflow name.

    Outputs: ``model_dir`` (package folder), ``metrics`` (path of ``metrics.jsonl`` or ""),
    ``error`` (input error text, "" on success).

    Example
    -------
    >>> wf = init_train_wf(spec={"config": {"method": "synthseg", "steps": 2},
    ...                          "label_maps": ["/data/seg01.nii.gz"], "real_train": [],
    ...                          "real_val": [], "out_dir": "/tmp/m/training",
    ...                          "model_dir": "/tmp/m"})
    >>> type(wf).__name__
    'TrainWf'
    """
    spec_json = json.dumps(spec, sort_keys=True)

    @workflow.define(outputs=["model_dir", "metrics", "error"], name="TrainWf")
    def TrainWf(spec_json: str):
        node = workflow.add(TrainModel(spec_json=spec_json), name="train")
        return node.model_dir, node.metrics, node.error

    return TrainWf(spec_json=spec_json)


def clean_stale(work_dir: Path) -> None:
    """Remove ``*.lock`` and ``_error.pklz`` files left by killed or failed runs in ``work_dir``."""
    for pattern in ("*.lock", "_error.pklz"):
        for f in Path(work_dir).rglob(pattern):
            f.unlink(missing_ok=True)


def run_train_wf(spec: dict, *, plugin: str = "cf", work_dir, sbatch_args: str = "") -> dict:
    """Run :func:`init_train_wf` through Pydra's Submitter with worker ``plugin``.

    The task always reruns (the trainer itself resumes from ``spec["out_dir"]``), so a
    deleted output is rebuilt rather than served from Pydra's cache. Returns
    ``{"model_dir", "metrics"}``; raises InputError for input errors found by the task and
    RuntimeError with Pydra's error text when training failed.
    """
    from pydra.engine.submitter import Submitter

    from l2s_pipelines.errors import InputError

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(work_dir)
    kwargs = {"n_procs": 1} if plugin == "cf" else {"sbatch_args": sbatch_args} if plugin == "slurm" else {}
    with Submitter(worker=plugin, cache_root=work_dir, **kwargs) as sub:
        res = sub(init_train_wf(spec=spec), rerun=True, raise_errors=False)
    if res.errored:
        raise RuntimeError(_error_text(res.errors))
    if res.outputs.error:
        raise InputError(res.outputs.error)
    return {"model_dir": res.outputs.model_dir, "metrics": res.outputs.metrics}


def _error_text(errors) -> str:
    if isinstance(errors, dict):
        tb = errors.get("error message") or errors.get("errors") or errors
        return "".join(tb) if isinstance(tb, list) else str(tb)
    return str(errors)
