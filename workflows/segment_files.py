"""Segment one NIfTI file into a result folder: the step shared by every plain-file entry point.

``l2s-segment`` (:mod:`l2s_pipelines.bids_app.segment_cli`), the Pydra task :func:`SegmentFile`
and the nipype interface :class:`~l2s_pipelines.workflows.nipype_interface.L2SSegment` all call
:func:`segment_to_folder` with a loaded :class:`~l2s_pipelines.inference.Segmenter`, and the
BIDS app's ``MeasureSegmentation`` task computes its tables with the same :func:`write_measures`. The
result folder holds the files of the BIDS app's per-image result folder:

======================  ======================================================================
``dseg.nii.gz``         int16 label values on the input grid (on the model grid with ``resample``)
``dseg.tsv``            the model's look-up table (``index name abbreviation color``)
``volumes.tsv``         hard and soft volume of every label in mm^3
``qc.json``             automated QC flags (:func:`l2s_pipelines.metrics.qc_flags`)
``dice.tsv``            Dice per label, only with a ``reference`` label map on the same grid
``probseg.nii.gz``      ``(X, Y, Z, K)`` posteriors in look-up-table order, with ``posteriors``
``resampled.nii.gz``    the input on the model grid (RAS, model voxel size, linear), with ``resample``
``info.json``           source, model (name, sha256, accuracy warning), device, threads, timings
======================  ======================================================================

Files are written in the folder the caller gives (a Pydra or nipype job folder, or a staging
folder that ``l2s-segment`` moves into place atomically).
"""

from __future__ import annotations

import math
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from fileformats.generic import Directory, File
from pydra.compose import python

from l2s_pipelines import metrics
from l2s_pipelines.errors import InputError
from l2s_pipelines.io.checks import check_nifti_file
from l2s_pipelines.model_card import accuracy_summary, accuracy_warning
from l2s_pipelines.system import write_json


def _write_json(path: Path, obj) -> None:
    write_json(path, obj, allow_nan=False)


def model_grid_image(img: nib.Nifti1Image, voxel_size_mm) -> nib.Nifti1Image:
    """``img`` reoriented to RAS and resampled (linear) to ``voxel_size_mm``: the grid the
    Segmenter predicts on. A 4D image with one volume is taken as 3D. float32."""
    from l2s_pipelines.io.preprocess import reorient_to_ras, resample_to_voxel_size  # torch: imported on use

    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    ras = reorient_to_ras(nib.Nifti1Image(data, img.affine))
    vol, affine = resample_to_voxel_size(np.asarray(ras.dataobj, dtype=np.float32), ras.affine,
                                         voxel_size_mm, order=1)
    out = nib.Nifti1Image(np.ascontiguousarray(vol, dtype=np.float32), affine)
    out.header.set_xyzt_units("mm")
    return out


def write_measures(out_dir, *, result, affine, reference_data=None) -> dict:
    """Write ``volumes.tsv``, ``qc.json`` and (with ``reference_data``) ``dice.tsv`` of one
    :class:`~l2s_pipelines.inference.SegmentationResult` into ``out_dir``.

    ``affine`` gives the voxel volume; ``reference_data`` is a label map of ``result.dseg``'s
    shape (value 255 ignored). Soft volumes and the confidence flag come from the sums the
    Segmenter accumulated, so no posterior array is needed. Returns ``{"volumes":
    label_volumes(...), "flags": [...], "dice": rows or None}``.
    """
    out_dir = Path(out_dir)
    table = result.label_table
    dseg = np.asarray(result.dseg)
    vols = metrics.label_volumes(dseg, None, affine, table, soft_sums=result.soft_sums)
    metrics.write_tsv(vols["rows"], out_dir / "volumes.tsv", metrics.VOLUME_COLUMNS)
    dice = None
    if reference_data is not None:
        ref = np.asarray(reference_data).reshape(dseg.shape)
        ref = ref if ref.dtype.kind in "ui" else ref.astype(np.int64)  # 8/16-bit maps: the fast lookup
        dice = metrics.dice_scores(dseg, ref, table, 255, affine)
        metrics.write_tsv(dice, out_dir / "dice.tsv", metrics.DICE_COLUMNS)
    flags = metrics.qc_flags(dseg, None, vols, table, mean_confidence=result.mean_max_posterior)
    _write_json(out_dir / "qc.json", {"flags": flags})
    return {"volumes": vols, "flags": flags, "dice": dice}


def segment_to_folder(segmenter, in_file, out_dir, *, posteriors: bool = False, resample: bool = False,
                      reference=None, budget_bytes: int | None = None) -> dict:
    """Segment the NIfTI file ``in_file`` with ``segmenter`` and write the result folder
    (module docstring) into ``out_dir`` (created).

    Parameters
    ----------
    segmenter : :class:`~l2s_pipelines.inference.Segmenter`, loaded once for many files.
    in_file : path of a 3D NIfTI (or 4D with one volume).
    posteriors : also write ``probseg.nii.gz`` (float32 when it fits the memory plan, else
        uint8 with ``scl_slope = 1/255``).
    resample : segment on the model grid (RAS, the model's voxel size) instead of the input
        grid, and write the resampled input as ``resampled.nii.gz`` (as SynthSeg's
        ``--resample``); every output is then on that grid.
    reference : optional label map on the input grid; adds ``dice.tsv``.
    budget_bytes : memory budget checked against the declared image size before any voxel
        is read (:func:`~l2s_pipelines.io.checks.check_nifti_file`).

    Returns
    -------
    dict : ``{"files": {kind: path}, "volumes": ..., "flags": [...], "dice": rows or None,
    "info": {...}}``. Raises :class:`~l2s_pipelines.errors.InputError` naming the file for an
    unusable image or reference.

    Example
    -------
    >>> from l2s_pipelines.inference import Segmenter
    >>> seg = Segmenter.from_package(model_dir, "cpu", threads=1)  # doctest: +SKIP
    >>> segment_to_folder(seg, "sub-01_T1w.nii.gz", "out")["files"]["dseg"]  # doctest: +SKIP
    PosixPath('out/dseg.nii.gz')
    """
    t0 = time.perf_counter()
    in_file, out_dir = str(in_file), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img = check_nifti_file(in_file, budget_bytes)
    files = {}
    if reference is not None:
        from l2s_pipelines.workflows.tasks import check_reference

        if resample:
            raise InputError(f"{reference}: a reference is on the input grid; it cannot be used with resample")
        check_reference(str(reference), img, segmenter.labels.values, budget_bytes)
    if resample:
        try:
            img = model_grid_image(img, segmenter.voxel_size)
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise InputError(f"{in_file}: unreadable or truncated NIfTI ({type(exc).__name__})") from exc
        files["resampled"] = out_dir / "resampled.nii.gz"
        nib.save(img, files["resampled"])
    res = segmenter.segment(img, source_name=in_file, return_posteriors=bool(posteriors), posteriors_dtype="auto")
    files["dseg"] = out_dir / "dseg.nii.gz"
    nib.save(res.dseg_image(), files["dseg"])
    files["dseg_tsv"] = res.label_table.to_tsv(out_dir / "dseg.tsv")
    probseg_encoding = None
    if posteriors:
        files["probseg"] = out_dir / "probseg.nii.gz"
        probseg_encoding = ("float32" if res.posteriors.dtype == np.float32
                            else "uint8, probability = value / 255 (scl_slope)")
        nib.save(res.probseg_image(), files["probseg"])
        res.posteriors = None
    ref_data = None
    if reference is not None:
        ref_data = np.asanyarray(nib.load(str(reference)).dataobj)
    measures = write_measures(out_dir, result=res, affine=img.affine, reference_data=ref_data)
    files["volumes"], files["qc"] = out_dir / "volumes.tsv", out_dir / "qc.json"
    if measures["dice"] is not None:
        files["dice"] = out_dir / "dice.tsv"
    manifest = segmenter.manifest
    tiv = measures["volumes"]["tiv_mm3"]
    info = {"source": in_file, "reference": None if reference is None else str(reference),
            "model_name": manifest.get("name"), "model_sha256": manifest.get("weights", {}).get("sha256"),
            "model_accuracy": accuracy_summary(manifest), "model_accuracy_warning": accuracy_warning(manifest),
            "device": str(res.device), "threads": _threads(), "grid": "model" if resample else "input",
            "tiv_mm3": None if math.isnan(tiv) else tiv, "tiv_method": measures["volumes"]["tiv_method"],
            "timings_s": {k: round(float(v), 3) for k, v in res.timings_s.items()},
            "runtime_s": round(time.perf_counter() - t0, 3), "probseg_encoding": probseg_encoding,
            "labels": res.label_table.to_dict()}
    files["info"] = out_dir / "info.json"
    _write_json(files["info"], info)
    return {**measures, "files": files, "info": info}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def load_segmenter(model=None, *, device: str = "auto", threads: int = 1, budget_bytes: int | None = None):
    """The :class:`~l2s_pipelines.inference.Segmenter` of the model package ``model`` (default:
    the bundled one) on ``device`` with ``threads`` CPU threads."""
    from l2s_pipelines.inference import Segmenter

    return Segmenter.from_package(model or None, device, threads=max(1, int(threads)),
                                  memory_budget_bytes=budget_bytes)


@python.define(outputs=["out_dir", "dseg", "volumes", "qc"])
def SegmentFile(in_file: File, model: Directory | None = None, device: str = "auto", threads: int = 1,
                posteriors: bool = False, resample: bool = False, reference: File | None = None,
                mem_mb: int = 0) -> tuple[Directory, File, File, File]:
    """Pydra task: segment one NIfTI file (for users' own workflows).

    Paths are fileformats objects, so Pydra hashes the image, the reference and the model
    package by content (a changed model reruns the task). ``model``: model package folder
    (None = the bundled model); ``device``: auto, cpu, cuda or
    cuda:N; ``threads``: torch CPU threads; ``posteriors``, ``resample``, ``reference``: see
    :func:`segment_to_folder`; ``mem_mb``: memory budget in MiB (0 = automatic). Outputs: the
    result folder (module docstring) and the paths of its ``dseg.nii.gz``, ``volumes.tsv`` and
    ``qc.json``.

    Example (runs in docs/plain_files.md and tests/test_segment_entry_points.py)
    -------
    >>> from pydra.engine.submitter import Submitter
    >>> task = SegmentFile(in_file="sub-01_T1w.nii.gz", threads=1)  # doctest: +SKIP
    >>> with Submitter(worker="debug", cache_root="work") as sub:  # doctest: +SKIP
    ...     res = sub(task)
    >>> res.outputs.dseg  # doctest: +SKIP
    '.../result/dseg.nii.gz'
    """
    from l2s_pipelines.workflows.tasks import memory_budget_bytes

    budget = memory_budget_bytes(mem_mb, threads)
    segmenter = load_segmenter(None if model is None else str(model), device=device, threads=threads,
                               budget_bytes=budget)
    out = Path.cwd() / "result"
    done = segment_to_folder(segmenter, str(in_file), out, posteriors=posteriors, resample=resample,
                             reference=None if reference is None else str(reference), budget_bytes=budget)
    files = done["files"]
    return Directory(out), File(files["dseg"]), File(files["volumes"]), File(files["qc"])
