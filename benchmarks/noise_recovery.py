"""Paper Table 1: can a learnable-sigma augmenter recover the noise level of the "real" images?

Source images (segmenter's data) and "real" images are both synthesised by the SynthSeg-style
generator with its noise step off (``--generator light``, the default: also without bias field,
gamma, blur and low resolution, see ``common.no_noise_generator``), from different subjects' label
maps (2D axial slices at 2 mm: source = maps 01-10, real = maps 11-15). The "real" images then get
Gaussian noise of a preset sigma: 0, 0.05, 0.10, 0.15, or per image U[0.025, 0.2]. Learn2Synth
(parametric augmenter with noise only, ``sigma = softplus(s)`` starting at ``--sigma-init``) trains
the segmenter.
Inferred sigma = the mean of the augmenter's sigma over the last 10% of the steps (the final value
is reported too). Published: 0.001 / 0.042 / 0.098 / 0.146 / 0.134.

Budget (default): 4500 steps per preset, the first 3000 plain warm-up steps (shared by all presets:
trained once, see ``common.warm_started``), then 1500 Learn2Synth iterations; batch 4 x 96 x 96,
paper UNet (33 classes), 1 thread. Measured on one core here: about 0.14 s per plain step and 0.68 s per
Learn2Synth iteration, so about 7 min of warm-up and 17 min per preset. ``--quick``: 12 steps.
Run it beside table2_dice.py with the same ``--work`` to share the Learn2Synth runs (a file lock
keeps the two scripts from training the same run at once).

    .venv/bin/python benchmarks/noise_recovery.py [--quick] [--steps N] [--warmup W] [--work DIR]
Writes ``benchmarks/results/noise_recovery.json`` (``noise_recovery_quick.json`` with --quick):
a list of {"preset", "inferred_sigma", "final_sigma", "seed", "steps", "warmup", "sigma_trajectory"},
and the figure ``noise_recovery_sigma.png`` (sigma against step, one line per preset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_budget_args, apply_quick, base_config, load_slices, no_noise_generator,  # noqa: E402
                    noise_free_test_pairs, pyplot, save_png, synthetic_pairs, tail_mean, trajectory,
                    warm_started, write_json)

#: run order: the three sigmas Table 2 reuses first
PRESETS = [0.05, 0.10, 0.15, 0.0, (0.025, 0.2)]
PUBLISHED = {"0.0": 0.001, "0.05": 0.042, "0.1": 0.098, "0.15": 0.146, "U[0.025, 0.2]": 0.134}


def preset_name(preset) -> str:
    return f"U[{preset[0]}, {preset[1]}]" if isinstance(preset, tuple) else str(float(preset))


def l2s_noise_run(args, preset, source, real, test):
    """The Learn2Synth run of one preset (shared with table2_dice.py through ``--work``)."""
    from l2s_pipelines.train.data import NoiseCorruption
    name = preset_name(preset)
    corruption = NoiseCorruption(preset) if preset != 0.0 else None
    real_train = synthetic_pairs(real, no_noise_generator(args.generator), (args.patch, args.patch), corruption)
    cfg = base_config(args, method="l2s-parametric", augmenter={"bias": False, "sigma_init": args.sigma_init},
                      name=f"noise-recovery-{name}")
    return warm_started(args, f"L-{name}", cfg, label_maps=source, real_train=real_train,
                        real_val=noise_free_test_pairs(args, test, corruption),
                        warm_val=noise_free_test_pairs(args, test))


def add_sigma_arg(p) -> None:
    p.add_argument("--sigma-init", type=float, default=0.03, help="start value of the learnable sigma")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(p, steps=4500, warmup=3000, batch=4, patch=96)
    add_sigma_arg(p)
    p.add_argument("--presets", nargs="+", default=[preset_name(x) for x in PRESETS],
                   choices=[preset_name(x) for x in PRESETS], help="run only these presets")
    args = p.parse_args(argv)
    apply_quick(args, "noise_recovery")
    source, real, test = load_slices("source"), load_slices("real"), load_slices("test")
    results = []
    for preset in [x for x in PRESETS if preset_name(x) in args.presets]:
        name = preset_name(preset)
        res = l2s_noise_run(args, preset, source, real, test)
        sigma = tail_mean(res.metrics_path, "aug/noise_sigma")
        print(f"preset {name}: inferred sigma {sigma:.4f} (final {res.augmentation['noise_sigma']:.4f}, "
              f"published {PUBLISHED[name]})", flush=True)
        results.append({"preset": name, "inferred_sigma": sigma, "final_sigma": res.augmentation["noise_sigma"],
                        "seed": args.seed, "steps": args.steps, "warmup": args.warmup,
                        "generator": args.generator, "batch": args.batch, "patch": args.patch,
                        "final_val_dice": res.final_val_dice,
                        "sigma_trajectory": trajectory(res.metrics_path, "aug/noise_sigma",
                                                       every=max(1, args.steps // 200))})
        write_json(args.out, results)
        plot_trajectories(results, args.out.with_name(args.out.stem + "_sigma.png"))


def plot_trajectories(results: list[dict], path: Path) -> Path:
    """Sigma of the augmenter against training step, one line per preset (dashed: the preset)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, r in enumerate(results):
        steps, sigmas = zip(*r["sigma_trajectory"]) if r["sigma_trajectory"] else ((), ())
        line, = ax.plot(steps, sigmas, label=f"preset {r['preset']}", color=f"C{i}")
        if not r["preset"].startswith("U"):
            ax.axhline(float(r["preset"]), color=line.get_color(), ls="--", lw=0.8)
    ax.axvline(results[0]["warmup"], color="grey", ls=":", lw=0.8)
    ax.set(xlabel="training step (dotted: end of the plain warm-up)", ylabel="learnable noise sigma",
           title="Table 1: noise recovery (dashed: preset)")
    ax.legend(fontsize=8)
    return save_png(fig, path)


if __name__ == "__main__":
    main()
