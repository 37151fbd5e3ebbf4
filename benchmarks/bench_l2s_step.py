"""Cost of one Learn2Synth iteration against one plain SynthSeg step (time and peak memory).

Same network (the paper's 2D UNet, 0.27 M parameters), same batch (4 x 192 x 176, 24 classes by
default), same loss (Dice + CE), same Adam. The plain step is: augmenter applied without gradient,
forward, backward, Adam. The Learn2Synth iteration is :func:`l2s_iteration` (synthetic forward +
backward with ``create_graph``, differentiable Adam, real forward + backward, hypergradient
vector-Jacobian product) plus the augmenter's Adam step. Synthetic and "real" batches are
class-intensity images of random smooth label maps (the generator's cost is left out of both).

Timing: both variants run alternately in this process (``--repeats`` times each after one
warm-up), median reported. Memory: each variant runs once in its own fresh child process; a
thread samples the process RSS (psutil) every 0.2 ms during the step; reported value = peak RSS
during the step minus RSS just before it (after setup and ``malloc_trim``), in MiB.

Also reported (derived, not measured separately): the amortised cost of the *deviation* that makes
a hypergradient step only every k-th iteration (``TrainConfig.hyper_every = k``, plain synthetic
steps through the current augmenter in between): ``(l2s + (k-1) plain) / k``.

    .venv/bin/python benchmarks/bench_l2s_step.py            # full: 10 repeats
    .venv/bin/python benchmarks/bench_l2s_step.py --quick    # 2 repeats
Writes ``benchmarks/results/speed_l2s.json``.
"""

from __future__ import annotations

import argparse
import json
import ctypes
import threading
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PAPER_UNET, RESULTS, environment, write_json  # noqa: E402

from l2s_pipelines.augment import ParametricAugmenter  # noqa: E402
from l2s_pipelines.nn.losses import combined_loss  # noqa: E402
from l2s_pipelines.nn.unet import UNet, UNetConfig  # noqa: E402
from l2s_pipelines.train.functional_optim import FunctionalAdam, step_module  # noqa: E402
from l2s_pipelines.train.hypergrad import l2s_iteration  # noqa: E402


def make_batch(b, shape, k, g):
    coarse = torch.randn((b, k) + tuple(s // 16 for s in shape), generator=g)
    y = F.interpolate(coarse, size=shape, mode="bilinear", align_corners=False).argmax(1)
    means = torch.rand(k, generator=g)
    return (means[y] + 0.02 * torch.randn(y.shape, generator=g)).unsqueeze(1), y


class Bench:
    def __init__(self, args):
        torch.manual_seed(0)
        self.g = torch.Generator().manual_seed(0)
        shape = tuple(args.shape)
        arch = {**PAPER_UNET, "widths": tuple(PAPER_UNET["widths"]), "norm": args.norm}
        self.net = UNet(UNetConfig(ndim=2, out_channels=args.classes, **arch))
        self.aug = ParametricAugmenter(2)
        self.opt, self.aug_opt = FunctionalAdam(1e-3), FunctionalAdam(1e-3)
        self.syn = make_batch(args.batch, shape, args.classes, self.g)
        self.real = make_batch(args.batch, shape, args.classes, self.g)
        self.names = [k for k, _ in self.net.named_parameters()]

    def plain(self):
        x, y = self.syn
        with torch.no_grad():
            x = self.aug(x, self.g)
        loss = combined_loss(self.net(x), y)
        grads = torch.autograd.grad(loss, list(self.net.parameters()))
        step_module(self.net, self.opt, dict(zip(self.names, grads)))

    def l2s(self):
        l2s_iteration(self.net, self.aug, self.opt, *self.syn, *self.real, loss_fn=combined_loss,
                      generator=self.g)
        step_module(self.aug, self.aug_opt, {k: p.grad for k, p in self.aug.named_parameters()})


def child(args):
    """Run one variant in this (fresh) process and print its extra peak RSS in MiB."""
    import gc

    import psutil
    bench = Bench(args)
    fn = getattr(bench, args.child)
    proc = psutil.Process()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.0002)

    th = threading.Thread(target=sample)
    th.start()
    fn()
    done.set()
    th.join()
    print(json.dumps({"peak_extra_mib": (peak[0] - base) / 2**20, "setup_rss_mib": base / 2**20}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 repeats instead of --repeats")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=2, default=[192, 176])
    p.add_argument("--classes", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--norm", choices=["instance", "none"], default="instance",
                   help="normalisation of the UNet: instance (what the synthetic benchmarks train) or "
                        "none (the paper's network as published)")
    p.add_argument("--child", choices=["plain", "l2s"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS / "speed_l2s.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    repeats = 2 if args.quick else args.repeats
    bench = Bench(args)
    times = {"plain": [], "l2s": []}
    bench.plain(), bench.l2s()  # warm-up
    for _ in range(repeats):
        for name in ("plain", "l2s"):
            t = time.perf_counter()
            getattr(bench, name)()
            times[name].append(time.perf_counter() - t)
    memory = {}
    base_cmd = [sys.executable, __file__, "--batch", str(args.batch), "--classes", str(args.classes),
                "--threads", str(args.threads), "--norm", args.norm, "--shape", *map(str, args.shape)]
    for name in ("plain", "l2s"):
        out = subprocess.run(base_cmd + ["--child", name], capture_output=True, text=True, check=True)
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "network": {"widths": PAPER_UNET["widths"], "params": sum(q.numel() for q in bench.net.parameters()),
                    "classes": args.classes, "norm": args.norm},
        "batch": [args.batch, 1, *args.shape], "repeats": repeats, "quick": bool(args.quick),
        "plain_step_s": med["plain"], "l2s_iteration_s": med["l2s"], "time_ratio": med["l2s"] / med["plain"],
        "times_s": times,
        "memory_method": "psutil RSS sampled every 0.2 ms during one step minus RSS just before it, each variant in a fresh process",
        "plain_peak_extra_mib": memory["plain"]["peak_extra_mib"],
        "l2s_peak_extra_mib": memory["l2s"]["peak_extra_mib"],
        "memory_ratio": memory["l2s"]["peak_extra_mib"] / max(memory["plain"]["peak_extra_mib"], 1e-9),
        "deviation_hyper_every_2_ratio": (med["l2s"] + med["plain"]) / 2 / med["plain"],
        "deviation_hyper_every_4_ratio": (med["l2s"] + 3 * med["plain"]) / 4 / med["plain"],
        "target_time_ratio": 2.5, "research_code_time_ratio": [3.3, 4.6],
        "device": "cpu", "environment": environment(),
    }
    print(json.dumps({k: result[k] for k in ("plain_step_s", "l2s_iteration_s", "time_ratio",
                                             "plain_peak_extra_mib", "l2s_peak_extra_mib", "memory_ratio")}, indent=1))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
