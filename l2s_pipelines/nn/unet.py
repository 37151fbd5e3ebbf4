"""UNet for 2D and 3D segmentation (no BatchNorm: Learn2Synth's hypergradient needs it gone).

The paper's 2D network: 5 levels of widths 16, 24, 32, 48, 64, two 3x3 convolutions per level,
ELU, no normalisation (about 0.27 M parameters with 24 classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
NORMS = ("none", "instance", "group")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`; serialised into model manifests."""

    ndim: int = 2
    in_channels: int = 1
    out_channels: int = 33
    widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    convs_per_level: int = 2
    activation: str = "elu"
    norm: str = "none"
    kind: str = field(default="unet")

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise ValueError(f"UNet ndim must be 2 or 3, got {self.ndim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose from {NORMS}")
        if len(self.widths) < 1 or self.convs_per_level < 1:
            raise ValueError("UNet needs at least one level and one convolution per level")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        if d.get("kind", "unet") != "unet":
            raise ValueError(f"unsupported architecture kind {d.get('kind')!r}")
        d["widths"] = tuple(d["widths"])
        return cls(**d)


def _norm_layer(norm: str, channels: int, ndim: int) -> nn.Module:
    if norm == "instance":
        return (nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if norm == "group":
        groups = max(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """``n`` x (3^ndim convolution, normalisation, activation)."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig):
        conv = nn.Conv2d if cfg.ndim == 2 else nn.Conv3d
        layers: list[nn.Module] = []
        for i in range(cfg.convs_per_level):
            layers += [conv(cin if i == 0 else cout, cout, 3, padding=1),
                       _norm_layer(cfg.norm, cout, cfg.ndim), ACTIVATIONS[cfg.activation]()]
        super().__init__(*layers)


class UNet(nn.Module):
    """Encoder-decoder with skip connections, 2D or 3D.

    Input ``(B, in_channels, *spatial)``; output logits ``(B, out_channels, *spatial)``.
    Spatial sizes need not be multiples of ``2**(levels-1)``: decoder features are
    interpolated to the skip connection's size.
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else UNetConfig(**kwargs)
        cfg = self.config
        w = cfg.widths
        self.encoders = nn.ModuleList(
            ConvBlock(cfg.in_channels if i == 0 else w[i - 1], w[i], cfg) for i in range(len(w)))
        self.decoders = nn.ModuleList(ConvBlock(w[i + 1] + w[i], w[i], cfg) for i in range(len(w) - 1))
        conv = nn.Conv2d if cfg.ndim == 2 else nn.Conv3d
        self.head = conv(w[0], cfg.out_channels, 1)
        self._pool = F.max_pool2d if cfg.ndim == 2 else F.max_pool3d
        self._mode = "bilinear" if cfg.ndim == 2 else "trilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = self._pool(x, 2, ceil_mode=True)
            x = enc(x)
            skips.append(x)
        for i in range(len(self.decoders) - 1, -1, -1):
            skip = skips[i]
            x = F.interpolate(x, size=skip.shape[2:], mode=self._mode, align_corners=False)
            x = self.decoders[i](torch.cat([x, skip], dim=1))
        return self.head(x)


def build_unet(architecture: dict) -> UNet:
    """Build a UNet from a manifest's ``architecture`` dict (see :meth:`UNetConfig.to_dict`)."""
    return UNet(UNetConfig.from_dict(architecture))
