"""Label-driven affine registration of a subject to a template (pure torch).

The subject's segmentation is reduced to soft tissue maps (CSF, grey matter, white matter) and
a 12-parameter affine is fitted, multi-resolution with Adam, so that the subject's maps sampled
at template positions match the template's tissue probability maps (mean squared error).

Conventions: all affines are 4x4 arrays in world RAS millimetres. ``matrix`` maps a point of
template space to the corresponding point of subject space (the "fixed -> moving" direction that
ITK/ANTs transform files store: resampling the subject into the template grid reads the subject
at ``matrix @ x_template``). ITK files use LPS, converted here on write/read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from l2s_pipelines.errors import InputError

TISSUES = ("CSF", "GM", "WM")
_TISSUE_OF_CLASS = {"csf": 0, "cortex": 1, "deep_grey": 1, "white_matter": 2, "brainstem": 2}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
TRANSLATION_SCALE_MM = 50.0  # one unit of the optimised translation parameters, in mm


@dataclass(frozen=True)
class AffineRegistration:
    """Result of :func:`register_affine`.

    ``matrix``: (4, 4) template world -> subject world (RAS mm). ``losses``: final MSE at each
    resolution level.
    """

    matrix: np.ndarray
    losses: list[float] = field(default_factory=list)

    @property
    def subject_to_template(self) -> np.ndarray:
        """(4, 4) subject world -> template world (RAS mm)."""
        return np.linalg.inv(self.matrix)

    @property
    def scale_determinant(self) -> float:
        """det of the linear part of template -> subject: subject volume per template volume."""
        return float(np.linalg.det(self.matrix[:3, :3]))


def tissue_of_labels(table) -> list[int]:
    """Tissue index (0 CSF, 1 GM, 2 WM, -1 none) of each output channel of a LabelTable.

    Cerebellar labels (tissue class ``cerebellum``) split by name: white matter -> WM, else GM.
    """
    out = []
    for name, tissue in zip(table.names, table.tissue):
        if tissue == "cerebellum":
            out.append(2 if "white" in name.lower() else 1)
        else:
            out.append(_TISSUE_OF_CLASS.get(tissue, -1))
    return out


def tissue_maps_from_labels(dseg: np.ndarray, table) -> np.ndarray:
    """One-hot tissue maps from a label-value volume.

    dseg: (X, Y, Z) integer label values. Returns float32 (3, X, Y, Z) in TISSUES order.
    """
    lut = np.full(int(max(max(table.values), int(dseg.max()), 0)) + 1, -1, dtype=np.int64)
    for value, tissue in zip(table.values, tissue_of_labels(table)):
        lut[value] = tissue
    classes = lut[np.clip(dseg.astype(np.int64), 0, None)]
    return np.stack([(classes == k) for k in range(len(TISSUES))]).astype(np.float32)


def tissue_maps_from_posteriors(posteriors: np.ndarray, table) -> np.ndarray:
    """Soft tissue maps from posteriors (X, Y, Z, K) in label-table order -> (3, X, Y, Z)."""
    tissue = np.asarray(tissue_of_labels(table))
    if posteriors.shape[-1] != len(tissue):
        raise InputError(f"posteriors have {posteriors.shape[-1]} channels, labels {len(tissue)}")
    maps = [posteriors[..., tissue == k].sum(axis=-1) for k in range(len(TISSUES))]
    return np.stack(maps).astype(np.float32)


def _pool(maps: torch.Tensor, affine: np.ndarray, voxel_mm: float) -> tuple[torch.Tensor, np.ndarray]:
    """Average-pool (C, X, Y, Z) maps to about ``voxel_mm``; returns maps and their affine."""
    size = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    factors = [max(1, int(round(voxel_mm / s))) for s in size]
    pooled = F.avg_pool3d(maps[None], kernel_size=factors, stride=factors, ceil_mode=True)[0]
    scale = np.diag([*factors, 1.0]).astype(float)
    scale[:3, 3] = (np.asarray(factors) - 1) / 2.0
    return pooled, affine @ scale


def _world_grid(shape, affine: np.ndarray) -> torch.Tensor:
    """World coordinates (mm) of every voxel centre: (X, Y, Z, 3) float64."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape],
                                     indexing="ij"), dim=-1)
    aff = torch.as_tensor(affine, dtype=torch.float64)
    return idx @ aff[:3, :3].T + aff[:3, 3]


def _centre(maps: torch.Tensor, world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre of mass (3,) and total mass of the summed tissue maps on a world grid."""
    w = maps.sum(0).to(torch.float64)
    mass = w.sum()
    if mass <= 0:
        raise InputError("tissue maps are empty: nothing to register")
    return (world * w[..., None]).sum(dim=(0, 1, 2)) / mass, mass


def sample_at_world(volume: torch.Tensor, affine: np.ndarray, points: torch.Tensor, *,
                    mode: str = "bilinear") -> torch.Tensor:
    """Sample (C, X, Y, Z) ``volume`` at world points (..., 3) mm; outside -> 0.

    mode "bilinear" (trilinear in 3D) or "nearest". Returns (C, ...).
    """
    inv = torch.as_tensor(np.linalg.inv(affine), dtype=points.dtype)
    vox = points @ inv[:3, :3].T + inv[:3, 3]
    size = torch.tensor(volume.shape[1:], dtype=points.dtype)
    norm = 2.0 * vox / (size - 1).clamp(min=1) - 1.0
    grid = norm.flip(-1).reshape(1, -1, 1, 1, 3).to(volume.dtype)  # grid_sample wants (z, y, x)
    out = F.grid_sample(volume[None], grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.reshape(volume.shape[0], *points.shape[:-1])


def _compose(params: torch.Tensor, base: torch.Tensor, c_t: torch.Tensor,
             c_s: torch.Tensor) -> torch.Tensor:
    """4x4 template->subject: x_s = L (x_t - c_t) + c_s + t, L = base (I + P)."""
    lin = base @ (torch.eye(3, dtype=params.dtype) + params[:9].reshape(3, 3))
    trans = c_s + params[9:] * TRANSLATION_SCALE_MM - lin @ c_t
    top = torch.cat([lin, trans[:, None]], dim=1)
    return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=params.dtype)], dim=0)


def register_affine(moving: np.ndarray, moving_affine: np.ndarray, fixed: np.ndarray,
                    fixed_affine: np.ndarray, *, levels=((6.0, 150), (3.0, 100)),
                    lr: float = 0.01) -> AffineRegistration:
    """Fit a 12-parameter affine that maps ``fixed`` (template) points to ``moving`` (subject).

    moving: (C, X, Y, Z) subject tissue maps with its (4, 4) voxel->world affine (RAS mm);
    fixed: (C, X', Y', Z') template tissue maps (same channel order) with its affine.
    levels: (voxel size in mm of the working grid, Adam steps) from coarse to fine; the learning
    rate decays linearly from ``lr`` to ``lr / 20`` within each level. Initialisation: centres
    of mass aligned and isotropic scale from the ratio of total tissue volumes.
    """
    if moving.ndim != 4 or fixed.ndim != 4 or moving.shape[0] != fixed.shape[0]:
        raise InputError(f"registration needs (C,X,Y,Z) maps, got {moving.shape} and {fixed.shape}")
    mov_full = torch.as_tensor(np.ascontiguousarray(moving), dtype=torch.float32)
    fix_full = torch.as_tensor(np.ascontiguousarray(fixed), dtype=torch.float32)
    c_s, m_s = _centre(mov_full, _world_grid(mov_full.shape[1:], moving_affine))
    c_t, m_t = _centre(fix_full, _world_grid(fix_full.shape[1:], fixed_affine))
    vol_ratio = (m_s * abs(np.linalg.det(moving_affine[:3, :3]))) / (
        m_t * abs(np.linalg.det(fixed_affine[:3, :3])))
    base = torch.eye(3, dtype=torch.float64) * float(vol_ratio) ** (1.0 / 3.0)
    params = torch.zeros(12, dtype=torch.float64, requires_grad=True)
    losses = []
    for voxel_mm, steps in levels:
        mov, mov_aff = _pool(mov_full, moving_affine, voxel_mm)
        fix, fix_aff = _pool(fix_full, fixed_affine, voxel_mm)
        points = _world_grid(fix.shape[1:], fix_aff).reshape(-1, 3)
        target = fix.reshape(fix.shape[0], -1)
        opt = torch.optim.Adam([params], lr=lr)
        sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.05, total_iters=max(1, steps))
        loss = torch.tensor(float("nan"))
        for _ in range(int(steps)):
            opt.zero_grad()
            mat = _compose(params, base, c_t, c_s)
            warped = sample_at_world(mov, mov_aff, points @ mat[:3, :3].T + mat[:3, 3])
            loss = ((warped - target) ** 2).mean()
            loss.backward()
            opt.step()
            sched.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        matrix = _compose(params, base, c_t, c_s).numpy().copy()
    return AffineRegistration(matrix=matrix, losses=losses)


def resample_labels(dseg: np.ndarray, dseg_affine: np.ndarray, matrix: np.ndarray,
                    shape, affine: np.ndarray, *, chunk: int = 16) -> np.ndarray:
    """Nearest-neighbour resampling of a label volume into a template grid.

    dseg: (X, Y, Z) integer labels (subject grid, ``dseg_affine``); matrix: (4, 4) template
    world -> subject world; shape/affine: template grid. Returns int16 (X', Y', Z'); outside
    the subject field of view -> 0. Processed in slabs of ``chunk`` template slices.
    """
    vol = torch.as_tensor(dseg.astype(np.float32))[None]
    mat = torch.as_tensor(matrix, dtype=torch.float64)
    out = np.zeros(tuple(shape), dtype=np.int16)
    for start in range(0, shape[0], chunk):
        stop = min(shape[0], start + chunk)
        shift = np.eye(4)
        shift[0, 3] = start
        pts = _world_grid((stop - start, *shape[1:]), affine @ shift)
        pts = pts @ mat[:3, :3].T + mat[:3, 3]
        out[start:stop] = sample_at_world(vol, dseg_affine, pts, mode="nearest")[0].numpy()
    return out


def write_itk_affine(path: str | Path, matrix: np.ndarray) -> Path:
    """Write a (4, 4) RAS template->subject matrix as an ITK text AffineTransform (LPS).

    The file is what ``antsApplyTransforms -r template -i subject -t file`` expects.
    """
    lps = _RAS_TO_LPS @ np.asarray(matrix, dtype=float) @ _RAS_TO_LPS
    values = " ".join(repr(float(v)) for v in [*lps[:3, :3].ravel(), *lps[:3, 3]])
    text = ("#Insight Transform File V1.0\n#Transform 0\n"
            "Transform: AffineTransform_double_3_3\n"
            f"Parameters: {values}\nFixedParameters: 0 0 0\n")
    path = Path(path)
    path.write_text(text)
    return path


def read_itk_affine(path: str | Path) -> np.ndarray:
    """Read an ITK text affine (MatrixOffset/Affine, with centre) -> (4, 4) RAS matrix."""
    path = Path(path)
    fields = {}
    for line in path.read_text().splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key.strip()] = value.split()
    try:
        kind = fields["Transform"][0]
        params = np.array(fields["Parameters"], dtype=float)
        centre = np.array(fields.get("FixedParameters", ["0", "0", "0"]), dtype=float)
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"{path}: not an ITK text transform ({exc})") from exc
    if not kind.startswith(("AffineTransform", "MatrixOffsetTransformBase")) or params.size != 12:
        raise InputError(f"{path}: unsupported transform {kind} with {params.size} parameters")
    lin, trans = params[:9].reshape(3, 3), params[9:]
    lps = np.eye(4)
    lps[:3, :3] = lin
    lps[:3, 3] = trans + centre - lin @ centre  # ITK: y = A (x - c) + c + t
    return _RAS_TO_LPS @ lps @ _RAS_TO_LPS
