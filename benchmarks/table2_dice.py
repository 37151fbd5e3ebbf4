"""Paper Table 2: Dice on noisy "real" images for N (SynthSeg without noise), L (Learn2Synth with a
learnable noise sigma) and O (oracle: SynthSeg trained with the true noise).

Data: 2D axial slices at 2 mm of the label maps, split by subject: source = maps 01-10 (segmenter's
synthetic data), real = maps 11-15 (Learn2Synth's labelled "real" scans: synthetic, noise-free
generator, then Gaussian noise sigma), test = maps 16-20 (never used in training: ``--test-size``
synthetic images with the same corruption, fixed seed). Score: mean over test images of the mean
per-structure hard Dice (33 SynthSeg 2.0 labels, background excluded; not micro-averaged).
N does not depend on sigma: it is trained once and scored at every sigma.
Published (N / L / O): 0.31 / 0.89 / 0.89, 0.21 / 0.86 / 0.86, 0.14 / 0.84 / 0.84.

Budget (default): 400 steps (150 warm-up for L), batch 4 x 96 x 96, paper UNet, 1 thread: 3 L
runs of about 3-4 min and 4 N/O runs of about 1 min on one core here (0.47 s per Learn2Synth
iteration, 0.12 s per plain step), about 15 min in all. ``--quick``: 12 steps, to check the script runs.

    .venv/bin/python benchmarks/table2_dice.py [--quick] [--steps N] [--seed S]
Writes ``benchmarks/results/table2_dice.json`` (``table2_dice_quick.json`` with --quick): a list
of {"sigma", "N", "L", "O", "steps", "seed", "test_images"}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_budget_args, apply_quick, base_config, load_slices, mean_dice_on,  # noqa: E402
                    no_noise_generator, run_dir, synthetic_pairs, write_json)

SIGMAS = [0.05, 0.10, 0.15]


def main(argv=None):
    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.train.data import NoiseCorruption
    from l2s_pipelines.train.trainer import train
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(p, steps=400, warmup=150, batch=4, patch=96)
    p.add_argument("--test-size", type=int, default=64)
    args = p.parse_args(argv)
    apply_quick(args, "table2_dice")
    if args.quick:
        args.test_size = min(args.test_size, 8)
    k = len(LabelTable.default().values)
    patch = (args.patch, args.patch)
    source, real, test = load_slices("source"), load_slices("real"), load_slices("test")

    def test_set(sigma):
        pairs = synthetic_pairs(test, no_noise_generator(), patch, NoiseCorruption(sigma))
        return pairs.sample_batch(args.test_size, torch.Generator().manual_seed(10_000 + args.seed))

    def fit(cfg, name, **kw):
        t = time.time()
        res = train(cfg, label_maps=source, out_dir=run_dir(args, name), **kw)
        print(f"{name}: trained in {time.time() - t:.0f} s", flush=True)
        return res.model

    naive = fit(base_config(args, method="synthseg", name="table2-N"), "N")
    results = []
    for sigma in SIGMAS:
        x, y = test_set(sigma)
        real_train = synthetic_pairs(real, no_noise_generator(), patch, NoiseCorruption(sigma))
        l2s = fit(base_config(args, method="l2s-parametric", augmenter={"bias": False, "sigma_init": 0.03},
                              name=f"table2-L-{sigma}"), f"L-{sigma}", real_train=real_train)
        oracle = fit(base_config(args, method="oracle", oracle_noise_sigma=sigma, name=f"table2-O-{sigma}"),
                     f"O-{sigma}")
        row = {"sigma": sigma, "N": mean_dice_on(naive, x, y, k), "L": mean_dice_on(l2s, x, y, k),
               "O": mean_dice_on(oracle, x, y, k), "steps": args.steps, "seed": args.seed,
               "test_images": args.test_size}
        print(row, flush=True)
        results.append(row)
        write_json(args.out, results)


if __name__ == "__main__":
    main()
