"""Pydra python tasks of the participant workflow: checks and inference.

Tasks take and return paths and plain values (never tensors: Pydra hashes unknown objects by
``__dict__``). torch is imported inside the task functions only, so the main process never
runs torch before the ``cf`` pool forks. Tasks raise :class:`~l2s_pipelines.errors.InputError`
naming the file and the problem on bad input.

Each image goes through small tasks, so that a change to one step reruns that step only
(a figure change never reruns inference):

- :func:`CheckImage`: the image's header and declared size (no voxel is read), the reference;
  it runs beside the segmentation, not before it;
- :func:`SegmentImage`: inference, the only task reading the image's voxels for segmentation
  (it refuses an image over the memory budget from its header, before reading it);
  writes ``dseg.nii.gz`` (input grid and affine, int16 label values), optional
  ``probseg.nii.gz`` (``(X, Y, Z, K)``, channels in label-table order: float32 when it fits the
  memory budget, otherwise uint8 with the NIfTI scale ``scl_slope = 1/255``, so readers that
  apply the scale, e.g. nibabel's ``get_fdata``, get probabilities within 1/255) and
  ``segmentation.json`` (label table, per-label posterior sums and confidence statistics
  accumulated during segmentation, so no full posterior array is held unless the probseg is
  asked for; device, threads, timings);
- :mod:`l2s_pipelines.workflows.result_tasks`: volumes, Dice and QC; figures; the per-image
  result folder with ``info.json``.
"""

from __future__ import annotations

from pydra.compose import python

#: Voxel-size ratio (largest / smallest) above which an image is logged as strongly anisotropic.
ANISOTROPY_WARN = 4.0
#: Tolerance (mm) when comparing the affines of an image and its reference label map.
AFFINE_ATOL_MM = 1e-3


def memory_budget_bytes(mem_mb: int, nthreads: int) -> int:
    """Memory budget of one image job in bytes: ``mem_mb`` MiB when positive, else 80% of the
    available memory shared by ``CPUs // nthreads`` concurrent workers."""
    from l2s_pipelines.inference.memory import auto_memory_budget
    from l2s_pipelines.system import cpu_allocation

    if int(mem_mb) > 0:
        return int(mem_mb) << 20
    return auto_memory_budget(workers=max(1, cpu_allocation() // max(1, int(nthreads))))


def _load_nifti(path: str, budget_bytes: int | None = None):
    """Load a NIfTI and its voxel data (float32) after checking its declared size against the
    file and ``budget_bytes`` (:func:`~l2s_pipelines.io.checks.check_nifti_file`); InputError
    naming the file when unusable."""
    import numpy as np

    from l2s_pipelines.errors import InputError
    from l2s_pipelines.io.checks import check_nifti_file

    img = check_nifti_file(path, budget_bytes)
    try:
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except MemoryError as exc:
        raise InputError(f"{path}: not enough memory to read the image {img.shape}") from exc
    except Exception as exc:  # truncated gzip (EOFError), zlib.error
        raise InputError(f"{path}: unreadable or truncated NIfTI ({type(exc).__name__})") from exc
    return img, data


def check_image(path: str, img) -> list[str]:
    """Check one input image's header (:func:`~l2s_pipelines.io.checks.check_image_header`,
    the Segmenter's own header check) and voxel sizes, without reading its voxels. Returns
    warnings (strings); raises InputError for an unusable image."""
    import numpy as np

    from l2s_pipelines.errors import InputError
    from l2s_pipelines.io.checks import check_image_header

    check_image_header(img, path)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    warnings = []
    if zooms.min() <= 0:
        raise InputError(f"{path}: non-positive voxel size {tuple(zooms)} in the header")
    if zooms.max() / zooms.min() > ANISOTROPY_WARN:
        warnings.append(f"{path}: strongly anisotropic voxels {tuple(round(z, 3) for z in zooms)} mm; "
                        "resampled to the model resolution, thin structures may be inaccurate")
    return warnings


def check_reference(ref_path: str, img, label_values, budget_bytes: int | None = None) -> None:
    """A reference label map must share the image's grid and hold only known label values
    (``label_values`` or 255 = ignore). Raises InputError naming the reference file."""
    import numpy as np

    from l2s_pipelines.errors import InputError

    ref, data = _load_nifti(ref_path, budget_bytes)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != img.shape[:3] or not np.allclose(ref.affine, img.affine, atol=AFFINE_ATOL_MM):
        raise InputError(f"{ref_path}: reference label map is on another grid (shape {data.shape}) "
                         f"than its image (shape {img.shape[:3]}) or has another affine")
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise InputError(f"{ref_path}: reference label map holds non-integer values")
    unknown = sorted(set(np.unique(data).astype(int).tolist()) - set(int(v) for v in label_values) - {255})
    if unknown:
        raise InputError(f"{ref_path}: reference holds labels unknown to the model: {unknown[:10]}")


def _manifest_label_values(model_dir: str) -> list[int]:
    from l2s_pipelines.io.checkpoint import read_manifest
    from l2s_pipelines.labels import LabelTable

    return LabelTable.from_dict(read_manifest(model_dir)["labels"]).values


@python.define(outputs=["source", "reference", "warnings"])
def CheckImage(source: str, reference: str, model_dir: str, fingerprint: str, mem_mb: int = 0,
               nthreads: int = 1) -> tuple[str, str, list]:
    """Check ``source`` (and ``reference`` when not empty) before segmentation.

    ``fingerprint`` (size and mtime of the inputs) only enters the cache key. Returns the source
    path unchanged, the reference (``""`` when it fails its check: a questionable reference never
    fails the image, it is left out of the Dice with a warning saying why) and a list of warnings
    (strongly anisotropic voxels, an unusable reference). Only the image's header is checked
    here, with its declared size against the file and the job's budget
    (:func:`memory_budget_bytes`); its voxels are read once, by :func:`SegmentImage` (run at the
    same time), whose Segmenter checks them (finite, not constant). No torch import: this task
    stays light.
    """
    from l2s_pipelines.errors import InputError
    from l2s_pipelines.io.checks import check_nifti_file

    budget = memory_budget_bytes(mem_mb, nthreads)
    img = check_nifti_file(source, budget)
    warnings = check_image(source, img)
    if reference:
        try:
            check_reference(reference, img, _manifest_label_values(model_dir), budget)
        except InputError as exc:
            warnings.append(f"reference not used, no Dice computed: {exc}")
            reference = ""
    return source, reference, warnings


def fresh_folder(name: str = "result"):
    """An empty folder ``name`` in the job's working folder (a rerun's leftovers removed)."""
    import shutil
    from pathlib import Path

    out = Path.cwd() / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    return out


def _peak_memory_mb(device: str) -> float:
    """Peak resident memory of this worker process (MiB; on CUDA, plus the torch allocator's
    peak). The worker process may have run earlier images: an upper bound for this image."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device.startswith("cuda"):
        import torch

        peak += torch.cuda.max_memory_allocated() / 2**20
    return round(peak, 1)


def _write_json(path, obj) -> None:
    """Strict JSON (no NaN), written atomically (:func:`l2s_pipelines.system.write_json`)."""
    from l2s_pipelines.system import write_json

    write_json(path, obj, allow_nan=False)


@python.define(outputs=["seg_dir"])
def SegmentImage(source: str, model_dir: str, model_sha256: str, device: str, save_probseg: bool, seed: int,
                 nthreads: int, fingerprint: str = "", mem_mb: int = 0) -> str:
    """Segment one image (inference only) into the folder ``seg_dir`` (see the module docstring).

    ``nthreads`` bounds torch's intra-op threads; ``seed`` seeds torch and numpy, and torch runs
    deterministically (bit-identical CPU results for the same seed, input and threads; on CUDA,
    torch's deterministic mode);
    ``model_sha256`` and ``fingerprint`` (size and mtime of the image) only enter the cache key,
    so a changed model or image reruns. ``mem_mb``: memory budget of this segmentation in MiB
    (see :mod:`l2s_pipelines.inference.memory`); 0 = automatic, 80% of the available memory
    shared by ``CPUs // nthreads`` concurrent workers. The image's declared size is checked
    against that budget from its header before its voxels are read, once, here (a truncated
    file fails the read with an InputError); :func:`CheckImage` checks the rest beside it.
    Returns the folder as a string (its path holds this job's checksum, so it keys the tasks
    that read it).
    """
    import os
    import time
    import zlib

    import nibabel as nib
    import numpy as np
    import torch

    from l2s_pipelines.errors import InputError
    from l2s_pipelines.inference import Segmenter
    from l2s_pipelines.io.checks import check_nifti_file
    from l2s_pipelines.model_card import accuracy_summary, accuracy_warning

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, int(nthreads)))
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    out = fresh_folder()
    budget = memory_budget_bytes(mem_mb, nthreads)
    segmenter = Segmenter.from_package(model_dir, device, threads=max(1, int(nthreads)),
                                       memory_budget_bytes=budget)
    if segmenter.device.type == "cuda":
        # the CPU inference ops are deterministic already (same seed, input and threads ->
        # bit-identical output); torch's switch imports its compiler stack (about a second)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    img = check_nifti_file(source, budget, count_data=False)  # declared size against the budget
    try:
        res = segmenter.segment(img, source_name=source, return_posteriors=bool(save_probseg),
                                posteriors_dtype="auto")
    except (OSError, EOFError, zlib.error) as exc:  # truncated (CheckImage, run beside, counts the bytes)
        raise InputError(f"{source}: unreadable or truncated NIfTI ({type(exc).__name__})") from exc
    nib.save(res.dseg_image(), out / "dseg.nii.gz")
    probseg_encoding = None
    if save_probseg:
        probseg_encoding = ("float32" if res.posteriors.dtype == np.float32
                            else "uint8, probability = value / 255 (scl_slope)")
        nib.save(res.probseg_image(), out / "probseg.nii.gz")
        res.posteriors = None
    _write_json(out / "segmentation.json", {
        "labels": res.label_table.to_dict(), "soft_sums": [float(v) for v in res.soft_sums],
        "confidence_sum": float(res.confidence_sum), "confidence_count": int(res.confidence_count),
        "device": str(res.device), "threads": torch.get_num_threads(),
        "timings_s": {k: float(v) for k, v in dict(res.timings_s).items()},
        "runtime_s": round(time.perf_counter() - t0, 3), "peak_memory_mb": _peak_memory_mb(str(res.device)),
        "memory_budget_mb": budget >> 20, "probseg_encoding": probseg_encoding,
        "model_accuracy": accuracy_summary(segmenter.manifest),
        "model_accuracy_warning": accuracy_warning(segmenter.manifest),
        "versions": {"torch": torch.__version__, "numpy": np.__version__}})
    return str(out)
