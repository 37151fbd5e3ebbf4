"""Can Learn2Synth recover the augmenter's gamma and blur parameters? (the Table 1 experiment of
``noise_recovery.py``, for the parts added to the parametric augmenter beside noise and bias)

Source images (the segmenter's data) and "real" images are both synthesised by the SynthSeg-style
generator (``--generator light``: no noise, bias field, gamma, blur or low resolution; see
``common.no_noise_generator``) from different subjects' label maps (2D axial slices at 2 mm:
source = maps 01-10, real = maps 11-15). The "real" images then go through a *fixed* augmenter of
the same family with a preset value (the truth): a per-image gamma ``exp(g* z)``, ``z ~ N(0, 1)``,
or a per-image Gaussian blur of standard deviation ``s* v`` voxels, ``v ~ U(0, 1)``. Learn2Synth
trains the segmenter with a learnable augmenter that has only that part (noise and bias off),
started away from the truth (``--gamma-init``, ``--blur-init``). Inferred value = the mean of the
learnable parameter over the last 10% of the steps; the final value is reported too.

Budget (default): 3000 steps per run, the first 1500 plain warm-up steps (through the augmenter at
its start value, shared by runs of the same configuration, see ``common.warm_started``), then 1500
Learn2Synth iterations; batch 4 x 96 x 96, the paper UNet, 1 thread. ``--quick``: 12 steps.

    .venv/bin/python benchmarks/parameter_recovery.py [--parts gamma blur] [--quick] [--work DIR]

Writes ``benchmarks/results/parameter_recovery.json`` (``parameter_recovery_quick.json`` with
--quick): a list of {"part", "key", "truth", "init", "inferred", "final", "steps", "warmup",
"trajectory"}, and the figure ``parameter_recovery.png`` (the parameter against step, one panel
per part, dashed: the truth).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_budget_args, apply_quick, base_config, load_slices, noise_free_test_pairs,  # noqa: E402
                    pyplot, save_png, synthetic_pairs, tail_mean, trajectory, warm_started, write_json)

#: part -> (its key in the augmenter's log, the augmenter option that sets its start value)
PARTS = {"gamma": ("gamma_spread", "gamma_init"), "blur": ("blur_max_vox", "blur_init")}


class FixedAugmenterCorruption:
    """The "real" images' corruption: a parametric augmenter frozen at the preset values."""

    def __init__(self, options: dict):
        from l2s_pipelines.augment import ParametricAugmenter
        self.augmenter = ParametricAugmenter(2, noise=False, bias=False, **options).requires_grad_(False)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return self.augmenter(x, generator)


def part_options(part: str, value: float) -> dict:
    """Augmenter keyword arguments with only ``part`` on, at ``value``."""
    key, init_name = PARTS[part]
    return {part: True, init_name: value}


def recovery_run(args, part: str, source, real, test):
    truth, init = getattr(args, f"{part}_truth"), getattr(args, f"{part}_init")
    corruption = FixedAugmenterCorruption(part_options(part, truth))
    real_train = synthetic_pairs(real, base_config(args).generator, (args.patch, args.patch), corruption)
    augmenter = {"noise": False, "bias": False, **part_options(part, init)}
    cfg = base_config(args, method="l2s-parametric", augmenter=augmenter, name=f"recovery-{part}-{truth}")
    return warm_started(args, f"R-{part}-{truth}", cfg, label_maps=source, real_train=real_train,
                        real_val=noise_free_test_pairs(args, test, corruption),
                        warm_val=noise_free_test_pairs(args, test))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(p, steps=3000, warmup=1500, batch=4, patch=96)
    p.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    p.add_argument("--gamma-truth", type=float, default=0.3, help="spread of log-gamma of the real images")
    p.add_argument("--gamma-init", type=float, default=0.05, help="start of the learnable spread")
    p.add_argument("--blur-truth", type=float, default=1.2, help="upper blur sd of the real images (voxels)")
    p.add_argument("--blur-init", type=float, default=0.3, help="start of the learnable upper blur sd (voxels)")
    args = p.parse_args(argv)
    apply_quick(args, "parameter_recovery")
    source, real, test = load_slices("source"), load_slices("real"), load_slices("test")
    results = []
    for part in args.parts:
        key = PARTS[part][0]
        res = recovery_run(args, part, source, real, test)
        inferred = tail_mean(res.metrics_path, f"aug/{key}")
        truth, init = getattr(args, f"{part}_truth"), getattr(args, f"{part}_init")
        print(f"{part}: truth {truth}, start {init}, inferred {inferred:.4f} "
              f"(final {res.augmentation[key]:.4f})", flush=True)
        results.append({"part": part, "key": key, "truth": truth, "init": init, "inferred": inferred,
                        "final": res.augmentation[key], "seed": args.seed, "steps": args.steps,
                        "warmup": args.warmup, "generator": args.generator, "batch": args.batch,
                        "patch": args.patch, "final_val_dice": res.final_val_dice,
                        "trajectory": trajectory(res.metrics_path, f"aug/{key}", every=max(1, args.steps // 200))})
        write_json(args.out, results)
        plot_recovery(results, args.out.with_suffix(".png"))


def plot_recovery(results: list[dict], path: Path) -> Path:
    """One panel per part: the learnable parameter against step (dashed: the truth)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), dpi=100, squeeze=False)
    for ax, r in zip(axes[0], results):
        steps, values = zip(*r["trajectory"]) if r["trajectory"] else ((), ())
        ax.plot(steps, values, color="C0", label="learnable")
        ax.axhline(r["truth"], color="C1", ls="--", lw=1, label="truth")
        ax.axvline(r["warmup"], color="grey", ls=":", lw=0.8)
        ax.set(xlabel="training step (dotted: end of the warm-up)", ylabel=r["key"], title=r["part"])
        ax.legend(fontsize=8)
    return save_png(fig, path)


if __name__ == "__main__":
    main()
