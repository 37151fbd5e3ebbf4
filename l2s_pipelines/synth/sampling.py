"""Random draws through an explicit ``torch.Generator`` and separable resampling operators.

Draws happen on the generator's device and are then moved to the requested device, so a CPU
generator gives the same parameters whatever device the images live on.
"""

from __future__ import annotations

import math

import torch

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def uniform(shape, low, high, generator: torch.Generator, device=None) -> torch.Tensor:
    """float32 tensor of ``shape`` drawn from U(low, high)."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return (low + (high - low) * u).to(device)


def normal(shape, generator: torch.Generator, device=None) -> torch.Tensor:
    """float32 tensor of ``shape`` drawn from N(0, 1)."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def bernoulli(shape, prob: float, generator: torch.Generator, device=None) -> torch.Tensor:
    """bool tensor of ``shape``, True with probability ``prob``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device) < prob


def new_seed(generator: torch.Generator) -> int:
    """An integer seed drawn from ``generator`` (for voxel-wise noise regenerated in apply)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def bspline_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """(n_out, n_in) cubic B-spline upsampling weights from a coarse grid to ``n_out`` samples.

    The coarse knots span the whole output range; rows sum to one (smooth, C2 fields).
    """
    if n_in == 1:
        return torch.ones(n_out, 1, device=device)
    u = torch.linspace(0, n_in - 1, n_out, device=device)[:, None]
    d = (u - torch.arange(n_in, device=device)[None]).abs()
    w = torch.where(d < 1, 2 / 3 - d**2 + d**3 / 2, ((2 - d).clamp_min(0) ** 3) / 6)
    return w / w.sum(1, keepdim=True)


def apply_along_axes(x: torch.Tensor, mats) -> torch.Tensor:
    """Apply one linear operator per spatial axis.

    Parameters
    ----------
    x : (B, C, *spatial_in)
    mats : sequence of ``ndim`` tensors, each (n_out, n_in) shared by the batch, or
        (B, n_out, n_in) per element; None leaves that axis unchanged.

    Returns
    -------
    (B, C, *spatial_out)
    """
    B = x.shape[0]
    for axis, m in enumerate(mats):
        if m is None:
            continue
        xm = x.movedim(2 + axis, -1)
        rest = xm.shape[1:-1]
        mt = m.transpose(-1, -2).to(x.dtype)
        if m.dim() == 3:  # one matrix per element: a single batched matmul
            out = torch.bmm(xm.reshape(B, -1, xm.shape[-1]), mt)
        else:
            out = xm.reshape(-1, xm.shape[-1]) @ mt
        x = out.reshape(B, *rest, mt.shape[-1]).movedim(-1, 2 + axis)
    return x


def smooth_upsample(coarse: torch.Tensor, shape) -> torch.Tensor:
    """Upsample a coarse field (B, C, *coarse) to (B, C, *shape) with cubic B-splines."""
    mats = [bspline_matrix(n_in, n_out, coarse.device)
            for n_in, n_out in zip(coarse.shape[2:], shape)]
    return apply_along_axes(coarse, mats).contiguous()


def resolution_matrix(n: int, fwhm: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-element blur + low-resolution operator along one axis, (B, n, n).

    Models acquiring at a resolution ``factor`` times coarser (slice profile of FWHM
    ``factor`` voxels, samples every ``factor`` voxels) plus a Gaussian blur of FWHM ``fwhm``
    voxels, then linear interpolation back to the ``n``-voxel grid. ``factor == 1`` and
    ``fwhm == 0`` give the identity.

    Parameters
    ----------
    n : number of voxels along the axis
    fwhm : (B,) blur FWHM in voxels (>= 0)
    factor : (B,) low-resolution factor (>= 1)
    """
    device = fwhm.device
    f = factor.clamp_min(1.0)[:, None, None]
    sigma2 = (fwhm[:, None, None] * FWHM_TO_SIGMA) ** 2
    sigma2 = sigma2 + torch.where(f > 1, (f * FWHM_TO_SIGMA) ** 2, torch.zeros_like(f))
    sigma2 = sigma2.clamp_min(0.05**2)
    k = torch.arange(n, device=device, dtype=fwhm.dtype)
    pos = k[None, :, None] * f  # (B, K, 1): low-resolution sample positions
    valid = k[None, :, None] <= torch.ceil((n - 1) / f)  # (B, K, 1)
    j = k[None, None, :]
    acquire = torch.softmax(-((j - pos) ** 2) / (2 * sigma2), dim=-1) * valid  # (B, K, n)
    x = k[None, :, None]
    tent = (1 - (x - pos.transpose(1, 2)).abs() / f).clamp_min(0) * valid.transpose(1, 2)
    tent = tent / tent.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, n, K)
    return tent @ acquire
