"""The issue's ``speed.json``: both speed benchmarks side by side in one run on this machine.

Runs :mod:`bench_generator_speed` (our generator against cornucopia 0.5.1: 3D 160^3 and a 2D batch
of 64 x 160^2, same steps enabled) and then :mod:`bench_l2s_step` (one Learn2Synth iteration against
one plain SynthSeg step, same network and batch, time and peak memory), one after the other in this
process, with the same thread count, and writes their headline figures together. The full results
of each part are kept under ``parts`` (and in their own files, as when run alone).

    .venv/bin/python benchmarks/speed.py [--threads 2] [--reps 1] [--repeats 10]
Writes ``benchmarks/results/speed.json``: {"generator_vs_cornucopia_3d",
"generator_vs_cornucopia_2d", "l2s_step_over_synthseg_step", "plain_step_peak_mib",
"l2s_step_peak_mib", "memory_ratio", ...}. Targets: >= 10 (3D generator), <= 2.5 (step).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generator_speed  # noqa: E402
import bench_l2s_step  # noqa: E402
from common import RESULTS, environment, write_json  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads of both parts")
    p.add_argument("--reps", type=int, default=1, help="cornucopia repetitions (ours: 3x this)")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats of each training step")
    p.add_argument("--quick", action="store_true", help="2 step repeats (the generator part is unchanged)")
    p.add_argument("--out", type=Path, default=RESULTS / "speed.json")
    args = p.parse_args(argv)
    t0 = time.time()
    gen_out, step_out = RESULTS / "speed_generator.json", RESULTS / "speed_l2s.json"
    bench_generator_speed.main(["--reps", str(args.reps), "--threads", str(args.threads), "--out", str(gen_out)])
    step_args = ["--threads", str(args.threads), "--repeats", str(args.repeats), "--out", str(step_out)]
    bench_l2s_step.main(step_args + (["--quick"] if args.quick else []))
    gen, step = json.loads(gen_out.read_text()), json.loads(step_out.read_text())
    result = {
        "generator_vs_cornucopia_3d": gen["generator_vs_cornucopia_3d"],
        "generator_vs_cornucopia_2d": gen["generator_vs_cornucopia_2d"],
        "l2s_step_over_synthseg_step": step["time_ratio"],
        "plain_step_s": step["plain_step_s"], "l2s_step_s": step["l2s_iteration_s"],
        "plain_step_peak_mib": step["plain_peak_extra_mib"], "l2s_step_peak_mib": step["l2s_peak_extra_mib"],
        "memory_ratio": step["memory_ratio"],
        "targets": {"generator_vs_cornucopia_3d": ">= 10", "l2s_step_over_synthseg_step": "<= 2.5"},
        "threads": args.threads, "wall_s": time.time() - t0, "environment": environment(),
        "parts": {"generator": gen, "step": step},
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
