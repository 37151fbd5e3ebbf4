"""Pydra python tasks after inference: measures, figures and the per-image result folder.

Each reads the folder written by :func:`~l2s_pipelines.workflows.tasks.SegmentImage` (its path,
a string holding that job's checksum, keys their caches) and does one thing, so a change to the
figures reruns the figures only:

- :func:`MeasureSegmentation`: ``volumes.tsv``, ``qc.json`` and, with a reference, ``dice.tsv``
  (:func:`~l2s_pipelines.workflows.segment_files.write_measures`, the same tables as
  ``l2s-segment``), from the label map and the posterior sums the Segmenter accumulated;
- :func:`PlotSegmentation`: ``figures/`` (:func:`~l2s_pipelines.workflows.figures.plot_segmentation_mosaics`);
- :func:`WriteResult`: the result folder the BIDS app publishes, ``dseg.nii.gz``, optional
  ``probseg.nii.gz``, the tables, ``figures/`` (hard links to the files above, copies where
  links fail) and ``info.json`` (provenance, timings, warnings, label table).

Example (runnable; needs a SegmentImage folder)
-------
>>> from pydra.engine.submitter import Submitter
>>> task = MeasureSegmentation(source="sub-01_T1w.nii.gz", seg_dir="work/.../result")  # doctest: +SKIP
>>> with Submitter(worker="debug", cache_root="work") as sub:  # doctest: +SKIP
...     res = sub(task)
"""

from __future__ import annotations

from fileformats.generic import Directory
from pydra.compose import python

#: Files of a SegmentImage folder and of a MeasureSegmentation folder copied into the result.
SEGMENTATION_FILES = ("dseg.nii.gz", "probseg.nii.gz")
MEASURE_FILES = ("volumes.tsv", "dice.tsv", "qc.json")


def read_segmentation(seg_dir: str) -> dict:
    """The ``segmentation.json`` record of a :func:`SegmentImage` folder."""
    import json
    from pathlib import Path

    return json.loads((Path(seg_dir) / "segmentation.json").read_text(encoding="utf-8"))


@python.define(outputs=["out_dir", "runtime_s", "peak_memory_mb"])
def MeasureSegmentation(source: str, seg_dir: str, reference: str = "",
                        fingerprint: str = "") -> tuple[str, float, float]:
    """Volumes, QC flags and (with ``reference``, a checked label map on the image's grid) Dice
    of the segmentation in ``seg_dir``, written to this job's ``result/`` folder.

    ``source`` gives the voxel geometry (its header only is read). Soft volumes and the
    confidence flag come from the sums in ``segmentation.json``. ``fingerprint`` (size and
    mtime of the image and reference) only enters the cache key. Returns the folder, this
    task's seconds and the worker's peak memory (MiB).
    """
    import time
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from l2s_pipelines.inference.result import SegmentationResult
    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.workflows.segment_files import write_measures
    from l2s_pipelines.workflows.tasks import _peak_memory_mb, fresh_folder

    t0 = time.perf_counter()
    out = fresh_folder()
    record = read_segmentation(seg_dir)
    affine = nib.load(source).affine
    result = SegmentationResult(
        dseg=np.asanyarray(nib.load(Path(seg_dir) / "dseg.nii.gz").dataobj), posteriors=None,
        label_table=LabelTable.from_dict(record["labels"]), affine=affine,
        soft_sums=np.asarray(record["soft_sums"], dtype=np.float64),
        confidence_sum=float(record["confidence_sum"]), confidence_count=int(record["confidence_count"]))
    ref = np.asarray(nib.load(reference).dataobj) if reference else None
    vols = write_measures(out, result=result, affine=affine, reference_data=ref)["volumes"]
    (out / "tiv.json").write_text(_tiv_json(vols), encoding="utf-8")
    return str(out), round(time.perf_counter() - t0, 3), _peak_memory_mb("cpu")


def _tiv_json(vols: dict) -> str:
    import json
    import math

    tiv = vols["tiv_mm3"]
    return json.dumps({"tiv_mm3": None if math.isnan(tiv) else tiv, "tiv_method": vols["tiv_method"]}) + "\n"


@python.define(outputs=["out_dir", "runtime_s", "peak_memory_mb"])
def PlotSegmentation(source: str, seg_dir: str, reference: str = "",
                     n_slices: int | None = None, fingerprint: str = "") -> tuple[str, float, float]:
    """The report figures (``figures/`` in this job's folder) of the segmentation in
    ``seg_dir`` over ``source``, with the prediction-against-reference figure when
    ``reference`` is given. ``n_slices``: slices per plane (None: the figures' default);
    ``fingerprint`` (size and mtime of the image and reference) only enters the cache key.
    Returns the ``figures/`` folder, this task's seconds and the worker's peak memory (MiB)."""
    import time
    from pathlib import Path

    from l2s_pipelines.workflows.figures import plot_segmentation_mosaics
    from l2s_pipelines.workflows.tasks import _peak_memory_mb, fresh_folder

    t0 = time.perf_counter()
    out = fresh_folder("figures")
    extra = {} if n_slices is None else {"n_slices": int(n_slices)}
    plot_segmentation_mosaics(source, Path(seg_dir) / "dseg.nii.gz", read_segmentation(seg_dir)["labels"], out,
                              reference_path=reference or None, **extra)
    return str(out), round(time.perf_counter() - t0, 3), _peak_memory_mb("cpu")


def link_or_copy(src, dst) -> None:
    """Hard-link ``src`` to ``dst`` (same file system: no data copied), else copy it."""
    import os
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@python.define(outputs=["out_dir"])
def WriteResult(source: str, reference: str, seg_dir: str, measures_dir: str, figures_dir: str,
                model_name: str, model_sha256: str, seed: int, used_for_tuning: bool, warnings: list,
                measures_s: float = 0.0, figures_s: float = 0.0, measures_peak_mb: float = 0.0,
                figures_peak_mb: float = 0.0) -> Directory:
    """The per-image result folder (``result/`` in this job's folder) and its ``info.json``.

    ``measures_s``, ``figures_s`` (seconds) and ``*_peak_mb`` (MiB) are the measure and figure
    tasks' values, added to (runtime) or compared with (peak memory) inference's own;
    ``warnings`` come from :func:`~l2s_pipelines.workflows.tasks.CheckImage`, the model's
    accuracy warning is added.
    """
    import json
    import shutil
    from pathlib import Path

    from l2s_pipelines.workflows.tasks import _write_json, fresh_folder

    out = fresh_folder()
    for folder, names in ((seg_dir, SEGMENTATION_FILES), (measures_dir, MEASURE_FILES)):
        for name in names:
            if (Path(folder) / name).is_file():
                link_or_copy(Path(folder) / name, out / name)
    shutil.copytree(figures_dir, out / "figures", copy_function=link_or_copy)
    seg = read_segmentation(seg_dir)
    tiv = json.loads((Path(measures_dir) / "tiv.json").read_text(encoding="utf-8"))
    note = seg["model_accuracy_warning"]
    info = {
        "source": source, "reference": reference or None, "device": seg["device"],
        "runtime_s": round(seg["runtime_s"] + float(measures_s) + float(figures_s), 3),
        "peak_memory_mb": max(seg["peak_memory_mb"], float(measures_peak_mb), float(figures_peak_mb)),
        "model_name": model_name, "model_sha256": model_sha256, "seed": int(seed), "threads": seg["threads"],
        "timings_s": seg["timings_s"], "tiv_mm3": tiv["tiv_mm3"], "tiv_method": tiv["tiv_method"],
        "used_for_tuning": bool(used_for_tuning), "warnings": list(warnings) + ([note] if note else []),
        "labels": seg["labels"], "model_accuracy": seg["model_accuracy"], "model_accuracy_warning": note,
        "memory_budget_mb": seg["memory_budget_mb"], "versions": seg["versions"],
        "probseg_encoding": seg["probseg_encoding"],
    }
    _write_json(out / "info.json", info)
    return Directory(out)
