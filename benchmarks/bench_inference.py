"""Per-stage wall time and peak memory of inference on a 1 mm 256^3 T1w-like volume.

Usage::

    .venv/bin/python benchmarks/bench_inference.py [--input T1w.nii.gz | --synthetic]
        [--mode 2d|2.5d|3d] [--threads 1] [--device cpu] [--out benchmarks/results/inference.json]

The network has the default architecture (2D or 3D UNet, widths 16-24-32-48-64, 33 labels) with
random, UNTRAINED weights (timings and memory only, never accuracy), or is a given package
(``--model MODEL_DIR``, e.g. the bundled model). Peak memory
is the process RSS sampled every 20 ms by a thread (psutil), attributed to the stage running
at that moment; ``peak_rss_mb`` overall is also ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import torch

from l2s_pipelines import metrics
from l2s_pipelines.inference import Segmenter
from l2s_pipelines.io.checkpoint import save_model_package
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.nn.unet import UNet, UNetConfig

DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared/data/bids_real/sub-bert/anat/sub-bert_rec-fsnorm_T1w.nii.gz"


class RssSampler(threading.Thread):
    """Samples this process's RSS (bytes) with timestamps (``time.perf_counter``)."""

    def __init__(self, period_s: float = 0.02):
        super().__init__(daemon=True)
        self.period_s, self.samples, self._halt = period_s, [], threading.Event()
        self._proc = psutil.Process()

    def run(self):
        while not self._halt.is_set():
            self.samples.append((time.perf_counter(), self._proc.memory_info().rss))
            time.sleep(self.period_s)

    def stop(self):
        self._halt.set()
        self.join()

    def peak_mb(self, t0: float, t1: float) -> float:
        vals = [r for t, r in self.samples if t0 <= t <= t1]
        return round(max(vals) / 2**20, 1) if vals else float("nan")


def synthetic_head(shape=(256, 256, 256), seed=0) -> nib.Nifti1Image:
    """Smooth ellipsoidal 'head' with a brighter core and noise, 1 mm, RAS."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij"))
    r = np.sqrt((g[0] / 0.75) ** 2 + (g[1] / 0.9) ** 2 + (g[2] / 0.8) ** 2)
    data = 60 * (r < 1) + 40 * (r < 0.8) + rng.normal(0, 5, shape).astype(np.float32)
    return nib.Nifti1Image(np.clip(data, 0, None).astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))


def make_package(directory: Path, mode: str) -> Path:
    table = LabelTable.default()
    cfg = UNetConfig(ndim=3 if mode == "3d" else 2, out_channels=len(table))
    torch.manual_seed(0)
    planes = ["axial", "coronal", "sagittal"] if mode == "2.5d" else ["axial"]
    manifest = {"name": "bench-untrained", "description": "random weights, for timing only",
                "architecture": cfg.to_dict(), "labels": table.to_dict()["labels"],
                "preprocessing": {"orientation": "RAS", "voxel_size_mm": [1.0, 1.0, 1.0],
                                  "intensity": "percentile", "percentiles": [1, 99]},
                "inference": {"mode": mode, "planes": planes,
                              "patch_size": [96, 96, 96] if mode == "3d" else None}}
    return save_model_package(directory, UNet(cfg), manifest)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    ap.add_argument("--synthetic", action="store_true", help="use a synthetic 256^3 volume instead")
    ap.add_argument("--mode", default="2d", choices=["2d", "2.5d", "3d"])
    ap.add_argument("--model", type=Path, default=None, metavar="MODEL_DIR",
                    help="time this model package (e.g. the bundled l2s_pipelines/models/default) "
                         "instead of an untrained network of --mode")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--posteriors", default="none", choices=["none", "float32", "uint8"],
                    help="also return native posteriors (none: what the pipeline does without --save-probseg)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "inference.json")
    args = ap.parse_args(argv)
    img = synthetic_head() if args.synthetic else nib.load(args.input)
    sampler = RssSampler()
    sampler.start()
    stages = {}
    with tempfile.TemporaryDirectory() as tmp:
        pkg = args.model or make_package(Path(tmp) / "pkg", args.mode)
        t0 = time.perf_counter()
        seg = Segmenter.from_package(pkg, device=args.device, threads=args.threads)
        stages["load_model"] = (t0, time.perf_counter())
    start = time.perf_counter()
    keep = args.posteriors != "none"
    res = seg.segment(img, source_name=str(args.input), return_posteriors=keep,
                      posteriors_dtype=args.posteriors if keep else "float32")
    t = start
    for name in ("checks", "preprocess", "predict", "cleanup", "to_native"):
        if name not in res.timings_s:  # cleanup: only when the package asks for it
            continue
        stages[name] = (t, t + res.timings_s[name])
        t += res.timings_s[name]
    t0 = time.perf_counter()
    vols = metrics.label_volumes(res.dseg, None, img.affine, res.label_table, soft_sums=res.soft_sums)
    stages["volumes"] = (t0, time.perf_counter())
    t0 = time.perf_counter()
    flags = metrics.qc_flags(res.dseg, None, vols, res.label_table, mean_confidence=res.mean_max_posterior)
    stages["qc_flags"] = (t0, time.perf_counter())
    time.sleep(0.05)
    sampler.stop()
    out = {
        "benchmark": "inference", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "note": (f"model package {args.model}" if args.model else
                 "UNTRAINED network with the default architecture (random weights): timings and "
                 "memory only; segmentation quality is meaningless"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": psutil.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "device": res.device},
        "input": {"path": "synthetic 256^3" if args.synthetic else str(args.input),
                  "shape": list(img.shape), "zooms_mm": [float(z) for z in img.header.get_zooms()[:3]],
                  "orientation": "".join(nib.aff2axcodes(img.affine))},
        "posteriors": args.posteriors,
        "model": {"mode": seg.manifest.get("inference", {}).get("mode", args.mode),
                  "name": seg.manifest.get("name"), "architecture": seg.model.config.to_dict(),
                  "parameters": sum(p.numel() for p in seg.model.parameters()),
                  "trained": args.model is not None},
        "stages": {k: {"wall_s": round(b - a, 3), "peak_rss_mb": sampler.peak_mb(a, b)}
                   for k, (a, b) in stages.items()},
        "segment_total_s": round(res.timings_s["total"], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "flagged_qc": [f["name"] for f in flags if f["flagged"]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["stages"], indent=1), "\ntotal", out["segment_total_s"], "s; peak", out["peak_rss_mb"], "MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
