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
    """Coarse multiplicative bias (B, 1, *[cfg.bias_grid]*ndim): ``exp(s * N(0, 1))`` with a
    per-element log-field std ``s ~ U(0, cfg.max_bias)`` (SynthSeg's exponentiated field)."""
    std = uniform((batch,) + (1,) * (ndim + 1), 0, cfg.max_bias, generator, device)
    return (std * normal((batch, 1) + (cfg.bias_grid,) * ndim, generator, device)).exp()


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
    """Simulated acquisition per element and axis, in voxels of the training grid, each (B, ndim).

    Drawn in mm (SynthSeg): untouched with probability ``cfg.untouched_probability``; isotropic
    U(v, ``cfg.max_iso_res_mm``) with probability ``cfg.iso_probability``; otherwise thick
    slices U(v, ``cfg.max_thick_slice_mm``) along one random axis of the *3D* head (in 2D, one
    of three axes, so a third of thick-slice samples are thick through the plane and leave the
    slice untouched). ``v = cfg.voxel_size_mm``. Returns ``factor`` = spacing / v (>= 1) and
    ``fwhm`` = extra blur in voxels: 0 when ``cfg.lowres`` (the acquisition operator of
    :func:`~l2s_pipelines.synth.sampling.resolution_matrix` carries the matched slice profile),
    else the slice profile alone (blur without resampling).
    """
    v = float(cfg.voxel_size_mm)
    u = uniform((batch, 1), 0, 1, generator, device)
    iso = (u >= cfg.untouched_probability) & (u < cfg.untouched_probability + cfg.iso_probability)
    thick = u >= cfg.untouched_probability + cfg.iso_probability
    iso_mm = uniform((batch, 1), min(v, cfg.max_iso_res_mm), max(v, cfg.max_iso_res_mm), generator, device)
    thick_mm = uniform((batch, 1), min(v, cfg.max_thick_slice_mm), max(v, cfg.max_thick_slice_mm),
                       generator, device)
    axis = torch.randint(0, 3, (batch, 1), generator=generator, device=generator.device).to(device)
    one_axis = torch.arange(ndim, device=device)[None] == axis
    spacing = torch.full((batch, ndim), v, device=device)
    spacing = torch.where(iso.expand(-1, ndim), iso_mm.expand(-1, ndim), spacing)
    spacing = torch.where(thick & one_axis, thick_mm.expand(-1, ndim), spacing)
    factor = (spacing / v).clamp_min(1.0)
    if cfg.lowres:  # the acquisition operator carries the matched slice profile itself
        return {"fwhm": torch.zeros_like(factor), "factor": factor}
    fwhm = torch.where(factor > 1, factor, torch.zeros_like(factor))  # blur only, same grid
    return {"fwhm": fwhm, "factor": torch.ones_like(factor)}


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
