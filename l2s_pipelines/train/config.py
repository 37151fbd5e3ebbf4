"""What defines a training run: :class:`TrainConfig` (stored in checkpoints and in the model
manifest), the methods it can run and its learning-rate schedule (:meth:`TrainConfig.lr_at`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from l2s_pipelines.nn.unet import UNetConfig
from l2s_pipelines.train import METHODS


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints and the model manifest).

    Sizes in voxels; ``voxel_size_mm`` in mm; ``lr``/``lr_theta`` are Adam/SGD learning rates of the
    segmenter and the augmenter; ``alpha`` weights the real loss in theta's gradient.
    """

    method: str = "l2s-parametric"
    ndim: int = 2
    plane: str = "axial"
    patch_size: tuple[int, ...] = (160, 160)
    in_slices: int = 1  # 2D: neighbouring slices as input channels (odd; the middle one is segmented)
    batch_size: int = 4
    steps: int = 1000
    warmup_steps: int = 100
    lr: float = 1e-3
    lr_theta: float = 1e-3
    alpha: float = 1.0
    hyper_every: int = 1  # >1 is a named deviation from the paper: hypergradient every k-th step
    inner_optimizer: str = "adam"
    loss: str = "dice+ce"
    amp: str = "none"  # "bf16": autocast of plain steps' forward pass (the meta-step stays fp32)
    lr_schedule: str = "constant"  # "cosine" or "poly" (power 0.9) decay after lr_warmup
    lr_warmup: int = 0  # steps of linear warm-up of the segmenter's lr from lr/10
    lr_end: float = 0.05  # final lr as a fraction of lr (cosine, poly)
    schedule_steps: int = 0  # horizon of the decay in steps (0: ``steps``); lr stays at the end after it
    decay_from_s: float | None = None  # set: decay over training time from it to time_budget_s instead
    synth_val_size: int = 0  # fixed synthetic validation batch (fresh draws from the label maps)
    mix_proportion: float = 0.25
    finetune_steps: int = 100
    eval_every: int = 50
    val_size: int = 8
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    oracle_noise_sigma: float | tuple[float, float] | None = None
    unet: dict = field(default_factory=lambda: UNetConfig().to_dict())
    augmenter: dict = field(default_factory=dict)
    generator: dict = field(default_factory=dict)
    generation_labels: str | None = None  # TSV of label -> generation class (None: one per label)
    voxel_size_mm: tuple[float, ...] = (1.0, 1.0, 1.0)
    percentiles: tuple[float, float] = (1.0, 99.0)
    init_from: str = ""  # model package to start from (weights only; Adam restarts, lr re-warms)
    time_budget_s: float = 0.0  # stop (checkpoint + package) once the run's cumulative ``time`` reaches it
    name: str = ""
    tune_subjects: tuple[str, ...] = ()
    command: str = ""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if len(self.patch_size) != self.ndim:
            raise ValueError(f"patch_size {self.patch_size} does not have ndim={self.ndim} entries")
        if self.in_slices < 1 or self.in_slices % 2 == 0 or (self.in_slices > 1 and self.ndim != 2):
            raise ValueError(f"in_slices must be odd, and above 1 for 2D networks only; got {self.in_slices} "
                             f"with ndim={self.ndim}")
        if self.in_slices > 1 and self.method == "l2s-nonparametric":
            raise ValueError("in_slices > 1 does not work with the nonparametric augmenter (one input channel)")
        if self.hyper_every < 1:
            raise ValueError(f"hyper_every must be >= 1, got {self.hyper_every}")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {self.amp!r}")
        if self.lr_schedule not in ("constant", "cosine", "poly"):
            raise ValueError(f"lr_schedule must be constant, cosine or poly, got {self.lr_schedule!r}")
        if self.decay_from_s is not None and not 0 <= self.decay_from_s < self.time_budget_s:
            raise ValueError(f"decay_from_s ({self.decay_from_s}) must lie in [0, time_budget_s "
                             f"({self.time_budget_s})): the time-clock decay ends at the budget")
        if not 0 <= self.mix_proportion <= 1:
            raise ValueError(f"mix_proportion must lie in [0, 1], got {self.mix_proportion}")

    @property
    def total_steps(self) -> int:
        return self.steps + (self.finetune_steps if self.method == "finetune" else 0)

    def phase(self, step: int) -> str:
        """``synth``, ``l2s``, ``mixed`` or ``real``: what step ``step`` (0-based) does."""
        m = self.method
        if m == "supervised" or (m == "finetune" and step >= self.steps):
            return "real"
        if m in ("l2s-parametric", "l2s-nonparametric") and step >= self.warmup_steps:
            return "l2s" if (step - self.warmup_steps) % self.hyper_every == 0 else "synth"
        if m == "mixed" and step >= self.warmup_steps:
            return "mixed"
        return "synth"

    def lr_at(self, step: int, restart: int = 0, time_s: float = 0.0) -> float:
        """Segmenter learning rate at 0-based ``step``: linear warm-up from ``lr / 10`` over
        ``lr_warmup`` steps, then constant, cosine or poly decay to ``lr * lr_end`` at
        ``schedule_steps`` (default ``steps``), constant after it. With ``decay_from_s`` the decay
        runs on the clock instead: from ``lr`` at ``decay_from_s`` to its end at ``time_budget_s``
        seconds of cumulative training time ``time_s`` (arms at equal CPU time each anneal by the
        end of their budget, whatever their step cost). ``restart``: the step at which Adam
        restarted (a run started from a package's weights): the decayed value is warmed up
        again over ``lr_warmup`` steps from there."""
        if restart and step < restart + self.lr_warmup:
            return self.lr_at(step, 0, time_s) * (0.1 + 0.9 * (step - restart) / self.lr_warmup)
        if step < self.lr_warmup and self.decay_from_s is None:
            return self.lr * (0.1 + 0.9 * step / self.lr_warmup)
        if self.lr_schedule == "constant":
            return self.lr
        if self.decay_from_s is None:
            horizon = max((self.schedule_steps or self.steps) - self.lr_warmup, 1)
            t = min(max(step - self.lr_warmup, 0) / horizon, 1.0)
        else:
            t = min(max(time_s - self.decay_from_s, 0.0) / (self.time_budget_s - self.decay_from_s), 1.0)
        end = self.lr * self.lr_end
        if self.lr_schedule == "cosine":
            return end + (self.lr - end) * 0.5 * (1 + math.cos(math.pi * t))
        return end + (self.lr - end) * (1 - t) ** 0.9

    def to_dict(self) -> dict:
        return json_ready(dataclasses.asdict(self))


def json_ready(x: Any) -> Any:
    """Tuples -> lists, recursively (JSON round trip)."""
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x
