"""Training loop for Learn2Synth and its baselines, with the same network, budget and evaluation.

Methods (``TrainConfig.method``):

- ``l2s-parametric`` / ``l2s-nonparametric``: ``warmup_steps`` plain synthetic steps (augmenter
  applied at its start values, no theta update), then Learn2Synth iterations
  (:func:`l2s_pipelines.train.hypergrad.l2s_iteration`). Real scans only give gradients to theta.
  ``hyper_every = k > 1`` (a deviation from the paper, off by default) makes only every k-th
  step a Learn2Synth iteration and the others plain synthetic steps through the current augmenter.
- ``synthseg``: plain synthetic steps. ``oracle``: synthetic images passed through the true
  corruption (``oracle_noise_sigma`` or a ``corruption`` callable).
- ``mixed``: after the warm-up, a proportion ``mix_proportion`` of every batch is real.
- ``finetune``: ``steps`` synthetic steps, then ``finetune_steps`` steps on real scans only.
- ``supervised``: real scans only.

Each step is logged to ``out_dir/metrics.jsonl``; checkpoints go to ``out_dir/checkpoint``
(safetensors + JSON); the final model package to ``out_dir/model``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from l2s_pipelines.augment import build_augmenter
from l2s_pipelines.lr_merge import decode_for_dice
from l2s_pipelines.nn.losses import get_loss, mean_dice
from l2s_pipelines.nn.unet import UNet, UNetConfig
from l2s_pipelines.train import NEEDS_REAL
from l2s_pipelines.train.config import TrainConfig
from l2s_pipelines.train.data import CorruptedSyntheticPairs, NoiseCorruption, SyntheticSource
from l2s_pipelines.train.functional_optim import make_optimizer, step_module, step_module_
from l2s_pipelines.train.hypergrad import l2s_iteration
from l2s_pipelines.train.progress import MetricsLog, Progress
from l2s_pipelines.train.state import has_training_state, load_training_state, save_training_state


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    model: UNet
    augmenter: torch.nn.Module | None
    package_dir: Path
    metrics_path: Path
    final_val_dice: float | None
    augmentation: dict[str, float]
    steps: int


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _label_table(label_table):
    from l2s_pipelines.labels import LabelTable
    return label_table or LabelTable.default()


def synthetic_source(config: TrainConfig, label_maps, label_table, device) -> SyntheticSource | None:
    """The run's synthetic pairs: label maps through the configured generator (patch ``(P, P)``,
    or with ``in_slices`` a 3D slab generator); None without label maps."""
    if label_maps is None:
        return None
    from l2s_pipelines.synth import SynthConfig, SynthGenerator
    from l2s_pipelines.synth.slab import SlabGenerator
    gcfg = dict(config.generator)
    slab = config.in_slices > 1  # neighbouring slices: synthesised as a 3D patch (P, P, k)
    gcfg["patch_size"] = list(config.patch_size) + ([config.in_slices] if slab else [])
    gcfg.setdefault("voxel_size_mm", float(config.voxel_size_mm[0]))
    gcfg.setdefault("percentiles", list(config.percentiles))
    synth = SynthGenerator(SynthConfig.from_dict(gcfg), label_table, generation=config.generation_labels)
    return SyntheticSource(label_maps, SlabGenerator(synth) if slab else synth, device)


class _Run:
    """State of one training run (networks, optimisers, data, RNG); one method per step kind."""

    def __init__(self, config: TrainConfig, label_maps, real_train, real_val, corruption, label_table):
        c = self.config = config
        self.device = _resolve_device(c.device)
        self.table = _label_table(label_table)
        torch.manual_seed(c.seed)  # weight initialisation only; data uses self.gen
        arch = dict(c.unet, ndim=c.ndim, out_channels=len(self.table.values), in_channels=c.in_slices)
        self.model = UNet(UNetConfig.from_dict(arch)).to(self.device)
        self.augmenter = None
        if c.method.startswith("l2s-"):
            self.augmenter = build_augmenter(c.method[4:], c.ndim, c.augmenter).to(self.device)
        self.seg_opt = make_optimizer(c.inner_optimizer, c.lr)
        self.aug_opt = make_optimizer("adam", c.lr_theta)
        self.gen = torch.Generator(device=self.device).manual_seed(c.seed)
        self.flip_lut = self.table.channel_flip_lut().to(self.device)
        self.loss_fn = get_loss(c.loss, self.flip_lut)  # sagittal slices: left/right-merged targets
        self.synthetic = synthetic_source(c, label_maps, self.table, self.device)
        if corruption is None and c.oracle_noise_sigma is not None:
            corruption = NoiseCorruption(c.oracle_noise_sigma)
        if c.method == "oracle" and corruption is None:
            raise ValueError("method 'oracle' needs oracle_noise_sigma or a corruption callable")
        self.corruption = corruption if c.method == "oracle" else None
        if c.method != "supervised" and self.synthetic is None:
            raise ValueError(f"method {c.method!r} needs label maps")
        if c.method in NEEDS_REAL and real_train is None:
            raise ValueError(f"method {c.method!r} needs real labelled scans (real_train)")
        self.real_train, self.val = real_train, None
        if real_val is not None:  # fixed validation batch, from its own generator (RNG untouched)
            vgen = torch.Generator(device=self.device).manual_seed(c.seed + 7919)
            x, y = real_val.sample_batch(c.val_size, vgen, tuple(c.patch_size))
            self.val = (x.to(self.device), y.to(self.device))
        self.restart = 0  # step at which Adam restarted from a package's weights (0: never)
        self.synth_val = None
        if c.synth_val_size and self.synthetic is not None:  # fresh synthetic draws, own generator
            sgen = torch.Generator(device=self.device).manual_seed(c.seed + 104729)
            self.synth_val = self.synthetic.sample(c.synth_val_size, sgen)

    # data ----------------------------------------------------------------------------------
    def synth_batch(self, n: int):
        x, y = self.synthetic.sample(n, self.gen)
        if self.corruption is not None:
            x = self.corruption(x, self.gen)
        return x, y

    def real_batch(self, n: int):
        x, y = self.real_train.sample_batch(n, self.gen, tuple(self.config.patch_size))
        return x.to(self.device), y.to(self.device)

    # steps ---------------------------------------------------------------------------------
    def plain_step(self, x, y) -> float:
        """Forward (bf16 autocast when ``amp``), loss in fp32, backward, in-place foreach Adam."""
        names, params = zip(*self.model.named_parameters())
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp == "bf16"):
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y)
        grads = torch.autograd.grad(loss, params)
        step_module_(self.model, self.seg_opt, dict(zip(names, grads)))
        return float(loss.detach())

    def step(self, phase: str, step: int = 0, time_s: float = 0.0) -> dict:
        c = self.config
        self.seg_opt.lr = c.lr_at(step, self.restart, time_s)
        if phase == "l2s":
            x_s, y_s = self.synth_batch(c.batch_size)
            x_r, y_r = self.real_batch(c.batch_size)
            res = l2s_iteration(self.model, self.augmenter, self.seg_opt, x_s, y_s, x_r, y_r,
                                loss_fn=self.loss_fn, alpha=c.alpha, generator=self.gen)
            step_module(self.augmenter, self.aug_opt,
                        {k: p.grad for k, p in self.augmenter.named_parameters() if p.grad is not None})
            return {"synthetic_loss": res.synthetic_loss, "real_loss": res.real_loss}
        if phase == "real":
            return {"real_loss": self.plain_step(*self.real_batch(c.batch_size))}
        n_real = round(c.mix_proportion * c.batch_size) if phase == "mixed" else 0
        x, y = self.synth_batch(c.batch_size - n_real)
        if self.augmenter is not None:
            with torch.no_grad():
                x = self.augmenter(x, self.gen)
        if n_real:
            x_r, y_r = self.real_batch(n_real)
            x, y = torch.cat([x, x_r]), torch.cat([y, y_r])
        return {"synthetic_loss": self.plain_step(x, y)}

    @torch.no_grad()
    def validate(self, batch=None) -> float:
        """Mean over validation images of the mean per-structure hard Dice (background excluded);
        ``batch`` (x, y) defaults to the real validation batch."""
        x, y = self.val if batch is None else batch
        k = len(self.table.values)
        pred = torch.cat([self.model(x[i:i + 1]).argmax(1) for i in range(x.shape[0])])
        pred, y = decode_for_dice(pred, y, self.flip_lut)
        scores = [mean_dice(pred[i], y[i], k) for i in range(x.shape[0])]
        scores = [s for s in scores if s == s]
        return float(sum(scores) / len(scores)) if scores else float("nan")

    def state_kwargs(self) -> dict:
        return dict(segmenter=self.model, augmenter=self.augmenter, seg_opt=self.seg_opt,
                    aug_opt=self.aug_opt, generator=self.gen)


def train(config: TrainConfig, *, label_maps=None, real_train=None, real_val=None,
          out_dir: str | Path, resume: bool = False, corruption=None, label_table=None,
          progress_stream=None) -> TrainResult:
    """Train a segmenter with ``config.method`` and write ``out_dir/{metrics.jsonl, checkpoint/, model/}``.

    Parameters
    ----------
    label_maps: ``LabelMapDataset`` (``sample_batch(B, generator) -> (B,1,*sp)`` long) or a tensor of
        label maps ``(N, 1, *sp)``; not needed for ``supervised``.
    real_train, real_val: ``RealPairDataset``-like (``sample_batch(B, generator, patch_size)``);
        ``real_val`` gives one fixed batch of ``val_size`` images scored every ``eval_every`` steps.
    resume: continue from ``out_dir/checkpoint`` when present (same weights, moments and RNG).
    corruption: ``(x, generator) -> x`` true corruption for ``oracle`` (else ``oracle_noise_sigma``).
    label_table: output labels (default SynthSeg 2.0's 33).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = config
    run = _Run(c, label_maps, real_train, real_val, corruption, label_table)
    log = MetricsLog(out_dir / "metrics.jsonl")
    ckpt_dir = out_dir / "checkpoint"
    start = 0
    if resume and has_training_state(ckpt_dir):
        state = load_training_state(ckpt_dir, device=run.device, **run.state_kwargs())
        start = int(state["step"])
        run.restart = int(state.get("extra", {}).get("restart", 0))
        log.truncate_after(start)
    elif c.init_from:
        start = run.restart = _init_from_package(run, Path(c.init_from), log)
    else:
        log.reset()
    total = c.total_steps
    progress = Progress(total, start, every=c.log_every, stream=progress_stream)
    logged = log.read() if start else []  # ``time`` continues across resumes (cumulative)
    t0 = time.perf_counter() - (max((r.get("time", 0.0) for r in logged), default=0.0))
    last_dice = None
    for step in range(start, total):
        phase = c.phase(step)
        record: dict[str, Any] = {"step": step, "phase": phase, "synthetic_loss": None, "real_loss": None}
        record.update(run.step(phase, step, time.perf_counter() - t0))
        record["lr"] = run.seg_opt.lr
        evaluate = (step + 1) % c.eval_every == 0 or step + 1 == total
        if run.val is not None and evaluate:
            last_dice = record["val_dice"] = run.validate()
        if run.synth_val is not None and evaluate:
            record["synth_val_dice"] = run.validate(run.synth_val)
        if run.augmenter is not None:
            record.update({f"aug/{k}": v for k, v in run.augmenter.parameters_log().items()})
        record["time"] = time.perf_counter() - t0
        log.write(record)
        progress.update(step, record)
        out_of_time = bool(c.time_budget_s) and record["time"] >= c.time_budget_s  # equal-CPU-time arms
        if (step + 1) % c.checkpoint_every == 0 or step + 1 == total or out_of_time:
            save_training_state(ckpt_dir, step=step + 1, extra={"config": c.to_dict(), "restart": run.restart},
                                **run.state_kwargs())
        if out_of_time:
            total = step + 1
            break
    progress.close()
    package = _save_package(run, out_dir / "model", real_train, steps=total)
    aug_log = run.augmenter.parameters_log() if run.augmenter is not None else {}
    return TrainResult(run.model, run.augmenter, package, log.path, last_dice, aug_log, total)


def _init_from_package(run: _Run, package: Path, log: MetricsLog) -> int:
    """Load a model package's weights into ``run.model`` and continue its step count.

    The package must hold the same architecture (ModelError otherwise), or its one-slice version
    when this run's network takes several neighbouring slices (:func:`_widen`). Returns the package's
    ``training.steps`` (the step this run continues from); its ``metrics.jsonl`` (if any) seeds
    the run's log so the curves stay whole. Adam's moments, the augmenter and the RNG are not in
    a package: they restart (a named difference from an exact ``resume``).
    """
    from l2s_pipelines.errors import ModelError
    from l2s_pipelines.io.checkpoint import load_model_package
    model, manifest = load_model_package(package)
    want = run.model.config.to_dict()
    have = dict(manifest["architecture"])
    widened = have.get("in_channels", 1) == 1 < want["in_channels"]  # one slice -> k slices
    if dict(have, in_channels=want["in_channels"]) != want or not (widened or have == want):
        raise ModelError(f"{package}: --init-weights package has another architecture "
                         f"({manifest['architecture']} != {want})")
    run.model.load_state_dict({k: _widen(v.float(), run.model.state_dict()[k].shape)
                               for k, v in model.state_dict().items()})
    start = int(manifest.get("training", {}).get("steps", 0))
    log.reset()
    curves = package / "metrics.jsonl"
    if curves.is_file():
        for record in MetricsLog(curves).read():
            if record.get("step", start) < start:
                log.write(record)
    return start


def _widen(weight: torch.Tensor, shape) -> torch.Tensor:
    """A one-slice network's first convolution ``(out, 1, *kernel)`` as a ``k``-slice one
    ``(out, k, *kernel)`` that computes the same function: the weights on the middle slice, zeros
    on its neighbours. Other tensors are returned as they are."""
    if tuple(weight.shape) == tuple(shape) or weight.dim() < 2 or weight.shape[1] != 1:
        return weight
    out = weight.new_zeros(shape)
    out[:, shape[1] // 2] = weight[:, 0]
    return out


def _save_package(run: _Run, directory: Path, real_train, steps: int) -> Path:
    """The model package of ``run`` after ``steps`` steps (fewer than configured when the time
    budget ran out)."""
    from l2s_pipelines.io.checkpoint import save_model_package
    c = run.config
    tune = list(c.tune_subjects) or list(getattr(real_train, "subjects", []) or [])
    if c.method in ("synthseg", "oracle"):
        tune = []
    labels = [{"index": v, "name": n, "color": col}
              for v, n, col in zip(run.table.values, run.table.names, run.table.colors)]
    manifest = {
        "name": c.name or f"l2s-{c.method}-{c.ndim}d",
        "description": f"UNet trained with {c.method} ({steps} steps, seed {c.seed})",
        "architecture": run.model.config.to_dict(),
        "labels": labels,
        "preprocessing": {"orientation": "RAS", "voxel_size_mm": list(c.voxel_size_mm),
                          "intensity": "percentile", "percentiles": list(c.percentiles)},
        "inference": {"mode": f"{c.ndim}d", "planes": [c.plane] if c.ndim == 2 else [],
                      "patch_size": list(c.patch_size)},
        "training": {"method": c.method, "steps": steps, "seed": c.seed, "tune_subjects": tune,
                     "hyperparameters": c.to_dict(), "command": c.command,
                     "augmentation": run.augmenter.parameters_log() if run.augmenter is not None else {}},
    }
    return save_model_package(directory, run.model.cpu(), manifest)
