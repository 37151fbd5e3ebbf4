"""Segment one NIfTI image with a model package; results on the input's native grid.

Steps of :meth:`Segmenter.segment`: input checks; reorientation to RAS; resampling to the model's
voxel size (``manifest.preprocessing.voxel_size_mm``, linear); percentile intensity
normalisation exactly as at training (:func:`~l2s_pipelines.io.preprocess.normalise_intensity`);
crop to the bounding box of non-zero normalised intensity (plus a margin); prediction (2D slices,
2.5D = mean of softmax over planes, 3D sliding window; with the manifest's
``inference.flip_lr``, averaged with the prediction of the left-right mirrored volume, mirrored
back with left and right labels swapped); with ``inference.cleanup``, the posteriors cleaned by
connected components on the model grid (:mod:`.cleanup`); model-space posteriors mapped back to
the native grid (:mod:`.resample`), renormalised, argmax -> label values.

Memory: the model-space posteriors cover the crop box only (float16 when large), and the native
result is made slab by slab along the first native axis, accumulating labels, per-label
posterior sums (soft volumes) and confidence statistics, so no ``(X, Y, Z, K)`` float32 array
exists unless posteriors are asked for (then float32, or uint8 = 1 byte per value). One byte
budget bounds the big buffers (:mod:`.memory`).
"""

from __future__ import annotations

import math
import time

import nibabel as nib
import numpy as np
import torch

from l2s_pipelines.errors import InputError, ModelError
from l2s_pipelines.inference.cleanup import CLEANUP_STEPS, clean_posteriors
from l2s_pipelines.inference.memory import MemoryPlan
from l2s_pipelines.io.checks import check_input_image
from l2s_pipelines.inference.resample import native_blocks
from l2s_pipelines.inference.result import SegmentationResult
from l2s_pipelines.inference.sliding_window import predict_planes, predict_sliding_window, window_starts
from l2s_pipelines.io.checkpoint import default_model_dir, load_model_package
from l2s_pipelines.io.preprocess import normalise_intensity, reorient_to_ras, resample_to_voxel_size
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.system import cpu_allocation

MODES = {"2d": 2, "2.5d": 2, "3d": 3}
#: Most 3D sliding-window patches one image may need (a 96^3 patch at overlap 0.5 over a 1 mm
#: head needs about 200).
MAX_WINDOWS = 20_000


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> first CUDA device if available, else CPU; a requested CUDA device that does
    not exist raises :class:`InputError` saying what is available."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r}: not a device name (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise InputError(f"device {device!r} requested but {n} CUDA device(s) are available "
                             f"(torch {torch.__version__}); use --device cpu or auto")
    elif dev.type != "cpu":
        raise InputError(f"device {device!r}: unsupported (use auto, cpu, cuda or cuda:N)")
    return dev


class Segmenter:
    """A loaded model package ready to segment images.

    Parameters
    ----------
    model : UNet in eval mode on ``device``; manifest : the package manifest.
    device : torch.device.
    memory_budget_bytes : split into the bounds below by :class:`MemoryPlan` (None: defaults
        made for 1 mm 256^3 images); explicit bounds below override their share.
    activation_budget_bytes : bound on network activations (batch size in 2D, patch in 3D
        when the manifest has no ``inference.patch_size``).
    max_buffer_bytes : model-space posteriors are kept in float32 below this size, float16 above.
    max_slab_bytes : float32 native posteriors mapped back at once.
    crop_margin_vox : margin around the non-zero bounding box, in model voxels.

    The model-space buffer ``(K, *box)`` covers only the bounding box of non-zero normalised
    intensity (plus the margin); the rest of the model grid is background with probability 1.
    """

    def __init__(self, model, manifest: dict, device: torch.device, *, memory_budget_bytes: int | None = None,
                 activation_budget_bytes: int | None = None, max_buffer_bytes: int | None = None,
                 max_slab_bytes: int | None = None, crop_margin_vox: int = 8):
        self.model, self.manifest, self.device = model, manifest, device
        self.labels = LabelTable.from_dict(manifest["labels"])
        inf = manifest.get("inference", {})
        self.mode = inf.get("mode", "2d").lower()
        if self.mode not in MODES or MODES[self.mode] != model.config.ndim:
            raise ModelError(f"model {manifest.get('name')!r}: inference mode {self.mode!r} does not "
                             f"fit a {model.config.ndim}D network")
        self.planes = list(inf.get("planes") or ["axial"])
        if self.mode == "2d":
            self.planes = self.planes[:1]
        self.lr_merged_planes = [p for p in inf.get("lr_merged_planes") or [] if p in self.planes]
        self.patch_size = inf.get("patch_size") if self.mode == "3d" else None
        self.overlap = float(inf.get("overlap", 0.5))
        self.blending = inf.get("blending", "gaussian")
        self.flip_lr = bool(inf.get("flip_lr", False))
        self.cleanup = tuple(inf.get("cleanup") or ())
        if set(self.cleanup) - set(CLEANUP_STEPS):
            raise ModelError(f"model {manifest.get('name')!r}: inference.cleanup {list(self.cleanup)} "
                             f"names an unknown step; choose from {list(CLEANUP_STEPS)}")
        pre = manifest["preprocessing"]
        self.voxel_size = tuple(float(v) for v in np.broadcast_to(pre.get("voxel_size_mm", 1.0), (3,)))
        self.percentiles = tuple(pre.get("percentiles", (1, 99)))
        plan = MemoryPlan.from_budget(memory_budget_bytes)
        self.memory_budget_bytes = memory_budget_bytes
        self.activation_budget_bytes = activation_budget_bytes or plan.activation_bytes
        self.max_buffer_bytes = plan.buffer_float32_max_bytes if max_buffer_bytes is None else max_buffer_bytes
        self.max_slab_bytes = max_slab_bytes or plan.slab_bytes
        self.posteriors_float32_max_bytes = plan.posteriors_float32_max_bytes
        self.crop_margin_vox = crop_margin_vox
        self._values = torch.tensor(self.labels.values, dtype=torch.int16)

    @classmethod
    def from_package(cls, path=None, device: str = "auto", *, threads: int | None = None,
                     memory_budget_bytes: int | None = None, **kwargs) -> "Segmenter":
        """Load a model package (see :func:`load_model_package`; ``None``: the bundled model,
        :func:`~l2s_pipelines.io.checkpoint.default_model_dir`) onto ``device``
        (``auto``, ``cpu``, ``cuda``, ``cuda:N``). On CPU, torch uses ``threads`` threads, by
        default no more than the job's CPU allocation (:func:`cpu_allocation`).
        ``memory_budget_bytes``: see the class docstring and :mod:`.memory`."""
        dev = resolve_device(device)
        if dev.type == "cpu":
            n = threads or min(torch.get_num_threads(), cpu_allocation())
            torch.set_num_threads(max(1, n))
        model, manifest = load_model_package(default_model_dir() if path is None else path, device=dev)
        return cls(model, manifest, dev, memory_budget_bytes=memory_budget_bytes, **kwargs)

    def _model_space(self, data: np.ndarray, affine: np.ndarray):
        """Native array -> (normalised RAS model-grid tensor on device, model affine)."""
        ras = reorient_to_ras(nib.Nifti1Image(data, affine))
        vol, model_affine = resample_to_voxel_size(np.asarray(ras.dataobj, dtype=np.float32), ras.affine,
                                                   self.voxel_size, order=1)
        vol = torch.from_numpy(np.ascontiguousarray(vol)).to(self.device)
        return normalise_intensity(vol, self.percentiles), model_affine

    def _crop_box(self, vol: torch.Tensor) -> tuple[slice, ...]:
        """Bounding box of ``vol > 0`` plus the margin (per-axis reductions: no index list)."""
        mask = vol > 0
        box = []
        for axis, n in enumerate(vol.shape):
            hit = torch.nonzero(mask.any(dim=[d for d in range(vol.ndim) if d != axis]))[:, 0]
            lo, hi = int(hit[0]) - self.crop_margin_vox, int(hit[-1]) + 1 + self.crop_margin_vox
            box.append(slice(max(0, lo), min(n, hi)))
        return tuple(box)

    def predict_box(self, vol: torch.Tensor, name: str = "<image>") -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Posteriors ``(K, *box_shape)`` over the crop box of a normalised volume ``vol``
        ``(X, Y, Z)`` and the box origin (model voxel index); outside the box the model grid
        is background with probability 1. float16 when float32 would exceed
        ``max_buffer_bytes``; an InputError naming ``name`` when even that exceeds the budget."""
        box = self._crop_box(vol)
        sub = vol[box]
        self._check_box(vol.numel(), sub.numel(), name)
        k = len(self.labels)
        big = k * sub.numel() * 4 * (1 + self.flip_lr) > self.max_buffer_bytes
        dtype = torch.float16 if big else torch.float32
        post = self._predict(sub, torch.empty((k, *sub.shape), dtype=dtype, device=self.device))
        if self.flip_lr:  # mirror test-time augmentation: x -> -x, left and right labels swapped
            mirrored = self._predict(sub.flip(0), torch.empty_like(post)).flip(1)
            perm = self.labels.channel_flip_lut().to(self.device)
            post += mirrored[perm]
            post *= 0.5
        return post, tuple(b.start for b in box)

    def _predict(self, vol: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Posteriors ``(K, *vol.shape)`` of the network over ``vol`` into ``out``."""
        if self.mode == "3d":
            self._check_window_count(tuple(vol.shape))
            return predict_sliding_window(self.model, vol, out, patch_size=self.patch_size, overlap=self.overlap,
                                          blending=self.blending, activation_budget_bytes=self.activation_budget_bytes)
        return predict_planes(self.model, vol, out, self.planes, activation_budget_bytes=self.activation_budget_bytes,
                              merged_planes=self.lr_merged_planes, flip_lut=self.labels.channel_flip_lut())

    def _posteriors_array(self, shape, dtype: str):
        """Preallocated native posteriors ``(*shape, K)`` (float32 or uint8) and their scale."""
        k = len(self.labels)
        if dtype == "auto":
            dtype = "float32" if int(np.prod(shape)) * k * 4 <= self.posteriors_float32_max_bytes else "uint8"
        if dtype not in ("float32", "uint8"):
            raise ValueError(f"posteriors_dtype {dtype!r}: choose float32, uint8 or auto")
        return np.empty((*shape, k), dtype=dtype), (1.0 if dtype == "float32" else 1 / 255)

    @torch.no_grad()
    def segment(self, img: nib.Nifti1Image, *, return_posteriors: bool = True, posteriors_dtype: str = "float32",
                source_name: str | None = None) -> SegmentationResult:
        """Segment ``img`` (3D, or 4D with one volume); see the module docstring for the steps.

        The native result is built slab by slab: labels, per-label posterior sums and the
        confidence statistics are accumulated, so without ``return_posteriors`` no
        ``(X, Y, Z, K)`` array exists. ``posteriors_dtype``: ``float32``, ``uint8``
        (``round(255 p)``, 1 byte per value) or ``auto`` (float32 while it fits the memory
        plan). ``source_name`` (default: the image's file name) is used in error messages.
        Returns a :class:`SegmentationResult` on the input's grid with the input's affine.
        """
        name = source_name or (img.get_filename() if hasattr(img, "get_filename") else None) or "<image>"
        t = {}
        t0 = time.perf_counter()
        data = check_input_image(img, name)
        native_affine = np.array(img.affine, dtype=np.float64)
        t["checks"] = time.perf_counter() - t0
        self._check_model_grid(img, data, name)
        t1 = time.perf_counter()
        vol, model_affine = self._model_space(data, native_affine)
        del data
        if not bool((vol > 0).any()):
            raise InputError(f"{name}: intensity percentiles {self.percentiles} are equal (almost "
                             "every voxel has the same value); nothing to segment")
        t["preprocess"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        model_shape = tuple(vol.shape)
        post, origin = self.predict_box(vol, name)
        del vol
        self._sync()
        t["predict"] = time.perf_counter() - t1
        if self.cleanup:
            t1 = time.perf_counter()
            clean_posteriors(post, self.labels, self.cleanup)
            t["cleanup"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        shape = img.shape[:3]
        dseg = np.empty(shape, dtype=np.int16)
        posteriors, scale = self._posteriors_array(shape, posteriors_dtype) if return_posteriors else (None, 1.0)
        soft, conf = self._to_native(post, model_affine, model_shape, origin, shape, native_affine, dseg, posteriors)
        t["to_native"] = time.perf_counter() - t1
        t["total"] = time.perf_counter() - t0
        return SegmentationResult(dseg=dseg, posteriors=posteriors, label_table=self.labels,
                                  affine=np.array(img.affine), timings_s=t, device=str(self.device),
                                  header=img.header if isinstance(img, nib.Nifti1Image) else None,
                                  soft_sums=soft, confidence_sum=conf[0], confidence_count=conf[1],
                                  posteriors_scale=scale)

    def _check_window_count(self, shape) -> None:
        """Refuse a 3D sliding window of more than :data:`MAX_WINDOWS` patches (a tiny patch or
        an overlap near 1 would run for hours): a :class:`ModelError` naming the model."""
        if self.patch_size is None:
            return
        patch = [min(int(p), n) for p, n in zip(self.patch_size, shape)]
        count = math.prod(len(window_starts(n, p, self.overlap)) for n, p in zip(shape, patch))
        if count > MAX_WINDOWS:
            raise ModelError(f"model {self.manifest.get('name')!r}: patch {tuple(patch)} with overlap "
                             f"{self.overlap} needs {count} windows over a {shape} grid (at most "
                             f"{MAX_WINDOWS}); use a larger patch or a smaller overlap")

    def _check_model_grid(self, img, data, name: str) -> None:
        """Refuse, before resampling, an image whose model-space grid (its extent at the model's
        voxel size) needs more than the memory budget: the float32 volume (4 bytes per model
        voxel) plus float16 posteriors (``2 K`` bytes) over the head's box, estimated from the
        bounding box of the native voxels above the image's minimum (:meth:`_check_box`)."""
        if not self.memory_budget_bytes:
            return
        zooms = np.sqrt((np.asarray(img.affine, dtype=float)[:3, :3] ** 2).sum(0))
        grid = [math.ceil(n * z / v) + 1 for n, z, v in zip(img.shape[:3], zooms, self.voxel_size)]
        fg = np.asarray(data) > np.min(data)
        extent = []
        for axis in range(3):
            hit = np.flatnonzero(fg.any(axis=tuple(a for a in range(fg.ndim) if a != axis)))
            extent.append(int(hit[-1] - hit[0] + 1) if hit.size else 0)
        box = [min(g, math.ceil(e * z / v) + 2 * self.crop_margin_vox + 1)
               for g, e, z, v in zip(grid, extent, zooms, self.voxel_size)]
        self._check_box(math.prod(grid), math.prod(box), name)

    def _check_box(self, grid_voxels: int, box_voxels: int, name: str) -> None:
        """Refuse when the model-grid volume (float32) plus the posteriors over the head's box
        (float16 at least: ``2 K`` bytes per box voxel) exceed the memory budget (an InputError
        naming ``name``); called before resampling (estimated box) and before predicting."""
        if not self.memory_budget_bytes:
            return
        need = grid_voxels * 4 + box_voxels * 2 * len(self.labels)
        if need > self.memory_budget_bytes:
            raise InputError(f"{name}: at the model's {self.voxel_size} mm voxels the image ({grid_voxels} "
                             f"voxels, the head's box {box_voxels}) needs about {need / 2**30:.2f} GiB, more "
                             f"than the memory budget of {self.memory_budget_bytes / 2**30:.2f} GiB")

    def _to_native(self, post, model_affine, model_shape, origin, shape, native_affine, dseg, posteriors):
        """Fill ``dseg`` (and ``posteriors`` when not None, float32 or uint8 = ``round(255 p)``)
        block by block (:func:`native_blocks`); voxels no block covers are background.
        Returns ``(soft_sums (K,) float64, (confidence_sum, confidence_count))``."""
        k = len(self.labels)
        values = self._values.to(self.device)
        soft = torch.zeros(k, dtype=torch.float64, device=self.device)
        conf_sum, conf_n, outside = 0.0, 0, 0
        quantise = posteriors is not None and posteriors.dtype == np.uint8
        for x0, x1, region, probs in native_blocks(post, model_affine, shape, native_affine,
                                                   max_slab_bytes=self.max_slab_bytes, box_origin=origin,
                                                   model_shape=model_shape):
            dseg[x0:x1] = self.labels.values[0]
            if posteriors is not None:
                posteriors[x0:x1] = 0
                posteriors[x0:x1, ..., 0] = 255 if quantise else 1
            n_slab = (x1 - x0) * shape[1] * shape[2]
            if probs is None:
                outside += n_slab
                continue
            probs = probs.permute(1, 2, 3, 0).contiguous()  # channels last: faster argmax and copy
            outside += n_slab - probs[..., 0].numel()
            labels = values[probs.argmax(-1)]
            dseg[region] = labels.cpu().numpy()
            soft += probs.reshape(-1, k).sum(0).double()  # float32 pairwise sum per block, then float64
            brain = labels != 0
            conf_sum += float(probs.amax(-1)[brain].sum(dtype=torch.float64))
            conf_n += int(brain.sum())
            if posteriors is not None:
                posteriors[region] = ((probs * 255).round_().to(torch.uint8) if quantise else probs).cpu().numpy()
            del probs, labels, brain
        soft[0] += outside
        if self.labels.values[0] != 0:  # background voxels count in the confidence unless value 0
            conf_sum, conf_n = conf_sum + outside, conf_n + outside
        return soft.cpu().numpy(), (conf_sum, conf_n)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
