"""Intensity steps: class Gaussian intensities with texture, bias field, gamma, blur and low
resolution, noise. ``sample_*`` draw per-element parameters; ``apply_*`` are deterministic.

Images are (B, 1, *spatial) float32; per-element parameters have leading dimension B.
"""

from __future__ import annotations

import torch

from l2s_pipelines.synth.sampling import (
    apply_along_axes, bernoulli, normal, resolution_matrix, smooth_upsample, uniform,
)


def seeded_normal(shape, seed: int, device) -> torch.Tensor:
    """N(0, 1) tensor of ``shape`` on ``device``, reproducible from ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return torch.randn(shape, generator=g, device=device)


def _per_element(v: torch.Tensor, ndim_total: int) -> torch.Tensor:
    return v.reshape(-1, *[1] * (ndim_total - 1))


# ---------------------------------------------------------------- class intensities
def sample_intensity(batch: int, n_classes: int, ndim: int, cfg, generator, device=None) -> dict:
    """Per-class Gaussian parameters and texture fields.

    Returns dict with ``means`` (B, C) ~ U(cfg.intensity_mean), ``sds`` (B, C) ~
    U(0, cfg.max_intensity_sd), ``texture_angle`` (B, C) mixing two smooth texture fields per
    class, ``texture`` (B, 2, *[cfg.texture_grid]*ndim) coarse N(0,1) fields (None if off).
    """
    lo, hi = cfg.intensity_mean
    out = {
        "means": uniform((batch, n_classes), lo, hi, generator, device),
        "sds": uniform((batch, n_classes), 0, cfg.max_intensity_sd, generator, device),
        "texture_angle": None, "texture": None,
    }
    if cfg.texture:
        out["texture_angle"] = uniform((batch, n_classes), 0, 6.283185307, generator, device)
        out["texture"] = normal((batch, 2) + (cfg.texture_grid,) * ndim, generator, device)
    return out


def apply_intensity(classes: torch.Tensor, means, sds, white=None, texture=None,
                    texture_angle=None, texture_weight: float = 0.5) -> torch.Tensor:
    """Class-wise Gaussian image.

    ``x = mean[c] + sd[c] * eps`` with ``eps = sqrt(1-w) * white + sqrt(w) * smooth_c``,
    ``smooth_c = cos(a_c) T1 + sin(a_c) T2`` two unit-variance smooth fields (texture).

    classes : (B, 1, *sp) long generation class; means, sds, texture_angle : (B, C);
    white : (B, 1, *sp) N(0,1) or None; texture : (B, 2, *coarse) or None.
    """
    B = classes.shape[0]
    idx = classes.reshape(B, -1)
    image = means.gather(1, idx)
    eps = None
    if white is not None:
        eps = white.reshape(B, -1)
    if texture is not None:
        fields = smooth_upsample(texture, classes.shape[2:]).reshape(B, 2, -1)
        fields = (fields - fields.mean(-1, keepdim=True)) / fields.std(-1, keepdim=True).clamp_min(1e-6)
        a = texture_angle.gather(1, idx)
        smooth = a.cos() * fields[:, 0] + a.sin() * fields[:, 1]
        w = texture_weight
        eps = smooth * w**0.5 if eps is None else eps * (1 - w) ** 0.5 + smooth * w**0.5
    if eps is not None:
        image = image + sds.gather(1, idx) * eps
    return image.reshape(classes.shape).float()


# ---------------------------------------------------------------- bias field, gamma
def sample_bias(batch: int, ndim: int, cfg, generator, device=None) -> torch.Tensor:
    """Coarse multiplicative bias (B, 1, *[cfg.bias_grid]*ndim): ``1 + a * U(-1, 1)`` with a
    per-element amplitude ``a ~ U(0, cfg.max_bias)``."""
    amp = uniform((batch,) + (1,) * (ndim + 1), 0, cfg.max_bias, generator, device)
    return 1 + amp * uniform((batch, 1) + (cfg.bias_grid,) * ndim, -1, 1, generator, device)


def apply_bias(image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """Multiply by the cubic-B-spline upsampled bias field."""
    return image * smooth_upsample(coarse, image.shape[2:])


def sample_gamma(batch: int, cfg, generator, device=None) -> torch.Tensor:
    """(B,) log of the gamma exponent, N(0, cfg.gamma_std)."""
    return cfg.gamma_std * normal((batch,), generator, device)


def apply_gamma(image: torch.Tensor, log_gamma: torch.Tensor) -> torch.Tensor:
    """Min-max rescale each element to [0, 1], then raise to ``exp(log_gamma)``."""
    B = image.shape[0]
    flat = image.reshape(B, -1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    flat = (flat - lo) / (hi - lo).clamp_min(1e-12)
    return flat.clamp_min(0).pow(log_gamma.exp()[:, None]).reshape(image.shape)


# ---------------------------------------------------------------- blur, low resolution
def sample_resolution(batch: int, ndim: int, cfg, generator, device=None) -> dict:
    """Blur FWHM and low-resolution factor per element and axis, each (B, ndim).

    Blur FWHM ~ U(0, cfg.max_blur_fwhm) voxels (0 if blur is off). With probability
    ``cfg.lowres_probability`` an element is acquired at low resolution: with probability
    ``cfg.thick_slice_probability`` only one random axis (thick slices), otherwise every axis,
    with factors U(1, cfg.max_lowres_factor); factor 1 elsewhere.
    """
    fwhm = uniform((batch, ndim), 0, cfg.max_blur_fwhm, generator, device)
    if not cfg.blur:
        fwhm = torch.zeros_like(fwhm)
    factor = uniform((batch, ndim), 1, cfg.max_lowres_factor, generator, device)
    applied = bernoulli((batch, 1), cfg.lowres_probability, generator, device)
    thick = bernoulli((batch, 1), cfg.thick_slice_probability, generator, device)
    axis = torch.randint(0, ndim, (batch, 1), generator=generator, device=generator.device)
    one_axis = torch.arange(ndim, device=device)[None] == axis.to(device)
    keep = applied & (~thick | one_axis) if cfg.lowres else torch.zeros_like(one_axis)
    return {"fwhm": fwhm, "factor": torch.where(keep, factor, torch.ones_like(factor))}


def apply_resolution(image: torch.Tensor, fwhm: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Separable blur + low-resolution acquisition and linear upsampling (see
    :func:`l2s_pipelines.synth.sampling.resolution_matrix`); identity where fwhm=0, factor=1."""
    mats = []
    for axis, n in enumerate(image.shape[2:]):
        identity = bool(((fwhm[:, axis] <= 0) & (factor[:, axis] <= 1)).all())
        mats.append(None if identity else resolution_matrix(n, fwhm[:, axis], factor[:, axis]))
    return apply_along_axes(image, mats)


# ---------------------------------------------------------------- noise
def sample_noise_sd(batch: int, cfg, generator, device=None) -> torch.Tensor:
    """(B,) noise standard deviation ~ U(0, cfg.max_noise_sd)."""
    return uniform((batch,), 0, cfg.max_noise_sd, generator, device)


def apply_noise(image: torch.Tensor, sd: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``image + sd * eps`` with eps (B, 1, *sp) ~ N(0, 1) and sd (B,)."""
    return image + _per_element(sd, image.dim()) * eps


def corrupt_noise(image: torch.Tensor, sigma, generator: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise (synthetic noise experiments).

    image : (B, 1, *spatial); sigma : float or (B,) tensor (per element standard deviation);
    generator : torch.Generator (draws on its own device). Returns a new tensor, not clipped.
    """
    sd = torch.as_tensor(sigma, dtype=image.dtype, device=image.device)
    if sd.dim() == 1:
        sd = _per_element(sd, image.dim())
    eps = torch.randn(image.shape, generator=generator, device=generator.device).to(image)
    return image + sd * eps
