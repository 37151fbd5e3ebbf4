"""SynthSeg-style generator: label maps -> (random-contrast image, segmentation target).

Cornucopia-style split: :meth:`SynthGenerator.sample` draws every random parameter (one per
batch element, as tensors) from a ``torch.Generator``; :meth:`SynthGenerator.apply` is
deterministic given those parameters. Everything is batched over the first dimension (one
``grid_sample`` for the whole batch, per-element operators as batched matrices), works in 2D
and 3D and on any device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from l2s_pipelines.io.preprocess import normalise_intensity
from l2s_pipelines.labels import IGNORE_INDEX, LabelTable, generation_classes
from l2s_pipelines.lr_merge import encode_merged
from l2s_pipelines.synth import intensity as inten
from l2s_pipelines.synth import spatial
from l2s_pipelines.synth.sampling import bernoulli, new_seed


@dataclass(frozen=True)
class SynthConfig:
    """Switches and ranges of every generator step.

    Units: spatial ranges are fractions of the field of view or degrees; resolution and blur are
    in **millimetres** and converted with ``voxel_size_mm`` (the training grid's spacing), so a
    prior means the same at any training voxel size; intensities are in units of the [0, 1]
    class means. Defaults follow SynthSeg's code (BBillot/SynthSeg ``brain_generator``):
    class means U(0, 250)/255, sds U(0, 30)/255, bias field std U(0, 0.7) exponentiated, gamma
    exp(N(0, 0.5)), resolution untouched in 5% of samples, U(1, 4) mm isotropic in 10%, else
    U(1, 8) mm along one random axis, blur matched to the simulated acquisition.
    """

    voxel_size_mm: float = 1.0  # spacing of the training grid the maps are sampled on
    affine: bool = True
    max_translation: float = 0.05  # fraction of FOV
    max_rotation_deg: float = 15.0
    max_shear: float = 0.012
    max_zoom: float = 0.2  # scale in 1 +/- max_zoom
    elastic: bool = True
    max_elastic: float = 0.03  # displacement amplitude, fraction of FOV
    elastic_grid: int = 8  # control points per axis
    intensity_mean: tuple[float, float] = (0.0, 250 / 255)
    max_intensity_sd: float = 30 / 255
    texture: bool = True
    texture_weight: float = 0.5  # share of the within-class variance that is smooth texture
    texture_grid: int = 8
    background_zero_probability: float = 0.2  # share of samples whose background class is 0
    skull_strip_probability: float = 0.0  # share of samples with extracerebral labels -> background
    bias: bool = True
    max_bias: float = 0.7  # std of the log bias field ~ U(0, max_bias), field = exp(N(0, std))
    bias_grid: int = 4
    gamma: bool = True
    gamma_std: float = 0.5  # std of log(gamma)
    blur: bool = True  # blur matched to the simulated acquisition (FWHM = slice spacing)
    lowres: bool = True  # downsample to the simulated acquisition, then back to the grid
    max_thick_slice_mm: float = 8.0  # thick slices: U(voxel, max) mm along one random axis
    max_iso_res_mm: float = 4.0  # isotropic low resolution: U(voxel, max) mm
    untouched_probability: float = 0.05
    iso_probability: float = 0.10  # otherwise (1 - untouched - iso): thick slices
    noise: bool = True
    max_noise_sd: float = 0.04
    rescale: bool = True
    percentiles: tuple[float, float] = (1.0, 99.0)
    flip: bool = True
    flip_probability: float = 0.5
    flip_axis: int = 0  # spatial axis that is left-right (axis 0 in RAS; None-like: use flip=False)
    crop: bool = True  # random patch position (centred when False)
    patch_size: tuple[int, ...] | None = None  # None: output has the input's spatial shape

    @classmethod
    def mild(cls, **kw) -> "SynthConfig":
        """Milder priors (the bundled model's recipe; see benchmarks/RESULTS.md): SynthSeg's
        spatial and resolution priors in mm, milder bias, gamma and noise, and a share of
        skull-stripped samples."""
        d = dict(max_bias=0.4, gamma_std=0.4, max_noise_sd=0.03, skull_strip_probability=0.3)
        d.update(kw)
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown generator settings {unknown} (resolution and blur are in mm "
                             f"since 0.3: max_thick_slice_mm, max_iso_res_mm)")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    @classmethod
    def all_off(cls, **kw) -> "SynthConfig":
        """Every random step off (only class intensities remain); override with ``kw``."""
        off = dict(affine=False, elastic=False, texture=False, bias=False, gamma=False,
                   blur=False, lowres=False, noise=False, rescale=False, flip=False, crop=False,
                   max_intensity_sd=0.0, background_zero_probability=0.0,
                   skull_strip_probability=0.0)
        off.update(kw)
        return cls(**off)


@dataclass
class SynthParams:
    """Parameters of one generated batch (tensors with leading dim B; None = step off)."""

    in_shape: tuple[int, ...]
    patch_shape: tuple[int, ...]
    offset: torch.Tensor  # (B, ndim) first input voxel of the patch
    matrix: torch.Tensor | None = None  # (B, ndim, ndim)
    translation: torch.Tensor | None = None  # (B, ndim) fraction of FOV
    elastic: torch.Tensor | None = None  # (B, ndim, *grid) fraction of FOV
    intensity: dict = field(default_factory=dict)  # means, sds, texture_angle, texture
    white_seed: int | None = None  # seed of the within-class white noise
    bias: torch.Tensor | None = None  # (B, 1, *grid)
    log_gamma: torch.Tensor | None = None  # (B,)
    resolution: dict | None = None  # fwhm, factor: (B, ndim)
    noise_sd: torch.Tensor | None = None  # (B,)
    noise_seed: int | None = None
    flip: torch.Tensor | None = None  # (B,) bool
    skull_strip: torch.Tensor | None = None  # (B,) bool: extracerebral labels -> background
    merge_lr: torch.Tensor | None = None  # (B,) bool: left/right-merged targets, never flipped
    background_zero: torch.Tensor | None = None  # (B,) bool: background class intensity 0

    def scalars(self) -> dict:
        """Per-element scalar parameters as Python lists (for logging)."""
        out = {}
        for name in ("noise_sd", "log_gamma", "flip"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v.tolist()
        if self.resolution is not None:
            out.update({k: v.tolist() for k, v in self.resolution.items()})
        return out


class SynthGenerator:
    """SynthSeg-style image synthesis from label maps.

    Parameters
    ----------
    config : SynthConfig
    label_table : LabelTable, optional (default SynthSeg 2.0's 33 labels): defines targets.
    generation : dict[int, int] | path | None
        Label value -> generation class, or a TSV for
        :func:`l2s_pipelines.labels.generation_classes`; None: one class per label with
        left/right merged. Values not covered get a class of their own.

    Call ``gen(label_maps, generator)`` with label maps ``(B, 1, *spatial)`` (integer source
    label values) to get ``image (B, 1, *patch)`` float32 in [0, 1] (when rescaling) and
    ``target (B, *patch)`` long channel indices (IGNORE_INDEX where the source is 255).
    ``merge_lr`` ``(B,)`` bool (optional): elements whose targets are left/right-merged
    (:mod:`l2s_pipelines.lr_merge`; sagittal slices) and which are never flipped.
    """

    def __init__(self, config: SynthConfig | None = None, label_table: LabelTable | None = None,
                 generation=None):
        self.config = config or SynthConfig()
        self.label_table = label_table or LabelTable.default()
        self._generation = generation
        self._luts: dict = {}
        self._flip_lut = self.label_table.channel_flip_lut()

    # ------------------------------------------------------------------ lookup tables
    def _tables(self, max_value: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(class_lut, target_lut, n_classes) covering source values 0..max_value."""
        size = max(max_value, 255) + 1
        key = (size, str(device))
        if key not in self._luts:
            gen = self._generation
            if gen is None or isinstance(gen, (str, Path)):
                gen = generation_classes(range(size), gen)
            n_known = max(gen.values()) + 1 if gen else 0
            cls = torch.arange(size) + n_known  # unknown values: a class of their own
            for v, c in gen.items():
                if 0 <= v < size:
                    cls[v] = c
            target = self.label_table.value_lut(size - 1)
            self._luts[key] = (cls.to(device), target.to(device), n_known + size)
        return self._luts[key]

    # ------------------------------------------------------------------ sample / apply
    def sample(self, label_maps: torch.Tensor, generator: torch.Generator,
               merge_lr: torch.Tensor | None = None) -> SynthParams:
        """Draw the parameters for a batch of label maps (B, 1, *spatial); ``merge_lr`` (B,)
        bool marks elements with left/right-merged targets (not flipped)."""
        cfg = self.config
        B, ndim = label_maps.shape[0], label_maps.dim() - 2
        if ndim not in (2, 3):
            raise ValueError(f"label maps must be (B, 1, *spatial) 2D or 3D, got {tuple(label_maps.shape)}")
        dev = label_maps.device
        in_shape = tuple(label_maps.shape[2:])
        patch = tuple(cfg.patch_size) if cfg.patch_size else in_shape
        if len(patch) != ndim:
            raise ValueError(f"patch_size {patch} does not match {ndim}D label maps")
        _, _, n_classes = self._tables(int(label_maps.max()), dev)
        if cfg.crop:
            offset = spatial.sample_crop(B, in_shape, patch, generator, dev)
        else:
            offset = ((torch.tensor(in_shape, device=dev) - torch.tensor(patch, device=dev)) / 2
                      ).float().expand(B, ndim).clone()
        p = SynthParams(in_shape=in_shape, patch_shape=patch, offset=offset)
        if cfg.affine:
            p.matrix, p.translation = spatial.sample_affine(B, ndim, cfg, generator, dev)
        if cfg.elastic:
            p.elastic = spatial.sample_elastic(B, ndim, cfg, generator, dev)
        p.intensity = inten.sample_intensity(B, n_classes, ndim, cfg, generator, dev)
        if cfg.max_intensity_sd > 0:
            p.white_seed = new_seed(generator)
        if cfg.bias:
            p.bias = inten.sample_bias(B, ndim, cfg, generator, dev)
        if cfg.gamma:
            p.log_gamma = inten.sample_gamma(B, cfg, generator, dev)
        if cfg.blur or cfg.lowres:
            p.resolution = inten.sample_resolution(B, ndim, cfg, generator, dev)
        if cfg.noise:
            p.noise_sd = inten.sample_noise_sd(B, cfg, generator, dev)
            p.noise_seed = new_seed(generator)
        if cfg.flip:
            p.flip = spatial.sample_flip(B, cfg.flip_probability, generator, dev)
        if merge_lr is not None:
            p.merge_lr = merge_lr.to(dev).bool()
            if p.flip is not None:
                p.flip = p.flip & ~p.merge_lr
        if cfg.skull_strip_probability > 0:
            p.skull_strip = bernoulli((B,), cfg.skull_strip_probability, generator, dev)
        if cfg.background_zero_probability > 0:
            p.background_zero = bernoulli((B,), cfg.background_zero_probability, generator, dev)
        return p

    def deform_labels(self, label_maps: torch.Tensor, params: SynthParams) -> torch.Tensor:
        """Deformed, cropped source label maps (B, 1, *patch) long (nearest neighbour)."""
        identity = params.matrix is None and params.elastic is None and \
            params.patch_shape == params.in_shape
        if identity:
            return label_maps.long()
        grid = spatial.deformation_grid(params.in_shape, params.patch_shape, offset=params.offset,
                                        matrix=params.matrix, translation=params.translation,
                                        elastic=params.elastic)
        return spatial.resample_labels(label_maps, grid)

    def apply(self, label_maps: torch.Tensor, params: SynthParams):
        """Deterministic synthesis given ``params``; returns (image, target) as documented."""
        cfg = self.config
        dev = label_maps.device
        src = self.deform_labels(label_maps, params)
        cls_lut, tgt_lut, _ = self._tables(int(label_maps.max()), dev)
        target = tgt_lut[src[:, 0]]
        if params.skull_strip is not None:  # extracerebral (target background) -> source 0
            strip = params.skull_strip.reshape(-1, *[1] * (src.dim() - 1)) & (target[:, None] == 0)
            src = torch.where(strip, torch.zeros_like(src), src)
        classes = cls_lut[src]
        shape = src.shape
        white = None if params.white_seed is None else inten.seeded_normal(shape, params.white_seed, dev)
        it = params.intensity
        means, sds = it["means"], it["sds"]
        if params.background_zero is not None:
            bg = int(cls_lut[0])
            zero = params.background_zero
            means, sds = means.clone(), sds.clone()
            means[:, bg] = torch.where(zero, torch.zeros_like(means[:, bg]), means[:, bg])
            sds[:, bg] = torch.where(zero, torch.zeros_like(sds[:, bg]), sds[:, bg])
        image = inten.apply_intensity(classes, means, sds, white=white,
                                      texture=it.get("texture"), texture_angle=it.get("texture_angle"),
                                      texture_weight=cfg.texture_weight)
        del classes, white
        if params.bias is not None:
            image = inten.apply_bias(image, params.bias)
        if params.log_gamma is not None:
            image = inten.apply_gamma(image, params.log_gamma)
        if params.resolution is not None:
            image = inten.apply_resolution(image, **params.resolution)
        if params.noise_sd is not None:
            eps = inten.seeded_normal(shape, params.noise_seed, dev)
            image = inten.apply_noise(image, params.noise_sd, eps)
        if cfg.rescale:
            image = normalise_intensity(image, cfg.percentiles, batch_dims=1)
        if params.flip is not None:
            axis = cfg.flip_axis
            image = spatial.apply_flip(image, params.flip, 2 + axis)
            flip_lut = self._flip_lut.to(dev)
            swap = params.flip.reshape(-1, *[1] * (target.dim() - 1)) & (target >= 0)
            target = torch.where(swap, flip_lut[target.clamp_min(0)], target)
            target = spatial.apply_flip(target, params.flip, 1 + axis)
        if params.merge_lr is not None and bool(params.merge_lr.any()):
            merged = params.merge_lr.reshape(-1, *[1] * (target.dim() - 1))
            target = torch.where(merged, encode_merged(target, self._flip_lut), target)
        return image.float().contiguous(), target.contiguous()

    def __call__(self, label_maps: torch.Tensor, generator: torch.Generator,
                 merge_lr: torch.Tensor | None = None):
        """``apply(label_maps, sample(label_maps, generator, merge_lr))`` -> (image, target)."""
        with torch.no_grad():
            return self.apply(label_maps, self.sample(label_maps, generator, merge_lr))


__all__ = ["SynthConfig", "SynthParams", "SynthGenerator", "IGNORE_INDEX"]
