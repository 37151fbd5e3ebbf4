"""Network evaluation over a whole model-space volume with bounded memory.

All functions take a normalised volume ``vol`` of shape ``(X, Y, Z)`` (RAS model grid, on the
model's device) and write softmax posteriors into ``out`` of shape ``(K, X, Y, Z)`` (float32 or
float16, same device). Activation memory is bounded by choosing the batch size (2D) or the
patch size (3D, when the manifest gives none) from ``activation_budget_bytes``.

Plane convention (2D networks), shared with training's slicing: a plane is named by the RAS
axis normal to it; a slice keeps the two other axes in increasing order, so an axial slice of
``vol`` is ``vol[:, :, z]`` with rows = X (R) and columns = Y (A).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch.nn import functional as F

from l2s_pipelines.lr_merge import split_merged
from l2s_pipelines.planes import PLANE_AXIS


def bytes_per_voxel(model) -> int:
    """Rough peak activation bytes per input voxel of a UNet forward pass without gradients."""
    cfg = model.config
    return 4 * (4 * cfg.widths[0] + sum(cfg.widths) + 3 * cfg.out_channels)


def pad_multiple(levels: int) -> int:
    """Spatial multiple that keeps every pooling level exact: ``2 ** (levels - 1)``."""
    return 2 ** (levels - 1)


def _pad_to(x: torch.Tensor, shape) -> torch.Tensor:
    """Zero-pad the trailing spatial dims of ``x`` at the end up to ``shape``."""
    pads = []
    for have, want in zip(reversed(x.shape[-len(shape):]), reversed(shape)):
        pads += [0, want - have]
    return F.pad(x, pads) if any(pads) else x


@torch.no_grad()
def predict_planes(model, vol: torch.Tensor, out: torch.Tensor, planes, *,
                   activation_budget_bytes: int = 1 << 30, merged_planes=(),
                   flip_lut: torch.Tensor | None = None) -> torch.Tensor:
    """2D / 2.5D: softmax of a 2D network over every slice of each plane, averaged over planes.

    ``out`` ``(K, X, Y, Z)`` is overwritten. Slices are padded in-plane to multiples of
    ``2**(levels-1)`` and processed in batches sized to the activation budget. A network with
    ``k = in_channels > 1`` sees each slice with its ``(k - 1) / 2`` neighbours on either side as
    channels, in increasing slice order (zeros beyond the volume), as in training. Planes in
    ``merged_planes`` were trained with left/right-merged labels (:mod:`l2s_pipelines.lr_merge`):
    they run after the others, and each pair's probability is split between left and right as
    the other planes' posteriors share it (``flip_lut``: channel -> partner); at least one plane
    must not be merged.
    """
    unknown = [p for p in planes if p not in PLANE_AXIS]
    if unknown:
        raise ValueError(f"unknown plane {unknown[0]!r}; choose from {sorted(PLANE_AXIS)}")
    merged = [p for p in planes if p in set(merged_planes)]
    if merged and (flip_lut is None or len(merged) == len(planes)):
        raise ValueError(f"planes {merged} have left/right-merged labels: they need flip_lut and "
                         f"at least one plane that tells left from right")
    out.zero_()
    mult = pad_multiple(len(model.config.widths))
    dtype = next(model.parameters()).dtype
    half = model.config.in_channels // 2  # neighbouring slices on either side
    for plane in [p for p in planes if p not in merged] + merged:
        axis = PLANE_AXIS[plane]
        stack = vol.movedim(axis, 0)  # (N, H, W), in-plane axes in increasing order
        n, h, w = stack.shape
        hp, wp = math.ceil(h / mult) * mult, math.ceil(w / mult) * mult
        batch = max(1, activation_budget_bytes // (bytes_per_voxel(model) * hp * wp))
        padded = F.pad(stack, (0, 0, 0, 0, half, half)) if half else stack
        target = out.movedim(axis + 1, 1)  # (K, N, H, W) view of out
        for s in range(0, n, batch):
            e = min(s + batch, n)
            x = padded[s:e + 2 * half].unfold(0, 2 * half + 1, 1).movedim(-1, 1)  # (B, k, H, W)
            x = _pad_to(x.to(dtype), (hp, wp))
            prob = torch.softmax(model(x).float(), dim=1)[:, :, :h, :w]  # (B, K, H, W)
            if plane in merged:  # the unmerged planes' sum so far gives the left/right shares
                prob = split_merged(prob, target[:, s:s + batch].transpose(0, 1), flip_lut)
            target[:, s:s + batch] += (prob.transpose(0, 1) / len(planes)).to(out.dtype)
    return out


def window_weight(patch, blending: str = "gaussian", device=None) -> torch.Tensor:
    """Blending weight of one patch, shape ``patch``, max 1.

    ``gaussian``: separable Gaussian, sigma = patch / 8 per axis (nnU-Net's choice), floored
    at 1e-3 so every voxel keeps a positive weight; ``constant``: uniform 1.
    """
    if blending == "constant":
        return torch.ones(tuple(patch), device=device)
    if blending != "gaussian":
        raise ValueError(f"unknown blending {blending!r}; choose 'gaussian' or 'constant'")
    w = torch.ones((), device=device)
    for n in patch:
        c = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2
        g = torch.exp(-0.5 * (c / max(n / 8, 1e-6)) ** 2)
        w = w[..., None] * g
    return (w / w.max()).clamp_min(1e-3)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``patch`` covering ``0..size-1`` with the given
    fractional overlap; the last window ends exactly at ``size``."""
    if patch >= size:
        return [0]
    step = max(1, int(round(patch * (1 - overlap))))
    starts = list(range(0, size - patch, step))
    return starts + [size - patch]


def auto_patch(model, budget_bytes: int, mult: int, ndim: int = 3) -> tuple[int, ...]:
    """Largest cubic patch (multiple of ``mult``, at least ``mult``) fitting the budget."""
    side = int((budget_bytes / bytes_per_voxel(model)) ** (1 / ndim))
    return (max(mult, side // mult * mult),) * ndim


@torch.no_grad()
def predict_sliding_window(model, vol: torch.Tensor, out: torch.Tensor, *, patch_size=None,
                           overlap: float = 0.5, blending: str = "gaussian", batch_size: int = 1,
                           activation_budget_bytes: int = 1 << 30) -> torch.Tensor:
    """3D: weighted average of softmax over overlapping patches.

    ``out`` ``(K, X, Y, Z)`` receives ``sum_w w * p / sum_w w`` (overwritten); the weight sum
    is kept in float32. ``patch_size`` (voxels) is clipped to the volume; when None it is
    chosen from the activation budget.
    """
    mult = pad_multiple(len(model.config.widths))
    if patch_size is None:
        patch_size = auto_patch(model, activation_budget_bytes // max(1, batch_size), mult)
    patch = [min(int(p), n) for p, n in zip(patch_size, vol.shape)]
    weight = window_weight(patch, blending, device=vol.device)
    wsum = torch.zeros(vol.shape, dtype=torch.float32, device=vol.device)
    out.zero_()
    dtype = next(model.parameters()).dtype
    corners = list(itertools.product(*(window_starts(n, p, overlap) for n, p in zip(vol.shape, patch))))
    for b in range(0, len(corners), batch_size):
        group = corners[b:b + batch_size]
        slices = [tuple(slice(c, c + p) for c, p in zip(corner, patch)) for corner in group]
        x = torch.stack([vol[s] for s in slices])[:, None].to(dtype)
        prob = torch.softmax(model(x).float(), dim=1) * weight
        for s, p in zip(slices, prob):
            out[(slice(None),) + s] += p.to(out.dtype)
            wsum[s] += weight
    for i in range(0, out.shape[1], 16):  # normalise in slabs: no full-size float32 temporary
        out[:, i:i + 16] = (out[:, i:i + 16].float() / wsum[i:i + 16]).to(out.dtype)
    return out
