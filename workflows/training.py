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

import numpy as np

from pydra.compose import python, workflow


def _cpus() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", n)))


class MultiPlaneSampler:
    """Draws 2D samples from several planes: each batch element's plane is drawn uniformly.

    ``datasets``: one ``LabelMapDataset`` or ``RealPairDataset`` per plane (sharing volumes;
    see :func:`_per_plane`). ``sample_batch`` returns what the datasets return (a label-map
    tensor ``(B, 1, H, W)``, or an ``(image, target)`` pair), elements grouped by plane.
    Elements of the planes in ``merged_planes`` (sagittal: :mod:`l2s_pipelines.lr_merge`) have
    left/right-merged targets: pairs come with merged-encoded targets (``flip_lut`` needed), and
    label maps come as ``(maps, merge_lr (B,) bool)`` so that the generator encodes them.
    """

    def __init__(self, datasets, merged_planes=(), flip_lut=None):
        self.datasets = list(datasets)
        self.subjects = getattr(self.datasets[0], "subjects", None)
        self.merged = [getattr(d, "plane", None) in set(merged_planes) for d in self.datasets]
        self.flip_lut = flip_lut

    def __len__(self) -> int:
        return len(self.datasets[0])

    def sample_batch(self, batch_size, generator, patch_size=None):
        import torch

        which = torch.randint(0, len(self.datasets), (batch_size,), generator=generator)
        counts = torch.bincount(which, minlength=len(self.datasets)).tolist()
        parts = [self.datasets[k].sample_batch(n, generator, patch_size) for k, n in enumerate(counts) if n]
        merged = [m for m, n in zip(self.merged, counts) if n]  # per part: left/right-merged plane
        pair = isinstance(parts[0], tuple)
        parts = [p if pair else (p,) for p in parts]
        if patch_size is None:  # planes give slices (or blocks) of different shapes: zero-pad, centred
            shape = [max(p[0].shape[d] for p in parts) for d in range(2, parts[0][0].dim())]
            parts = [tuple(_pad_to(t, shape) for t in p) for p in parts]
        if pair:
            from l2s_pipelines.lr_merge import encode_merged
            parts = [(x, encode_merged(y, self.flip_lut)) if m else (x, y) for (x, y), m in zip(parts, merged)]
        out = tuple(torch.cat(items) for items in zip(*parts))
        if pair:
            return out
        if not any(self.merged):
            return out[0]
        return out[0], torch.cat([torch.full((len(p[0]),), m) for p, m in zip(parts, merged)])


def _pad_to(t, shape):
    """Zero-pad the last ``len(shape)`` dims of ``t`` to ``shape`` (centred)."""
    from torch.nn import functional as F

    pads = []
    for want, have in zip(reversed(shape), reversed(t.shape[-len(shape):])):
        pads += [(want - have) // 2, want - have - (want - have) // 2]
    return F.pad(t, pads) if any(pads) else t


def _per_plane(dataset, planes, merged_planes=(), flip_lut=None):
    """Copies of a 2D ``dataset`` that share its volumes, one per plane (slice index rebuilt),
    as one :class:`MultiPlaneSampler` (``merged_planes``, ``flip_lut``: see there)."""
    import copy

    from l2s_pipelines.io import nifti

    out = []
    masks = None
    for plane in planes:
        if plane == dataset.plane:
            out.append(dataset)
            continue
        clone = copy.copy(dataset)
        if masks is None:
            vols = getattr(dataset, "volumes", None) or getattr(dataset, "targets", None)
            masks = [v > 0 for v in vols]  # label values / channel indices; IGNORE_INDEX < 0
        clone.plane, clone.index = plane, nifti._SliceIndex(masks, plane, 0.25)
        out.append(clone)
    return MultiPlaneSampler(out, merged_planes, flip_lut)


def _train_config(spec: dict):
    """``TrainConfig`` from ``spec["config"]``: None values keep the trainer's defaults."""
    from l2s_pipelines.errors import InputError
    from l2s_pipelines.nn.unet import UNetConfig
    from l2s_pipelines.train.config import TrainConfig

    cfg = {k: v for k, v in spec["config"].items() if v is not None}
    planes = cfg.pop("planes", None) or ["axial"]
    cfg["plane"] = planes[0]
    vox = cfg.pop("voxel_size", 1.0)
    cfg["voxel_size_mm"] = (float(vox),) * 3
    unet = {k: v for k, v in (("widths", cfg.pop("widths", None)), ("norm", cfg.pop("norm", None))) if v}
    if unet:
        cfg["unet"] = dict(UNetConfig().to_dict(), **unet)
    cfg.pop("resume", None)
    if cfg.get("device", "auto") == "auto":  # record the device actually used
        import torch
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if "patch_size" in cfg:
        cfg["patch_size"] = tuple(cfg["patch_size"])
    elif cfg.get("ndim") == 3:
        cfg["patch_size"] = (96, 96, 96)
    cfg["tune_subjects"] = tuple(p["subject"] for p in spec.get("real_train") or [])
    cfg["command"] = spec.get("command", "")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if spec.get("generation_labels") and "generation_labels" in known:  # passed when supported
        cfg["generation_labels"] = spec["generation_labels"]
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise InputError(f"options {unknown} are not supported by this trainer (TrainConfig)")
    try:
        return TrainConfig(**cfg), planes
    except ValueError as exc:
        raise InputError(f"training options: {exc}") from exc


def train_from_spec(spec: dict) -> dict:
    """Run the trainer on a spec (see the module docstring); returns ``{"model_dir", "metrics"}``.

    Builds the ``TrainConfig`` (:func:`_train_config`) and the datasets, calls
    :func:`l2s_pipelines.train.trainer.train` (resuming when ``spec["config"]["resume"]``),
    installs the trained package into ``spec["model_dir"]`` and saves example images
    (``examples.npz``, see :func:`save_examples_from_run`) beside it.
    """
    import torch

    from l2s_pipelines.io.nifti import LabelMapDataset, RealPairDataset
    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.planes import LR_MERGED_PLANES
    from l2s_pipelines.train.trainer import train

    torch.set_num_threads(int(spec.get("nthreads") or _cpus()))
    config, planes = _train_config(spec)
    table = LabelTable.default()
    kw = {"voxel_size": config.voxel_size_mm, "ndim": config.ndim, "plane": config.plane}
    depth = 0  # several input slices: label blocks deep enough for out-of-plane rotations
    if config.in_slices > 1:
        from l2s_pipelines.synth.slab import slab_depth
        depth = slab_depth(config.in_slices, max(config.patch_size),
                           float(config.generator.get("max_rotation_deg", 15.0)),
                           float(config.generator.get("max_zoom", 0.2)))
    label_maps = LabelMapDataset(spec["label_maps"], slab_depth=depth, **kw) if spec.get("label_maps") else None

    def pairs(key):
        items = spec.get(key) or []
        if not items:
            return None
        ds = RealPairDataset([p["image"] for p in items], [p["reference"] for p in items], table,
                             slices=config.in_slices, **kw)
        ds.subjects = [p["subject"] for p in items]
        return ds

    real_train, real_val = pairs("real_train"), pairs("real_val")
    if config.ndim == 2 and len(planes) > 1:
        merged = [p for p in planes if p in LR_MERGED_PLANES]
        label_maps, real_train, real_val = (None if d is None else _per_plane(d, planes, merged, table.channel_flip_lut())
                                            for d in (label_maps, real_train, real_val))
    result = train(config, label_maps=label_maps, real_train=real_train, real_val=real_val,
                   out_dir=Path(spec["out_dir"]), resume=bool(spec["config"].get("resume")))
    model_dir = Path(spec["model_dir"])
    _install_package(Path(result.package_dir), model_dir)
    save_examples_from_run(model_dir / "examples.npz", config, table, label_maps, real_val or real_train,
                           result.augmenter, step=result.steps)
    return {"model_dir": str(model_dir), "metrics": str(result.metrics_path)}


def _install_package(src: Path, dst: Path) -> None:
    """Copy ``model.safetensors`` then ``manifest.json`` from ``src`` into ``dst`` (atomic renames)."""
    if src.resolve() == dst.resolve():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "manifest.json"):  # weights first (see checkpoint.py)
        shutil.copyfile(src / name, dst / f".{name}.tmp")
        os.replace(dst / f".{name}.tmp", dst / name)


def save_examples(path: str | os.PathLike, *, synthetic, augmented, real, real_labels=None,
                  synthetic_labels=None, step: int | None = None) -> Path:
    """Store example slices for the report as ``.npz``.

    Parameters
    ----------
    synthetic, augmented : arrays ``(N, H, W)`` float in the generator's [0, 1] range: generator
        output and the augmenter's output for the same draws (``augmented`` = ``synthetic`` for
        methods without an augmenter).
    real : array ``(M, H', W')`` float, preprocessed real slices (intensity-normalised).
    real_labels, synthetic_labels : optional label-value arrays of the same shapes.
    step : training step the examples were drawn at.
    """
    arrays = {"synthetic": np.asarray(synthetic, np.float32), "augmented": np.asarray(augmented, np.float32),
              "real": np.asarray(real, np.float32), "step": np.array(-1 if step is None else step)}
    if real_labels is not None:
        arrays["real_labels"] = np.asarray(real_labels, np.int16)
    if synthetic_labels is not None:
        arrays["synthetic_labels"] = np.asarray(synthetic_labels, np.int16)
    path = Path(path)
    np.savez_compressed(path, **arrays)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def save_examples_from_run(path: Path, config, table, label_maps, real, augmenter, *, step: int,
                           n: int = 4, seed: int = 12345) -> Path | None:
    """Draw ``n`` synthetic images (and the augmenter's output for them) and ``n`` real slices
    with a fixed seed, and store them for the training report (middle axial slice in 3D)."""
    import torch

    from l2s_pipelines.train.trainer import synthetic_source

    if label_maps is None and real is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    patch = tuple(config.patch_size)

    def as2d(x):  # (B, C, *sp) or (B, *sp) -> (B, H, W) numpy (the middle channel: the segmented slice)
        x = x[:, x.shape[1] // 2] if x.dim() == config.ndim + 2 else x
        return (x[..., x.shape[-1] // 2] if config.ndim == 3 else x).detach().cpu().float().numpy()

    synth = aug = np.zeros((0, 1, 1), np.float32)
    if label_maps is not None:  # the trainer's own source (generator, slabs, merged planes)
        x_s, _ = synthetic_source(config, label_maps, table, "cpu").sample(n, gen)
        synth = as2d(x_s)
        if augmenter is not None:
            with torch.no_grad():
                aug = as2d(augmenter.cpu()(x_s, gen))
        else:
            aug = synth
    real_x = as2d(real.sample_batch(n, gen, patch)[0]) if real is not None else np.zeros((0, 1, 1), np.float32)
    return save_examples(path, synthetic=synth, augmented=aug, real=real_x, step=step)


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


def run_train_wf(spec: dict, *, plugin: str = "cf", work_dir, sbatch_args: str = "") -> dict:
    """Run :func:`init_train_wf` through Pydra's Submitter with worker ``plugin``.

    The task always reruns (the trainer itself resumes from ``spec["out_dir"]``), so a
    deleted output is rebuilt rather than served from Pydra's cache. ``work_dir`` (Pydra's
    cache; l2s-train passes ``WORK_DIR/pydra``) is claimed and cleaned of stale locks and error
    records by :func:`~l2s_pipelines.workflows.execution.clean_work_dir` (only Pydra's own
    layout: nothing else is ever removed, and a folder holding foreign files is refused). Returns
    ``{"model_dir", "metrics"}``; raises InputError for input errors found by the task and
    RuntimeError with Pydra's error text when training failed.
    """
    from pydra.engine.submitter import Submitter

    from l2s_pipelines.errors import InputError

    from l2s_pipelines.workflows.execution import clean_work_dir

    cache = Path(work_dir)
    clean_work_dir(cache)
    kwargs = {"n_procs": 1} if plugin == "cf" else {"sbatch_args": sbatch_args} if plugin == "slurm" else {}
    with Submitter(worker=plugin, cache_root=cache, **kwargs) as sub:
        res = sub(init_train_wf(spec=spec), rerun=True, raise_errors=False)
    if res.errored:
        raise RuntimeError(_error_text(res.errors))
    if res.outputs.error:
        raise InputError(res.outputs.error)
    return {"model_dir": res.outputs.model_dir, "metrics": res.outputs.metrics}


def _error_text(errors) -> str:
    if isinstance(errors, dict):
        tb = errors.get("error message") or errors.get("errors") or errors
        text = "".join(tb) if isinstance(tb, list) else str(tb)
    else:
        text = str(errors)
    return text if len(text) < 3000 else "...\n" + text[-3000:]  # the cause is at the end
