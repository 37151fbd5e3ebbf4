"""Segmentation losses and evaluation Dice.

Conventions: ``logits`` are ``(B, K, *spatial)`` float; ``target`` is ``(B, *spatial)`` long holding
output-channel indices ``0..K-1``, or :data:`IGNORE_INDEX` for voxels that must not count (reference
label 255). Every loss returns a scalar tensor and skips ignored voxels.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from l2s_pipelines.labels import IGNORE_INDEX
from l2s_pipelines.lr_merge import has_merged, pool_merged

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _onehot_and_mask(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """One-hot target ``(B, K, *sp)`` and valid-voxel mask ``(B, 1, *sp)`` (both of logits' dtype)."""
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    return onehot, valid.unsqueeze(1).to(logits.dtype)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX,
                   eps: float = 1e-5, include_background: bool = True) -> torch.Tensor:
    """``1 - mean_k Dice_k`` with softmax probabilities, Dice pooled over the batch and space.

    ``Dice_k = (2 sum p_k t_k + eps) / (sum p_k + sum t_k + eps)`` over valid voxels only, then the
    mean over labels (all K, or 1..K-1 with ``include_background=False``).
    """
    onehot, valid = _onehot_and_mask(logits, target, ignore_index)
    prob = logits.softmax(1) * valid
    onehot = onehot * valid
    dims = [0] + list(range(2, logits.ndim))
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    if not include_background:
        dice = dice[1:]
    return 1 - dice.mean()


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, *,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Categorical cross-entropy averaged over valid voxels (0 when no voxel is valid)."""
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def logit_mse_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX,
                   scale: float = 5.0) -> torch.Tensor:
    """Mean squared error between channel-centred logits and a centred, scaled one-hot target.

    Target logits are ``scale * (onehot - 1/K)`` (zero mean over channels, like the centred logits
    ``logits - logits.mean(1)``), so softmax of the target is a confident but finite prediction.
    Averaged over channels and valid voxels.
    """
    onehot, valid = _onehot_and_mask(logits, target, ignore_index)
    k = logits.shape[1]
    centred = logits - logits.mean(1, keepdim=True)
    err = ((centred - scale * (onehot - 1.0 / k)) ** 2) * valid
    return err.sum() / (valid.sum() * k).clamp_min(1.0)


def combined_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX,
                  dice_weight: float = 1.0, ce_weight: float = 1.0) -> torch.Tensor:
    """``dice_weight * soft Dice loss + ce_weight * cross-entropy``."""
    return (dice_weight * soft_dice_loss(logits, target, ignore_index=ignore_index)
            + ce_weight * cross_entropy_loss(logits, target, ignore_index=ignore_index))


LOSSES: dict[str, LossFn] = {
    "dice": soft_dice_loss,
    "ce": cross_entropy_loss,
    "logit_mse": logit_mse_loss,
    "dice+ce": combined_loss,
}


def get_loss(name: str, flip_lut: torch.Tensor | None = None) -> LossFn:
    """Loss function by name: one of ``dice``, ``ce``, ``logit_mse``, ``dice+ce``.

    With ``flip_lut`` (channel -> left/right partner, ``(K,)`` long) the loss also takes targets
    with left/right-merged voxels (:mod:`l2s_pipelines.lr_merge`: values ``K + c``) and scores
    those on the pair's pooled probability; other targets give the plain loss.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    if flip_lut is None:
        return LOSSES[name]
    base = LOSSES[name]

    def merged_loss(logits: torch.Tensor, target: torch.Tensor, **kw) -> torch.Tensor:
        if base is logit_mse_loss:  # scores logits, not probabilities: no pooled form
            if has_merged(target, logits.shape[1]):
                raise ValueError("loss 'logit_mse' does not take left/right-merged targets "
                                 "(sagittal slices); use dice, ce or dice+ce")
            return base(logits, target, **kw)
        return base(*pool_merged(logits, target, flip_lut), **kw)

    return merged_loss


@torch.no_grad()
def dice_per_label(pred_idx: torch.Tensor, target_idx: torch.Tensor, num_classes: int, *,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Hard Dice of every output channel, pooled over all voxels given.

    ``pred_idx`` and ``target_idx``: long tensors of one shape (e.g. ``(*spatial)`` for one image)
    holding channel indices; target voxels equal to ``ignore_index`` are skipped. Returns float64
    ``(num_classes,)``; labels absent from both prediction and reference get NaN. For the mean
    per-structure Dice (background excluded) use :func:`mean_dice`.
    """
    if pred_idx.shape != target_idx.shape:
        raise ValueError(f"prediction {tuple(pred_idx.shape)} and reference {tuple(target_idx.shape)} differ")
    valid = target_idx != ignore_index
    p = pred_idx[valid].long()
    t = target_idx[valid].long()
    n_pred = torch.bincount(p, minlength=num_classes)[:num_classes].double()
    n_ref = torch.bincount(t, minlength=num_classes)[:num_classes].double()
    n_both = torch.bincount(t[p == t], minlength=num_classes)[:num_classes].double()
    denom = n_pred + n_ref
    return torch.where(denom > 0, 2 * n_both / denom.clamp_min(1), torch.full_like(denom, float("nan")))


def mean_dice(pred_idx: torch.Tensor, target_idx: torch.Tensor, num_classes: int, *,
              ignore_index: int = IGNORE_INDEX) -> float:
    """Mean per-structure hard Dice: average of :func:`dice_per_label` over labels 1..K-1 present in
    the prediction or the reference (background, channel 0, excluded; not micro-averaged)."""
    d = dice_per_label(pred_idx, target_idx, num_classes, ignore_index=ignore_index)[1:]
    d = d[~torch.isnan(d)]
    return float(d.mean()) if d.numel() else float("nan")
