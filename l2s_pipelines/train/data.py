"""Batch sources for training: synthetic pairs from label maps, and corrupted synthetic "real"
pairs for the synthetic experiments (paper Tables 1-2).

Every source is driven by an explicit :class:`torch.Generator`. Real datasets
(:class:`l2s_pipelines.io.nifti.RealPairDataset`) and the synthetic stand-in below share
``sample_batch(batch_size, generator, patch_size) -> (image (B,1,*patch) float, target (B,*patch) long)``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Corruption = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class TensorLabelMaps:
    """Label maps held in memory: ``maps`` long ``(N, 1, *spatial)`` of source label values.

    ``sample_batch(batch_size, generator)`` draws ``batch_size`` maps uniformly with replacement.
    """

    def __init__(self, maps: torch.Tensor):
        if maps.dim() not in (4, 5) or maps.shape[1] != 1:
            raise ValueError(f"label maps must be (N, 1, *spatial), got {tuple(maps.shape)}")
        self.maps = maps.long()

    def __len__(self) -> int:
        return self.maps.shape[0]

    def sample_batch(self, batch_size: int, generator: torch.Generator, patch_size=None) -> torch.Tensor:
        idx = torch.randint(0, len(self), (batch_size,), generator=generator, device=generator.device)
        return self.maps[idx.to(self.maps.device)]


def _draw_label_maps(label_maps, batch_size: int, generator: torch.Generator):
    """``(maps (B, 1, *spatial) long, merge_lr (B,) bool or None)``: a source's ``sample_batch``
    returns the maps, or ``(maps, merge_lr)`` when some elements have left/right-merged targets
    (sagittal slices; :mod:`l2s_pipelines.lr_merge`)."""
    if isinstance(label_maps, torch.Tensor):
        label_maps = TensorLabelMaps(label_maps)
    out = label_maps.sample_batch(batch_size, generator)
    return out if isinstance(out, tuple) else (out, None)


class SyntheticSource:
    """Synthetic ``(image, target)`` pairs: random label maps through a SynthSeg-style generator.

    ``label_maps``: a ``LabelMapDataset``-like object with ``sample_batch(batch_size, generator)
    -> (B, 1, *spatial)`` long, or such a tensor of maps ``(N, 1, *spatial)``.
    ``synth``: callable ``(label_maps, generator) -> (image (B,1,*patch), target (B,*patch))``
    (a :class:`l2s_pipelines.synth.SynthGenerator`); when the label maps come with a ``merge_lr``
    mask it is called as ``synth(label_maps, generator, merge_lr)``.
    """

    def __init__(self, label_maps, synth, device: str | torch.device = "cpu"):
        self.label_maps, self.synth, self.device = label_maps, synth, torch.device(device)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        maps, merge_lr = _draw_label_maps(self.label_maps, batch_size, generator)
        with torch.no_grad():
            if merge_lr is None:
                return self.synth(maps.to(self.device), generator)
            return self.synth(maps.to(self.device), generator, merge_lr.to(self.device))


class NoiseCorruption:
    """Gaussian noise of a preset sigma (float) or per-element sigma ~ U(lo, hi) (a pair)."""

    def __init__(self, sigma: float | Sequence[float]):
        self.sigma = tuple(float(s) for s in sigma) if isinstance(sigma, (list, tuple)) else float(sigma)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from l2s_pipelines.synth import corrupt_noise
        if isinstance(self.sigma, tuple):
            lo, hi = self.sigma
            u = torch.rand((x.shape[0],), generator=generator, device=generator.device).to(x)
            sigma = lo + (hi - lo) * u
        else:
            sigma = self.sigma
        return corrupt_noise(x, sigma, generator)

    def describe(self) -> str:
        return f"U[{self.sigma[0]}, {self.sigma[1]}]" if isinstance(self.sigma, tuple) else str(self.sigma)


class CorruptedSyntheticPairs:
    """Stand-in for a real labelled dataset: synthetic pairs passed through a fixed corruption.

    Used by the synthetic experiments (the "real" images of paper Tables 1-2); build it from label
    maps of *other* subjects than the training source.
    """

    def __init__(self, source: SyntheticSource, corruption: Corruption | None):
        self.source, self.corruption = source, corruption

    def sample_batch(self, batch_size: int, generator: torch.Generator, patch_size=None):
        x, y = self.source.sample(batch_size, generator)
        if self.corruption is not None:
            x = self.corruption(x, generator)
        return x, y
