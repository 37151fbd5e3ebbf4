"""Child processes of ``bench_app.py``'s overhead benchmark: the same image segmented without
the BIDS App, in a fresh Python process each (run as ``bench_app.py _direct ...``).

- path (a), ``same_outputs=False``: ``Segmenter.segment`` + ``dseg.nii.gz`` + ``volumes.tsv``,
  the bare call a script would make;
- path (c), ``same_outputs=True``: the same, plus what ``l2s-bids`` makes of one image with the
  same library functions its tasks call: ``qc.json`` (``write_measures``) and the report figures
  (``plot_segmentation_mosaics``). What (c) leaves out is the BIDS App itself: pybids indexing,
  Pydra's tasks and cache, the checks, BIDS derivatives, sidecars, logs and the HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path


def direct_child(model: str, image: str, out_dir: str, threads: int, device: str,
                 same_outputs: bool = False) -> dict:
    """Segment ``image`` with the settings the ``SegmentImage`` task uses (memory budget per
    worker, no native posteriors kept, soft volumes from ``soft_sums``) and write the outputs
    of path (a) or (c) (module docstring) into ``out_dir``. Returns stage seconds (``import``
    counts the library imports of this fresh process) and peak RSS (MiB)."""
    import resource

    t = {}
    t0 = time.perf_counter()
    import nibabel as nib
    import numpy as np

    from l2s_pipelines import metrics
    from l2s_pipelines.inference import Segmenter
    from l2s_pipelines.inference.memory import auto_memory_budget
    from l2s_pipelines.inference.segmenter import cpu_allocation

    t["import"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    budget = auto_memory_budget(workers=max(1, cpu_allocation() // threads))
    seg = Segmenter.from_package(model, device, threads=threads, memory_budget_bytes=budget)
    t["load_model"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    img = nib.load(image)
    res = seg.segment(img, source_name=image, return_posteriors=False)
    t["segment"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nib.save(res.dseg_image(), out / "dseg.nii.gz")
    t["write_dseg"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    if same_outputs:
        from l2s_pipelines.workflows.segment_files import write_measures

        write_measures(out, result=res, affine=img.affine)
        t["volumes_qc"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        from l2s_pipelines.workflows.figures import plot_segmentation_mosaics

        plot_segmentation_mosaics(image, out / "dseg.nii.gz", res.label_table.to_dict(), out / "figures")
        t["figures"] = time.perf_counter() - t1
    else:
        vols = metrics.label_volumes(np.asarray(res.dseg), None, img.affine, res.label_table,
                                     soft_sums=res.soft_sums)
        metrics.write_tsv(vols["rows"], out / "volumes.tsv", metrics.VOLUME_COLUMNS)
        t["volumes"] = time.perf_counter() - t1
    t["total_in_process"] = time.perf_counter() - t0
    return {"stages_s": {k: round(v, 3) for k, v in t.items()},
            "segmenter_timings_s": {k: round(float(v), 3) for k, v in res.timings_s.items()},
            "device": res.device,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
