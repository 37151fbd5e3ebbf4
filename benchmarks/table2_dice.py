"""Paper Table 2: Dice on noisy "real" images for N (SynthSeg without noise), L (Learn2Synth with a
learnable noise sigma) and O (oracle: SynthSeg trained with the true noise).

Data: 2D axial slices at 2 mm of the label maps, split by subject: source = maps 01-10 (segmenter's
synthetic data), real = maps 11-15 (Learn2Synth's labelled "real" scans: synthetic, noise-free
generator, then Gaussian noise sigma; ``--generator light`` by default as in noise_recovery.py),
test = maps 16-20 (never used in training: ``--test-size`` synthetic images with the same
corruption, fixed seed). Score: mean over test images of the mean per-structure hard Dice (33
SynthSeg 2.0 labels, background excluded; not micro-averaged).
N does not depend on sigma: it is trained once and scored at every sigma.
Published (N / L / O): 0.31 / 0.89 / 0.89, 0.21 / 0.86 / 0.86, 0.14 / 0.84 / 0.84.

Budget (default): every model gets the same 4500 steps, batch 4 x 96 x 96, paper UNet, 1 thread;
L = 3000 plain warm-up steps + 1500 Learn2Synth iterations (the runs of noise_recovery.py: with the
same ``--work`` they are trained once and reused; N and O are trained first, so the two scripts can
run side by side on two cores). About 12 min per N/O run and 16 min per L run on one core here.

    .venv/bin/python benchmarks/table2_dice.py [--quick] [--steps N] [--warmup W] [--work DIR]
Writes ``benchmarks/results/table2_dice.json`` (``table2_dice_quick.json`` with --quick): a list
of {"sigma", "N", "L", "O", "L_sigma", "steps", "warmup", "seed", "test_images"}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_budget_args, apply_quick, base_config, load_slices, mean_dice_on,  # noqa: E402
                    noise_free_test_pairs, tail_mean, train_in, write_json)
from noise_recovery import add_sigma_arg, l2s_noise_run  # noqa: E402

SIGMAS = [0.05, 0.10, 0.15]


def main(argv=None):
    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.train.data import NoiseCorruption
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(p, steps=4500, warmup=3000, batch=4, patch=96)
    add_sigma_arg(p)
    p.add_argument("--test-size", type=int, default=64)
    args = p.parse_args(argv)
    apply_quick(args, "table2_dice")
    if args.quick:
        args.test_size = min(args.test_size, 8)
    k = len(LabelTable.default().values)
    source, real, test = load_slices("source"), load_slices("real"), load_slices("test")

    def test_set(sigma):
        pairs = noise_free_test_pairs(args, test, NoiseCorruption(sigma))
        return pairs.sample_batch(args.test_size, torch.Generator().manual_seed(10_000 + args.seed))

    naive = train_in(args, "N", base_config(args, method="synthseg", name="table2-N"), label_maps=source,
                     real_val=noise_free_test_pairs(args, test)).model
    oracles = {s: train_in(args, f"O-{s}", base_config(args, method="oracle", oracle_noise_sigma=s,
                                                         name=f"table2-O-{s}"), label_maps=source,
                           real_val=noise_free_test_pairs(args, test, NoiseCorruption(s))).model
               for s in SIGMAS}
    results = []
    for sigma in SIGMAS:
        x, y = test_set(sigma)
        l2s = l2s_noise_run(args, sigma, source, real, test)
        row = {"sigma": sigma, "N": mean_dice_on(naive, x, y, k), "L": mean_dice_on(l2s.model, x, y, k),
               "O": mean_dice_on(oracles[sigma], x, y, k),
               "L_sigma": tail_mean(l2s.metrics_path, "aug/noise_sigma"), "steps": args.steps,
               "warmup": args.warmup, "seed": args.seed, "test_images": args.test_size,
               "generator": args.generator, "batch": args.batch, "patch": args.patch}
        print(row, flush=True)
        results.append(row)
        write_json(args.out, results)


if __name__ == "__main__":
    main()
