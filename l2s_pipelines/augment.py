"""Learnable augmenters A_theta for Learn2Synth (2D and 3D, batched, any device).

Cornucopia-style split: ``sample(x, generator) -> draws`` draws every random quantity (one per
batch element) with an explicit :class:`torch.Generator`; ``apply(x, draws)`` is deterministic and
differentiable in the learnable parameters theta. ``forward(x, generator)`` does both. Each augmenter
is the full image-to-image map ``x_s (B, 1, *spatial) -> x_a (B, 1, *spatial)``; nothing is added
twice. Parameters are constrained by reparameterisation, never by clipping.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from l2s_pipelines.nn.unet import UNet, UNetConfig
from l2s_pipelines.synth.sampling import FWHM_TO_SIGMA, apply_along_axes, resolution_matrix


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y)) if y > 0 else -30.0


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def smooth_field(coarse: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Upsample coarse control values ``(B, 1, *grid)`` to a smooth field ``(B, 1, *size)``."""
    mode = "bilinear" if coarse.ndim == 4 else "trilinear"
    return F.interpolate(coarse, size=size, mode=mode, align_corners=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``x (B, C, *sp)`` with one standard deviation per batch element,
    ``sigma (B,)`` in voxels (differentiable in sigma; sigma -> 0 is the identity): the
    generator's own blur operator (:func:`l2s_pipelines.synth.sampling.resolution_matrix` at the
    full resolution) along every axis. Same code in 2D and 3D."""
    fwhm = sigma / FWHM_TO_SIGMA
    full = torch.ones_like(fwhm)
    return apply_along_axes(x, [resolution_matrix(n, fwhm, full) for n in x.shape[2:]])


class ParametricAugmenter(nn.Module):
    """Gaussian noise, a multiplicative bias field and optionally gamma and blur, with learnable
    strengths.

    ``x_a = blur_b(x_bias ** gamma_b) + sigma * eps`` with ``x_bias = x * exp(sum_j e_j * f_j)``: the
    bias field is the product of three smooth random fields ``exp(f_j)`` (control grids of
    ``bias_grids`` points per axis, values N(0, 1), drawn per batch element) raised to learnable
    exponents ``e_j = bias_max * sigmoid(r_j)`` in ``(0, bias_max)``. Gamma (``gamma=True``): per
    element ``gamma_b = exp(g * z_b)``, ``z_b ~ N(0, 1)``, learnable spread ``g = softplus(.) >= 0``
    (SynthSeg draws exp(N(0, 0.5))). Blur (``blur=True``): a Gaussian of per-element standard
    deviation ``s * v_b`` voxels, ``v_b ~ U(0, 1)``, learnable upper end ``s = blur_max *
    sigmoid(.)`` in ``(0, blur_max)`` voxels (a softer image, as from a lower acquisition
    resolution). Noise: ``sigma = softplus(s) >= 0``; with ``sigma_range=True`` two learnable
    bounds ``lo = softplus(a)``, ``hi = lo + softplus(b)`` and a per-element ``sigma = lo + (hi-lo) u``,
    ``u ~ U(0, 1)``. Intensities are in the generator's [0, 1] units; the output is not clipped.

    Parameters
    ----------
    ndim: 2 or 3.
    noise, bias, gamma, blur: switch each component on or off (gamma and blur off by default).
    sigma_init: start value of sigma (with a range: of ``lo``; ``hi`` starts at ``sigma_init + range_init``).
    bias_init: start value of every exponent (must lie in ``(0, bias_max)``).
    bias_grids: control-grid sizes of the three scales (points per axis).
    gamma_init: start value of the spread ``g`` of log-gamma (> 0).
    blur_init, blur_max: start value and bound of the blur's upper end ``s`` (voxels, ``0 < init < max``).
    """

    def __init__(self, ndim: int = 2, *, noise: bool = True, bias: bool = True, sigma_init: float = 0.05,
                 sigma_range: bool = False, range_init: float = 0.05, bias_init: float = 0.1,
                 bias_max: float = 1.0, bias_grids: tuple[int, int, int] = (2, 4, 8),
                 gamma: bool = False, gamma_init: float = 0.05, blur: bool = False,
                 blur_init: float = 0.5, blur_max: float = 2.0):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if not 0 < bias_init < bias_max:
            raise ValueError(f"bias_init={bias_init} must lie in (0, bias_max={bias_max})")
        if blur and not 0 < blur_init < blur_max:
            raise ValueError(f"blur_init={blur_init} must lie in (0, blur_max={blur_max})")
        if gamma and not gamma_init > 0:
            raise ValueError(f"gamma_init={gamma_init} must be > 0")
        self.ndim, self.noise, self.bias, self.sigma_range = ndim, noise, bias, sigma_range
        self.gamma, self.blur = gamma, blur
        self.bias_max, self.bias_grids, self.blur_max = float(bias_max), tuple(bias_grids), float(blur_max)
        if noise:
            self.sigma_raw = nn.Parameter(torch.tensor(_inv_softplus(sigma_init)))
            if sigma_range:
                self.width_raw = nn.Parameter(torch.tensor(_inv_softplus(range_init)))
        if bias:
            self.bias_raw = nn.Parameter(torch.full((len(bias_grids),), _logit(bias_init / bias_max)))
        if gamma:
            self.gamma_raw = nn.Parameter(torch.tensor(_inv_softplus(gamma_init)))
        if blur:
            self.blur_raw = nn.Parameter(torch.tensor(_logit(blur_init / blur_max)))

    # constrained parameters -------------------------------------------------------------------
    def sigma_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)`` of the noise sigma (equal without a range)."""
        lo = F.softplus(self.sigma_raw)
        hi = lo + F.softplus(self.width_raw) if self.sigma_range else lo
        return lo, hi

    def bias_exponents(self) -> torch.Tensor:
        """Exponents ``(3,)`` of the three bias-field scales, in ``(0, bias_max)``."""
        return self.bias_max * torch.sigmoid(self.bias_raw)

    def gamma_spread(self) -> torch.Tensor:
        """Standard deviation ``g >= 0`` of log-gamma."""
        return F.softplus(self.gamma_raw)

    def blur_upper(self) -> torch.Tensor:
        """Upper end ``s`` of the per-element blur standard deviation, in voxels, in ``(0, blur_max)``."""
        return self.blur_max * torch.sigmoid(self.blur_raw)

    # random draws and deterministic map ------------------------------------------------------
    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Draw ``eps (B,1,*sp)``, ``u (B,)``, coarse fields ``field{j} (B,1,*grid_j)``, and with
        gamma / blur ``z_gamma (B,)`` ~ N(0, 1) / ``v_blur (B,)`` ~ U(0, 1)."""
        b, sp = x.shape[0], x.shape[2:]
        kw = dict(generator=generator, device=x.device, dtype=x.dtype)
        draws: dict[str, torch.Tensor] = {}
        if self.noise:
            draws["eps"] = torch.randn(x.shape, **kw)
            draws["u"] = torch.rand((b,), **kw)
        if self.bias:
            for j, n in enumerate(self.bias_grids):
                draws[f"field{j}"] = torch.randn((b, 1) + (n,) * len(sp), **kw)
        if self.gamma:
            draws["z_gamma"] = torch.randn((b,), **kw)
        if self.blur:
            draws["v_blur"] = torch.rand((b,), **kw)
        return draws

    def apply(self, x: torch.Tensor, draws: dict) -> torch.Tensor:
        """Deterministic map ``(B, 1, *sp) -> (B, 1, *sp)`` given :meth:`sample`'s draws."""
        out = x
        if self.bias:
            e = self.bias_exponents().to(x.dtype)
            log_field = sum(e[j] * smooth_field(draws[f"field{j}"], tuple(x.shape[2:]))
                            for j in range(len(self.bias_grids)))
            out = out * torch.exp(log_field)
        if self.gamma:
            exponent = torch.exp(self.gamma_spread().to(x.dtype) * draws["z_gamma"])
            out = out.clamp_min(1e-4) ** exponent.view(-1, *([1] * (x.ndim - 1)))
        if self.blur:
            out = gaussian_blur(out, self.blur_upper().to(x.dtype) * draws["v_blur"])
        if self.noise:
            lo, hi = self.sigma_bounds()
            sigma = (lo + (hi - lo) * draws["u"]).to(x.dtype) if self.sigma_range else lo.to(x.dtype).expand(x.shape[0])
            out = out + sigma.view(-1, *([1] * (x.ndim - 1))) * draws["eps"]
        return out

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x, generator))

    def parameters_log(self) -> dict[str, float]:
        """Current constrained values, e.g. ``{"noise_sigma": 0.05, "bias_exponent_0": 0.1, ...,
        "gamma_spread": 0.05, "blur_max_vox": 0.5}``."""
        out: dict[str, float] = {}
        with torch.no_grad():
            if self.noise:
                lo, hi = self.sigma_bounds()
                if self.sigma_range:
                    out.update(noise_sigma_lo=float(lo), noise_sigma_hi=float(hi))
                out["noise_sigma"] = float((lo + hi) / 2)
            if self.bias:
                for j, e in enumerate(self.bias_exponents().tolist()):
                    out[f"bias_exponent_{j}"] = float(e)
            if self.gamma:
                out["gamma_spread"] = float(self.gamma_spread())
            if self.blur:
                out["blur_max_vox"] = float(self.blur_upper())
        return out


class NonparametricAugmenter(nn.Module):
    """Residual UNet ``x_a = x + bound * tanh(UNet([x, xi]))`` with ``xi ~ N(0, 1)`` per voxel.

    The UNet's last (1x1) layer starts at zero, so the augmenter is the identity at initialisation;
    the residual is bounded by ``bound`` (intensity units, images in [0, 1]).
    """

    def __init__(self, ndim: int = 2, *, widths: tuple[int, ...] = (8, 16, 16), bound: float = 0.5,
                 activation: str = "elu"):
        super().__init__()
        self.ndim, self.bound = ndim, float(bound)
        self.net = UNet(UNetConfig(ndim=ndim, in_channels=2, out_channels=1, widths=tuple(widths),
                                   activation=activation, norm="none"))
        nn.init.zeros_(self.net.head.weight)
        nn.init.zeros_(self.net.head.bias)
        self._last_residual_rms = 0.0

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Draw the noise channel ``xi (B, 1, *sp)``."""
        return {"xi": torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)}

    def apply(self, x: torch.Tensor, draws: dict) -> torch.Tensor:
        """Deterministic map ``(B, 1, *sp) -> (B, 1, *sp)`` given :meth:`sample`'s draws."""
        residual = self.bound * torch.tanh(self.net(torch.cat([x, draws["xi"]], dim=1)))
        self._last_residual_rms = float(residual.detach().pow(2).mean().sqrt())
        return x + residual

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x, generator))

    def parameters_log(self) -> dict[str, float]:
        """``{"residual_rms": ..., "head_weight_norm": ...}`` (RMS of the last residual applied)."""
        with torch.no_grad():
            head = torch.cat([self.net.head.weight.flatten(), self.net.head.bias.flatten()])
            return {"residual_rms": self._last_residual_rms, "head_weight_norm": float(head.norm())}


def build_augmenter(kind: str, ndim: int, options: dict | None = None) -> nn.Module:
    """``kind``: ``parametric`` or ``nonparametric``; ``options``: keyword arguments of the class."""
    options = dict(options or {})
    if kind == "parametric":
        return ParametricAugmenter(ndim, **options)
    if kind == "nonparametric":
        if "widths" in options:
            options["widths"] = tuple(options["widths"])
        return NonparametricAugmenter(ndim, **options)
    raise ValueError(f"unknown augmenter kind {kind!r}; choose parametric or nonparametric")
