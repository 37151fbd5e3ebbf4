"""Left/right-merged targets: how a 2D network learns from sagittal slices (FastSurfer's approach).

A sagittal slice does not show which hemisphere it comes from, so its left and right structures
cannot be told apart. Training therefore scores sagittal elements on *merged* labels, and
inference takes the hemisphere from the other planes. The one definition used by the generator,
the training sampler, the losses, validation and inference:

- **Encoding.** In a training target ``(B, *spatial)`` of channel indices ``0..K-1``, every
  voxel of a merged element holds ``K + c`` with ``c = min(channel, partner)``: "channel ``c``
  or its left/right partner" (``c`` itself for unpaired channels: background, CSF, brainstem).
  :data:`~l2s_pipelines.labels.IGNORE_INDEX` stays as it is.
- **Loss.** :func:`pool_merged` turns logits into log-probabilities in which, at a merged voxel,
  the lower channel of each pair holds ``log(p_c + p_partner)`` and the other ``-inf``: any loss
  written for logits (softmax Dice, cross-entropy) then scores the merged labels exactly and
  cannot tell a left prediction from a right one.
- **Inference.** :func:`split_merged` gives a merged plane's pooled probability of a pair to
  left and right in the proportion of the other planes' posteriors.

``flip_lut`` everywhere is :meth:`~l2s_pipelines.labels.LabelTable.channel_flip_lut`: channel ->
channel of its left/right partner (itself when unpaired), ``(K,)`` long.

>>> import torch
>>> flip = torch.tensor([0, 2, 1, 3])  # background, left X, right X, unpaired
>>> encode_merged(torch.tensor([0, 1, 2, 3, -100]), flip).tolist()
[4, 5, 5, 7, -100]
"""

from __future__ import annotations

import torch


def canonical_lut(flip_lut: torch.Tensor) -> torch.Tensor:
    """``(K,)`` long: channel -> the lower channel index of its left/right pair."""
    return torch.minimum(torch.arange(len(flip_lut), device=flip_lut.device), flip_lut)


def encode_merged(target: torch.Tensor, flip_lut: torch.Tensor) -> torch.Tensor:
    """Merged encoding of a target of channel indices (any shape; see the module docstring)."""
    k = len(flip_lut)
    flip_lut = flip_lut.to(target.device)
    valid = (target >= 0) & (target < k)
    return torch.where(valid, k + canonical_lut(flip_lut)[target.clamp(0, k - 1)], target)


def has_merged(target: torch.Tensor, k: int) -> bool:
    """Whether ``target`` holds any merged voxel (value ``>= k``)."""
    return bool((target >= k).any())


def pool_merged(logits: torch.Tensor, target: torch.Tensor, flip_lut: torch.Tensor):
    """``(log-probabilities (B, K, *sp), target (B, *sp))`` scoring merged voxels on their pair.

    At a merged voxel (target ``K + c``) the lower channel of each pair holds
    ``log(p_low + p_high)``, the higher one ``-inf`` (finite, ``-1e4``, so gradients stay finite),
    unpaired channels ``log p``; the target becomes ``c``. Elsewhere the output is ``log_softmax(logits)`` and the
    target is unchanged. ``softmax`` of the output is the probabilities it encodes, so Dice and
    cross-entropy written for logits apply unchanged. Without merged voxels: ``(logits, target)``.
    """
    k = logits.shape[1]
    if not has_merged(target, k):
        return logits, target
    flip_lut = flip_lut.to(logits.device)
    logp = torch.log_softmax(logits, dim=1)
    shape = (1, k) + (1,) * (logits.ndim - 2)
    idx = torch.arange(k, device=logits.device)
    paired = (flip_lut != idx).view(shape)
    kept = (canonical_lut(flip_lut) == idx).view(shape)  # unpaired, or the lower of a pair
    pair_logp = torch.where(paired, torch.logaddexp(logp, logp[:, flip_lut]), logp)
    pooled = torch.where(kept, pair_logp, torch.full_like(logp, -1e4))
    merged = (target >= k).unsqueeze(1)
    return torch.where(merged, pooled, logp), torch.where(target >= k, target - k, target)


def decode_for_dice(pred: torch.Tensor, target: torch.Tensor, flip_lut: torch.Tensor):
    """Hard prediction and target of channel indices for Dice: at merged voxels both become the
    pair's lower channel, so a structure predicted on either side counts. Same shapes in and out."""
    k = len(flip_lut)
    merged = target >= k
    if not bool(merged.any()):
        return pred, target
    canon = canonical_lut(flip_lut.to(pred.device))
    return torch.where(merged, canon[pred.clamp(0, k - 1)], pred), torch.where(merged, target - k, target)


def split_merged(prob: torch.Tensor, reference: torch.Tensor, flip_lut: torch.Tensor,
                 eps: float = 1e-6) -> torch.Tensor:
    """Posteriors of a merged plane given to left and right as the reference planes share them.

    ``prob`` ``(B, K, *sp)``: softmax of the network on merged-plane slices (the mass of a pair
    may sit on either side); ``reference`` ``(B, K, *sp)`` (any positive scale, e.g. a sum over the
    other planes) at the same voxels. Returns ``(B, K, *sp)`` with each pair's pooled probability
    ``p_l + p_r`` split in the ratio ``reference_l : reference_r`` (half each where the reference
    has no mass on the pair); unpaired channels unchanged. Sums over channels are preserved.
    """
    flip_lut = flip_lut.to(prob.device)
    ref = reference.float()
    ref_pair = ref + ref[:, flip_lut]
    share = torch.where(ref_pair > eps, ref / ref_pair.clamp_min(eps), torch.full_like(ref, 0.5))
    idx = torch.arange(prob.shape[1], device=prob.device)
    paired = (flip_lut != idx).view(1, -1, *[1] * (prob.ndim - 2))
    return torch.where(paired, (prob + prob[:, flip_lut]) * share, prob)
