"""Bounds on the values of a model manifest, checked before anything is built or allocated.

A manifest comes from a model package the user passes with ``--model``: its sizes must not be
able to drive memory or time without bound. :func:`check_manifest_values` refuses (with a
:class:`~l2s_pipelines.errors.ModelError` naming the manifest and the field) any value outside
these limits, which are generous for real networks (the bundled one: 5 levels of widths 16-64,
2 mm voxels):

=========================  ==============================================================
field                      accepted
=========================  ==============================================================
architecture.ndim          2 or 3
architecture.widths        1 to :data:`MAX_LEVELS` integers, each 1 to :data:`MAX_WIDTH`
convs_per_level            1 to :data:`MAX_CONVS`
architecture.in_channels   2D: odd, 1 to :data:`MAX_IN_CHANNELS` (neighbouring slices); 3D: 1
preprocessing.voxel_size   one or three numbers in mm, :data:`VOXEL_MM_RANGE`
percentiles                two numbers, ``0 <= low < high <= 100``
inference.mode             ``2d``, ``2.5d`` (2D network) or ``3d`` (3D network)
inference.planes           2D: distinct, of ``axial``, ``coronal``, ``sagittal`` (empty: axial)
inference.lr_merged_planes planes trained on left/right-merged labels (sagittal only), not all
inference.patch_size       integers (3 for a 3D network), 1 to :data:`MAX_PATCH` voxels, or absent
inference.overlap          a number in ``[0, MAX_OVERLAP]`` (3D windows per axis <= ~1/(1-o))
inference.blending         ``gaussian`` or ``constant``
labels[].color             ``#rrggbb`` when given
weights                    an object: ``file`` a plain file name (no folder part),
                           ``sha256`` 64 hex digits
=========================  ==============================================================
"""

from __future__ import annotations

import math
import os
import re

from l2s_pipelines.errors import ModelError
from l2s_pipelines.planes import LR_MERGED_PLANES, PLANES

MAX_LEVELS, MAX_WIDTH, MAX_CONVS, MAX_IN_CHANNELS = 8, 512, 4, 9
VOXEL_MM_RANGE = (0.25, 10.0)
MAX_PATCH = 512
MAX_OVERLAP = 0.9
MODES = {"2d": 2, "2.5d": 2, "3d": 3}
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_weights_entry(weights, where) -> None:
    """``weights`` must be ``{"file": plain name, "sha256": 64 hex}`` (``file`` optional)."""
    if not isinstance(weights, dict):
        raise ModelError(f"{where}: manifest 'weights' must be an object with 'file' and 'sha256'")
    name = weights.get("file", "model.safetensors")
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or os.path.basename(name) != name):
        raise ModelError(f"{where}: manifest 'weights.file' must be a plain file name inside the package "
                         "folder (no folder part, no '..')")
    sha = weights.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise ModelError(f"{where}: manifest 'weights.sha256' must be 64 lowercase hex digits")


def _check_architecture(arch, where) -> int:
    if not isinstance(arch, dict):
        raise ModelError(f"{where}: manifest 'architecture' must be an object")
    ndim = arch.get("ndim", 2)
    if ndim not in (2, 3) or not _int(ndim):
        raise ModelError(f"{where}: architecture.ndim must be 2 or 3")
    widths = arch.get("widths")
    if (not isinstance(widths, list) or not 1 <= len(widths) <= MAX_LEVELS
            or not all(_int(w) and 1 <= w <= MAX_WIDTH for w in widths)):
        raise ModelError(f"{where}: architecture.widths must be 1 to {MAX_LEVELS} integers of 1 to {MAX_WIDTH}")
    convs = arch.get("convs_per_level", 2)
    if not _int(convs) or not 1 <= convs <= MAX_CONVS:
        raise ModelError(f"{where}: architecture.convs_per_level must be an integer of 1 to {MAX_CONVS}")
    cin = arch.get("in_channels", 1)
    if not _int(cin) or not 1 <= cin <= (MAX_IN_CHANNELS if ndim == 2 else 1) or cin % 2 == 0:
        raise ModelError(f"{where}: architecture.in_channels must be 1, or for a 2D network an odd number "
                         f"of neighbouring slices up to {MAX_IN_CHANNELS}")
    return ndim


def _check_preprocessing(pre, where) -> None:
    if not isinstance(pre, dict):
        raise ModelError(f"{where}: manifest 'preprocessing' must be an object")
    vox = pre.get("voxel_size_mm", 1.0)
    values = vox if isinstance(vox, list) else [vox]
    lo, hi = VOXEL_MM_RANGE
    if len(values) not in (1, 3) or not all(_number(v) and lo <= v <= hi for v in values):
        raise ModelError(f"{where}: preprocessing.voxel_size_mm must be one or three numbers of {lo} to {hi} mm")
    pct = pre.get("percentiles", [1, 99])
    if (not isinstance(pct, list) or len(pct) != 2 or not all(_number(p) for p in pct)
            or not 0 <= pct[0] < pct[1] <= 100):
        raise ModelError(f"{where}: preprocessing.percentiles must be two numbers 0 <= low < high <= 100")


def _check_inference(inf, ndim: int, where) -> None:
    if not isinstance(inf, dict):
        raise ModelError(f"{where}: manifest 'inference' must be an object")
    mode = inf.get("mode", "2d")
    if not isinstance(mode, str) or MODES.get(mode.lower()) != ndim:
        raise ModelError(f"{where}: inference.mode must be {' or '.join(m for m in MODES if MODES[m] == ndim)} "
                         f"for a {ndim}D network")
    planes = inf.get("planes") or ["axial"]
    if ndim == 2 and (not isinstance(planes, list) or len(set(map(str, planes))) != len(planes)
                      or not all(p in PLANES for p in planes)):
        raise ModelError(f"{where}: inference.planes must be distinct names of {', '.join(sorted(PLANES))}")
    merged = inf.get("lr_merged_planes") or []
    if merged and (ndim != 2 or not isinstance(merged, list) or not set(merged) <= set(LR_MERGED_PLANES)
                   or not set(merged) <= set(planes) or set(planes) <= set(merged)):
        raise ModelError(f"{where}: inference.lr_merged_planes must list planes of inference.planes with "
                         f"left/right-merged labels ({', '.join(LR_MERGED_PLANES)}), leaving at least one "
                         f"plane that tells left from right")
    patch = inf.get("patch_size")  # used by 3D networks only (2D ones predict whole slices)
    if patch is not None and (not isinstance(patch, list) or len(patch) != (3 if ndim == 3 else len(patch))
                              or not all(_int(p) and 1 <= p <= MAX_PATCH for p in patch)):
        raise ModelError(f"{where}: inference.patch_size must be {'3 ' if ndim == 3 else ''}integers of 1 "
                         f"to {MAX_PATCH}")
    overlap = inf.get("overlap", 0.5)
    if not _number(overlap) or not 0 <= overlap <= MAX_OVERLAP:
        raise ModelError(f"{where}: inference.overlap must be a number of 0 to {MAX_OVERLAP}")
    if inf.get("blending", "gaussian") not in ("gaussian", "constant"):
        raise ModelError(f"{where}: inference.blending must be 'gaussian' or 'constant'")
    if not isinstance(inf.get("flip_lr", False), bool):
        raise ModelError(f"{where}: inference.flip_lr must be true or false")


def _label_rows(labels):
    if isinstance(labels, dict) and "labels" in labels:
        labels = labels["labels"]
    return labels if isinstance(labels, list) else []


def check_manifest_values(manifest: dict, where) -> None:
    """Check every bounded field of ``manifest`` (see the module docstring); ``where`` names
    the manifest file in the :class:`ModelError`."""
    check_weights_entry(manifest.get("weights"), where)
    ndim = _check_architecture(manifest.get("architecture"), where)
    _check_preprocessing(manifest.get("preprocessing"), where)
    _check_inference(manifest.get("inference"), ndim, where)
    for i, row in enumerate(_label_rows(manifest.get("labels"))):
        color = row.get("color") if isinstance(row, dict) else None
        if color is not None and (not isinstance(color, str) or not _COLOR.match(color)):
            raise ModelError(f"{where}: the colour of label {i + 1} (in list order) is not a '#rrggbb' colour")
