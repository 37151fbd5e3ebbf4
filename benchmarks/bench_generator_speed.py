"""Throughput of the SynthSeg-style generator against cornucopia 0.5.1, side by side.

3D: one 160^3 crop of a real label map (54 labels, 48 generation classes); 2D: a batch of 64
axial 160x160 slices (cornucopia loops over them one by one; ours is one batched call). Same
steps in both as far as both have them: affine + elastic, class Gaussian intensities with
texture, bias field, gamma, blur, low resolution, noise, percentile rescale. Not compared:
our left-right flip (off here; cornucopia has none) and cornucopia's g-factor noise map
(off). Cornucopia's texture is an edge-preserving per-label smoothing, ours two smooth fields.

Usage::

    .venv/bin/python benchmarks/bench_generator_speed.py [--reps 1] [--threads 1]

Writes ``benchmarks/results/speed_generator.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from l2s_pipelines.io.nifti import load_label_map
from l2s_pipelines.labels import DEFAULT_SOURCE_MAP, LabelTable, generation_classes
from l2s_pipelines.synth import SynthConfig, SynthGenerator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "label_maps"
OUT = Path(__file__).resolve().parent / "results" / "speed_generator.json"
SIZE = 160


def load_crop(path: Path) -> torch.Tensor:
    """(1, 160, 160, 160) long: the 160^3 window centred on the label map's non-zero box."""
    lab, _ = load_label_map(path)
    nz = torch.nonzero(lab[0])
    centre = ((nz.min(0).values + nz.max(0).values) // 2).tolist()
    sl = [slice(max(0, c - SIZE // 2), max(0, c - SIZE // 2) + SIZE) for c in centre]
    return lab[:, sl[0], sl[1], sl[2]].contiguous()


def cornucopia_transform(values, gen_tsv, patch):
    """cornucopia SynthFromLabelTransform with the same generation classes and targets."""
    import cornucopia as cc

    classes = generation_classes(values, gen_tsv)
    groups: dict[int, list[int]] = {}
    for v, c in classes.items():
        if v != 0:
            groups.setdefault(c, []).append(v)
    table = LabelTable.default()
    merged = {v: [v] + [s for s, t in DEFAULT_SOURCE_MAP.items() if t == v] for v in table.values[1:]}
    return cc.SynthFromLabelTransform(
        patch=patch, synth_labels=[tuple(g) for g in groups.values()],
        target_labels=[tuple(m) for m in merged.values()], sample_in_background=True,
        gfactor=False, translations=0.1, rotation=15, shears=0.012, zooms=0.15, elastic=0.05,
        bias_strength=0.5, gamma=0.6, motion_fwhm=3, resolution=8, snr=10,
    )


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=1, help="cornucopia repetitions (ours: 3x this)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--map", default=str(DATA / "training_seg_01.nii.gz"))
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen_tsv = DATA / "generation_labels.tsv"

    vol = load_crop(Path(args.map))  # (1, X, Y, Z)
    values = torch.unique(vol).tolist()
    slices = vol[0].permute(2, 0, 1)[None].movedim(1, 0)  # (Z, 1, X, Y)
    content = (slices.reshape(SIZE, -1) > 0).float().mean(1)
    slices = slices[torch.argsort(content, descending=True)[:64]].contiguous()  # 64 slices

    config = SynthConfig(flip=False, untouched_probability=0.0)
    ours = SynthGenerator(config, generation=gen_tsv)
    g = torch.Generator().manual_seed(0)
    ours(vol[None], g)  # warm-up (lookup tables, allocator)
    ours_3d = timed(lambda: ours(vol[None], g), 3 * args.reps)
    ours_2d = timed(lambda: ours(slices, g), 3 * args.reps)

    torch.manual_seed(0)  # cornucopia draws from the global generator
    cc3 = cornucopia_transform(values, gen_tsv, SIZE)
    cc2 = cornucopia_transform(values, gen_tsv, SIZE)
    cc_3d = timed(lambda: cc3(vol), args.reps)
    cc_2d = timed(lambda: [cc2(s) for s in slices], args.reps)

    import cornucopia

    result = {
        "generator_vs_cornucopia_3d": float(np.median(cc_3d) / np.median(ours_3d)),
        "generator_vs_cornucopia_2d": float(np.median(cc_2d) / np.median(ours_2d)),
        "seconds": {"ours_3d_per_volume": ours_3d, "cornucopia_3d_per_volume": cc_3d,
                    "ours_2d_per_batch64": ours_2d, "cornucopia_2d_per_batch64": cc_2d},
        "shape_3d": list(vol.shape[1:]), "batch_2d": list(slices.shape),
        "n_labels": len(values), "label_map": Path(args.map).name,
        "config": config.to_dict(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "cornucopia": cornucopia.__version__,
        "cpu": platform.processor() or platform.machine(), "device": "cpu",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "benchmarks/bench_generator_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("generator_vs_cornucopia_3d",
                                             "generator_vs_cornucopia_2d", "seconds")}, indent=2))
    return result


if __name__ == "__main__":
    main()
