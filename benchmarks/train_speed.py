"""Training speed of the bundled model's recipe: the old and the new plain step, and the
Learn2Synth iteration, side by side in one run (issue 9, part A).

Every variant runs the trainer's own code (:class:`l2s_pipelines.train.trainer._Run`) on the
real data path: 2D slices of the 20 SynthSeg label maps at 2 mm through the generator
(batch 8 x 128^2, axial), the tune subjects' real slices for the Learn2Synth iteration.

- ``old``: the first bundled model's step: UNet 16-24-32-48-64 (InstanceNorm), fp32, the
  functional (per-tensor) Adam, priors of that time are irrelevant to speed;
- ``old_net_new_step``: the same network with bf16 autocast and the foreach Adam (speed only);
- ``new``: the campaign's recipe: UNet 16-32-64-128-256 (InstanceNorm), bf16, foreach Adam;
- ``new_l2s``: the Learn2Synth iteration of the new network (meta-step in fp32, as it must be).

Each step is split into synthesis (generator), forward + loss, backward and optimiser (the
Learn2Synth iteration is timed whole). Variants alternate, ``--repeats`` rounds after a warm-up
round; medians are reported. Threads: ``--threads`` (default 1, the campaign's other core busy).

    .venv/bin/python benchmarks/train_speed.py [--repeats 10] [--threads 1]

Writes ``benchmarks/results/train_speed.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, RESULTS, environment, write_json  # noqa: E402

OLD_WIDTHS = [16, 24, 32, 48, 64]
NEW_WIDTHS = [16, 32, 64, 128, 256]


def build_run(widths, amp: str, method: str = "l2s-parametric"):
    from l2s_pipelines.bids_app.train_cli import collect_real_pairs
    from l2s_pipelines.io.nifti import LabelMapDataset, RealPairDataset
    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.synth import SynthConfig
    from l2s_pipelines.train.config import TrainConfig
    from l2s_pipelines.train.trainer import _Run

    table = LabelTable.default()
    gen = SynthConfig.mild().to_dict()
    for key in ("patch_size", "voxel_size_mm", "percentiles"):
        gen.pop(key)
    cfg = TrainConfig(method=method, ndim=2, plane="axial", patch_size=(128, 128), batch_size=8,
                      warmup_steps=0, amp=amp, voxel_size_mm=(2.0,) * 3, generator=gen,
                      unet={"widths": widths, "convs_per_level": 2, "activation": "elu", "norm": "instance"})
    kw = {"voxel_size": cfg.voxel_size_mm, "ndim": 2, "plane": "axial"}
    maps = LabelMapDataset(sorted((DATA / "label_maps").glob("*.nii.gz")), **kw)
    pairs = collect_real_pairs(DATA / "bids_real", None, ["ixi012", "ixi013"])
    real = RealPairDataset([p["image"] for p in pairs], [p["reference"] for p in pairs], table, **kw)
    return _Run(cfg, maps, real, None, None, table)


def old_plain_step(run, x, y) -> dict:
    """The plain step as it was before this issue: fp32, per-tensor functional Adam."""
    from l2s_pipelines.train.functional_optim import step_module
    names, params = zip(*run.model.named_parameters())
    t0 = time.perf_counter()
    loss = run.loss_fn(run.model(x), y)
    t1 = time.perf_counter()
    grads = torch.autograd.grad(loss, params)
    t2 = time.perf_counter()
    step_module(run.model, run.seg_opt, dict(zip(names, grads)))
    return {"forward_loss": t1 - t0, "backward": t2 - t1, "optimiser": time.perf_counter() - t2}


def new_plain_step(run, x, y) -> dict:
    """The trainer's plain step, timed in parts (same code as ``_Run.plain_step``)."""
    from l2s_pipelines.train.functional_optim import step_module_
    names, params = zip(*run.model.named_parameters())
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.config.amp == "bf16"):
        logits = run.model(x)
    loss = run.loss_fn(logits.float(), y)
    t1 = time.perf_counter()
    grads = torch.autograd.grad(loss, params)
    t2 = time.perf_counter()
    step_module_(run.model, run.seg_opt, dict(zip(names, grads)))
    return {"forward_loss": t1 - t0, "backward": t2 - t1, "optimiser": time.perf_counter() - t2}


def timed(run, kind: str) -> dict:
    t0 = time.perf_counter()
    if kind == "l2s":
        run.step("l2s", 0)
        return {"total": time.perf_counter() - t0}
    x, y = run.synth_batch(run.config.batch_size)
    with torch.no_grad():
        x = run.augmenter(x, run.gen)
    parts = {"synthesis": time.perf_counter() - t0}
    parts.update((old_plain_step if kind == "old" else new_plain_step)(run, x, y))
    parts["total"] = sum(parts.values())
    return parts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "train_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {"old": (build_run(OLD_WIDTHS, "none"), "old"),
                "old_net_new_step": (build_run(OLD_WIDTHS, "bf16"), "new"),
                "new": (build_run(NEW_WIDTHS, "bf16"), "new"),
                "new_l2s": (build_run(NEW_WIDTHS, "bf16"), "l2s")}
    times: dict[str, list[dict]] = {k: [] for k in variants}
    for rnd in range(args.repeats + 1):
        for name, (run, kind) in variants.items():
            t = timed(run, kind)
            if rnd:
                times[name].append(t)
        print(f"round {rnd}/{args.repeats}: " + ", ".join(
            f"{k} {v[-1]['total']:.3f}s" for k, v in times.items() if v), flush=True)
    out = {}
    for name, rows in times.items():
        med = {part: statistics.median(r[part] for r in rows) for part in rows[0]}
        out[name] = {"median_s": med, "steps_per_s": 1.0 / med["total"],
                     "parameters": sum(p.numel() for p in variants[name][0].model.parameters())}
    old = out["old"]["median_s"]["total"]
    result = {"setup": "batch 8 x 128^2 axial slices at 2 mm, 33 classes, Dice + CE, generator 'mild'",
              "variants": out,
              "speedup_same_network": old / out["old_net_new_step"]["median_s"]["total"],
              "new_over_old_time": out["new"]["median_s"]["total"] / old,
              "l2s_over_new_plain_time": out["new_l2s"]["median_s"]["total"] / out["new"]["median_s"]["total"],
              "repeats": args.repeats, "environment": environment()}
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
