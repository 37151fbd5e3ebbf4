"""Paper Table 1: can a learnable-sigma augmenter recover the noise level of the "real" images?

Source images (segmenter's data) and "real" images are both synthesised by the SynthSeg-style
generator with its noise step off, from different subjects' label maps (2D axial slices at 2 mm:
source = maps 01-10, real = maps 11-15). The "real" images then get Gaussian noise of a preset
sigma: 0, 0.05, 0.10, 0.15, or per image U[0.025, 0.2]. Learn2Synth (parametric augmenter with
noise only, ``sigma = softplus(s)`` starting at ``--sigma-init``) trains the segmenter; the
inferred sigma is the augmenter's final value. Published: 0.001 / 0.042 / 0.098 / 0.146 / 0.134.

Budget (default): 400 steps of which 150 warm-up, batch 4 x 96 x 96, paper UNet (33 classes),
1 thread. Measured on one core here (bench_l2s_step.py --shape 96 96 --classes 33 --threads 1):
0.47 s per Learn2Synth iteration, 0.12 s per plain step, so about 3-4 min per preset with the
generator, 15-20 min for the five presets. ``--quick``: 12 steps, to check the script runs.

    .venv/bin/python benchmarks/noise_recovery.py [--quick] [--steps N] [--seed S]
Writes ``benchmarks/results/noise_recovery.json`` (``noise_recovery_quick.json`` with --quick):
a list of {"preset", "inferred_sigma", "seed", "steps"}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_budget_args, apply_quick, base_config, load_slices, no_noise_generator,  # noqa: E402
                    run_dir, synthetic_pairs, write_json)

PRESETS = [0.0, 0.05, 0.10, 0.15, (0.025, 0.2)]
PUBLISHED = {"0.0": 0.001, "0.05": 0.042, "0.1": 0.098, "0.15": 0.146, "U[0.025, 0.2]": 0.134}


def main(argv=None):
    from l2s_pipelines.train.data import NoiseCorruption
    from l2s_pipelines.train.trainer import train
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(p, steps=400, warmup=150, batch=4, patch=96)
    p.add_argument("--sigma-init", type=float, default=0.03)
    args = p.parse_args(argv)
    apply_quick(args, "noise_recovery")
    t0 = time.time()
    source, real = load_slices("source"), load_slices("real")
    print(f"loaded label maps in {time.time() - t0:.0f} s", flush=True)
    results = []
    for preset in PRESETS:
        name = f"U[{preset[0]}, {preset[1]}]" if isinstance(preset, tuple) else str(float(preset))
        corruption = NoiseCorruption(preset) if preset != 0.0 else None
        real_train = synthetic_pairs(real, no_noise_generator(), (args.patch, args.patch), corruption)
        cfg = base_config(args, method="l2s-parametric", augmenter={"bias": False, "sigma_init": args.sigma_init},
                          name=f"noise-recovery-{name}")
        t = time.time()
        res = train(cfg, label_maps=source, real_train=real_train, real_val=None,
                    out_dir=run_dir(args, f"preset-{name}"))
        sigma = res.augmentation["noise_sigma"]
        print(f"preset {name}: inferred sigma {sigma:.4f} (published {PUBLISHED[name]}) "
              f"in {time.time() - t:.0f} s", flush=True)
        results.append({"preset": name, "inferred_sigma": sigma, "seed": args.seed, "steps": args.steps})
        write_json(args.out, results)


if __name__ == "__main__":
    main()
