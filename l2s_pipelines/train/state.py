"""Resumable training checkpoints: safetensors for tensors + JSON for the rest (never pickle).

One checkpoint = ``<dir>/state.safetensors`` and its sidecar ``state.safetensors.json`` (written
atomically by :func:`l2s_pipelines.io.checkpoint.save_tensors`). Tensor keys are prefixed
``seg.``, ``aug.``, ``seg_opt.``, ``aug_opt.``; the RNG state is the uint8 tensor ``rng``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from l2s_pipelines.io.checkpoint import load_tensors, save_tensors

STATE_NAME = "state.safetensors"


def _prefixed(prefix: str, d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in d.items()}


def _strip(prefix: str, d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in d.items() if k.startswith(prefix + ".")}


def save_training_state(directory: str | Path, *, step: int, segmenter: nn.Module,
                        augmenter: nn.Module | None, seg_opt, aug_opt, generator: torch.Generator,
                        extra: dict | None = None) -> Path:
    """Write the full training state after ``step`` completed steps; returns the tensors' path."""
    tensors = {**_prefixed("seg", segmenter.state_dict()),
               **_prefixed("seg_opt", seg_opt.state_tensors()),
               "rng": generator.get_state()}
    meta = {"step": int(step), "seg_opt": seg_opt.state_meta(), "extra": extra or {}}
    if augmenter is not None:
        tensors.update(_prefixed("aug", augmenter.state_dict()))
        tensors.update(_prefixed("aug_opt", aug_opt.state_tensors()))
        meta["aug_opt"] = aug_opt.state_meta()
    return save_tensors(Path(directory) / STATE_NAME, tensors, meta)


def has_training_state(directory: str | Path) -> bool:
    return (Path(directory) / STATE_NAME).is_file()


def load_training_state(directory: str | Path, *, segmenter: nn.Module, augmenter: nn.Module | None,
                        seg_opt, aug_opt, generator: torch.Generator, device="cpu") -> dict:
    """Restore everything :func:`save_training_state` wrote (in place); returns its metadata
    (``step`` = number of completed steps). Raises ModelError when the files are corrupt."""
    tensors, meta = load_tensors(Path(directory) / STATE_NAME, device=device)
    segmenter.load_state_dict(_strip("seg", tensors), strict=True)
    seg_opt.load_state(_strip("seg_opt", tensors), meta["seg_opt"])
    if augmenter is not None:
        augmenter.load_state_dict(_strip("aug", tensors), strict=True)
        aug_opt.load_state(_strip("aug_opt", tensors), meta["aug_opt"])
    generator.set_state(tensors["rng"].cpu())
    return meta
