"""BIDS App overhead and throughput benchmarks of ``l2s-bids participant`` (run by hand).

Usage::

    .venv/bin/python benchmarks/bench_app.py [--model PKG | --standin] [--repeats 3] [--n-images 20]
        [--threads N] [--device cpu] [--skip-overhead] [--skip-throughput]

Overhead (``results/app_overhead.json``): on one 1 mm 256^3 T1w (FreeSurfer's ``bert``), wall time
of (a) a fresh Python process that imports the library, loads the model package, runs
``Segmenter.segment`` and writes ``dseg.nii.gz`` + ``volumes.tsv``; (c) the same plus the QC
flags and the report figures, made by the library functions the app's tasks call
(``bench_app_children.py``); (b) a fresh ``l2s-bids BIDS OUT participant`` process on a
one-subject BIDS dataset holding that image (pybids indexing, Pydra ``cf`` worker, checks, QC,
figures, derivatives, subject report). The three are run in ``--repeats`` rounds in one run, each
round in a rotated order (a, c, b / c, b, a / b, a, c ...: a drift within a round is not always
counted against the same path), after one untimed round (page cache, bytecode caches: the timed processes run with Python's
bytecode cache on, as in a normal install, even where ``PYTHONDONTWRITEBYTECODE`` is set);
medians, ``overhead = median(b) / median(a) - 1`` (against the bare call) and
``overhead_same_outputs = median(b) / median(c) - 1`` (the BIDS App and Pydra themselves), and
the same as medians of the per-round ratios (``overhead_paired``, ``overhead_same_outputs_paired``). The
breakdown comes from (a)'s and (c)'s own stage timers and from (b)'s ``_dseg.json`` sidecar
(``RuntimeSeconds``, ``TimingsSeconds``) and its log timestamps.

Throughput (``results/app_throughput.json``): ``--n-images`` copies of the 2 mm IXI scans of
``bids_real`` (each with its own intensity scale and a little noise, seeded) as separate subjects,
processed by ``l2s-bids ... participant --nprocs 1`` and ``--nprocs 2`` in the same run (threads per
job: CPUs // nprocs); images per minute, the speed-up, and the seconds from launch to the first
image published (``first_result_s``: images are published as they finish).

Model: ``--model PKG``; default the bundled ``l2s_pipelines/models/default``; ``--standin`` builds
an UNTRAINED package with the default 2.5D 2 mm architecture (timings only, recorded as such).
Every dataset, output and work folder lives in a temporary folder, never in the repository.
No thresholds: the figures are recorded, judged by a person.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_app_children import direct_child  # noqa: E402
from bench_app_inputs import (DATA, model_record, one_subject_dataset, resolve_model,  # noqa: E402
                              varied_dataset)

BERT = DATA / "bids_real" / "sub-bert" / "anat" / "sub-bert_rec-fsnorm_T1w.nii.gz"
IXI = sorted((DATA / "bids_real").glob("sub-ixi*/anat/sub-ixi*_T1w.nii.gz"))
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"


# ----------------------------------------------------------------------------- running
def child_env(threads: int) -> dict:
    """The timed processes' environment: ``threads`` per BLAS/OpenMP pool, no telemetry, and
    Python's bytecode cache on (``PYTHONDONTWRITEBYTECODE`` removed), as in a normal install,
    so that neither path recompiles the project's modules at every start."""
    env = dict(os.environ)
    env.update({v: str(threads) for v in THREAD_VARS})
    env["NO_ET"] = env["NIPYPE_NO_ET"] = "1"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(cmd: list[str], env: dict, log: Path) -> tuple[float, float, str]:
    """Run ``cmd``; returns (wall seconds, epoch start, stdout). Raises with the log on failure."""
    start = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        raise SystemExit(f"command failed (exit {proc.returncode}), log in {log}:\n{proc.stderr[-3000:]}")
    return wall, start, proc.stdout + proc.stderr


def app_command(bids: Path, out: Path, work: Path, model: Path, nprocs: int, threads: int, device: str) -> list[str]:
    """``nprocs`` images at once with ``threads`` each (l2s-bids' --nprocs counts all threads)."""
    return [str(Path(sys.executable).with_name("l2s-bids")), str(bids), str(out), "participant",
            "--model", str(model), "-w", str(work), "--nprocs", str(nprocs * threads), "--omp-nthreads", str(threads),
            "--parallel-images", str(nprocs), "--device", device, "-v"]


def log_offsets(text: str, start_epoch: float) -> dict:
    """Seconds from process launch to key ``l2s.run`` log lines (``asctime`` of the CLI log)."""
    marks = {"image(s) selected": "selected_s", "] sub-": "first_result_s", "done:": "done_s"}
    found = {}
    for line in text.splitlines():
        for key, name in marks.items():
            if key in line and name not in found:
                try:
                    stamp = datetime.strptime(line[:23], LOG_TIME_FORMAT).timestamp()
                except ValueError:
                    continue
                found[name] = round(stamp - start_epoch, 3)
    return found


def read_summary(out: Path) -> list[dict]:
    with open(out / "logs" / "run_summary.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def app_breakdown(out: Path, wall: float, text: str, start: float) -> dict:
    """Where (b)'s time went, from its derivatives' sidecar and log timestamps."""
    sidecars = sorted(out.glob("sub-*/**/*_dseg.json"))
    meta = json.loads(sidecars[0].read_text()) if sidecars else {}
    b = {"wall_s": round(wall, 3), **log_offsets(text, start),
         "segment_task_s": meta.get("RuntimeSeconds"), "segmenter_timings_s": meta.get("TimingsSeconds"),
         "peak_memory_mb": meta.get("PeakMemoryMB")}
    if "selected_s" in b and "done_s" in b and b["segment_task_s"] is not None:
        b["startup_model_check_pybids_s"] = b["selected_s"]
        b["pydra_checks_publish_reports_s"] = round(b["done_s"] - b["selected_s"] - b["segment_task_s"], 3)
        b["exit_s"] = round(wall - b["done_s"], 3)
    if b["segment_task_s"] is not None and meta.get("TimingsSeconds", {}).get("total") is not None:
        b["task_outside_segmenter_s"] = round(b["segment_task_s"] - meta["TimingsSeconds"]["total"], 3)
    return b


def task_timeline(work: Path, start_epoch: float) -> list[dict]:
    """Pydra jobs of an ``l2s-bids`` run in the order they ended: task name and end time (seconds
    after the process started; ``_result.pklz`` mtime). With one worker process the jobs run one
    after another, so the gaps between end times are each job's cost including its dispatch."""
    import cloudpickle

    jobs = []
    for folder in work.glob("python-*"):
        if (folder / "_job.pklz").is_file() and (folder / "_result.pklz").is_file():
            with open(folder / "_job.pklz", "rb") as fh:
                name = type(cloudpickle.load(fh).task).__name__
            jobs.append({"task": name, "end_s": round((folder / "_result.pklz").stat().st_mtime - start_epoch, 3)})
    return sorted(jobs, key=lambda j: j["end_s"])


def sidecar_medians(out: Path) -> dict:
    """Median over the images of ``out`` of the task runtime and each segmenter stage (s)."""
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("sub-*/**/*_dseg.json"))]
    stages = sorted({k for m in metas for k in m.get("TimingsSeconds", {})})
    return {"segment_task_s": median([m["RuntimeSeconds"] for m in metas if m.get("RuntimeSeconds")]),
            **{f"segmenter_{k}_s": median([m["TimingsSeconds"][k] for m in metas if k in m["TimingsSeconds"]])
               for k in stages}}


def median(xs):
    return round(statistics.median(xs), 3) if xs else None


# ----------------------------------------------------------------------------- benchmarks
def run_direct(args, model: Path, bids: Path, tmp: Path, env: dict, kind: str, r: int) -> tuple[dict, list[str]]:
    """One fresh ``_direct`` process, ``kind`` 'bare' (a) or 'same_outputs' (c): its wall time
    and its own stage timers, and the command."""
    out = tmp / f"direct_{kind}_{r}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "_direct", str(model),
           str(bids / "sub-bench/anat/sub-bench_T1w.nii.gz"), str(out), str(args.threads), args.device, kind]
    wall, _, text = timed(cmd, env, tmp / f"direct_{kind}_{r}.log")
    shutil.rmtree(out)
    return {"wall_s": round(wall, 3), **json.loads(text.strip().splitlines()[-1])}, cmd


def run_app(args, model: Path, bids: Path, tmp: Path, env: dict, r: int) -> tuple[dict, list[str]]:
    """One fresh ``l2s-bids participant`` process (b): wall time, breakdown, task timeline."""
    out, work = tmp / f"app_out_{r}", tmp / f"app_work_{r}"
    cmd = app_command(bids, out, work, model, 1, args.threads, args.device)
    wall, start, text = timed(cmd, env, tmp / f"app_{r}.log")
    status = [row["status"] for row in read_summary(out)]
    if status != ["ok"]:
        raise SystemExit(f"l2s-bids run {r}: statuses {status}; log in {tmp / f'app_{r}.log'}")
    run = {**app_breakdown(out, wall, text, start), "task_timeline": task_timeline(work, start)}
    for folder in (out, work):
        shutil.rmtree(folder)
    return run, cmd


PATHS = ("bare", "same_outputs", "app")


def round_order(r: int) -> tuple[str, ...]:
    """The three paths in the order of round ``r``: ``PATHS`` rotated by ``r``."""
    return PATHS[r % 3:] + PATHS[:r % 3]


def bench_overhead(args, model: Path, tmp: Path) -> dict:
    """Rounds of the three paths; round ``r`` runs them in ``PATHS`` rotated by ``r``, so that a
    drift within a round (the host warming up, another process) is not always counted against
    the same path. Round -1 is untimed: page cache and the bytecode caches of all paths."""
    bids = one_subject_dataset(tmp / "bids_one", args.input)
    env = child_env(args.threads)
    runs: dict[str, list] = {p: [] for p in PATHS}
    cmds: dict[str, list[str]] = {}
    for r in range(-1, args.repeats):
        order = round_order(r)
        for path in order:
            run, cmds[path] = (run_app(args, model, bids, tmp, env, r) if path == "app"
                               else run_direct(args, model, bids, tmp, env, path, r))
            if r >= 0:
                runs[path].append({"round": r, "position_in_round": order.index(path), **run})
        if r >= 0:
            print(f"round {r} ({' -> '.join(order)}): direct {runs['bare'][-1]['wall_s']:.1f} s, direct with QC "
                  f"and figures {runs['same_outputs'][-1]['wall_s']:.1f} s, l2s-bids {runs['app'][-1]['wall_s']:.1f} s",
                  flush=True)
    direct, same, app = (runs[p] for p in PATHS)
    ma, mc, mb = (median([d["wall_s"] for d in rs]) for rs in (direct, same, app))
    # the segmenter's own time varies with machine load; the work outside it is steadier
    outside_a, outside_c, outside_b = (median([d["wall_s"] - d["segmenter_timings_s"]["total"] for d in rs
                                               if d.get("segmenter_timings_s")]) for rs in (direct, same, app))
    rel = lambda b, a, base: None if b is None else round((b - a) / base, 4)  # noqa: E731
    paired = lambda base: round(statistics.median(  # noqa: E731
        b["wall_s"] / a["wall_s"] - 1 for a, b in zip(base, app)), 4)
    return {"direct": {"command": " ".join(cmds["bare"]), "runs": direct, "median_wall_s": ma,
                       "median_outside_segmenter_s": outside_a},
            "direct_same_outputs": {"command": " ".join(cmds["same_outputs"]), "runs": same, "median_wall_s": mc,
                                    "median_outside_segmenter_s": outside_c},
            "app": {"command": " ".join(cmds["app"]), "runs": app, "median_wall_s": mb,
                    "median_outside_segmenter_s": outside_b},
            "round_orders": [list(round_order(r)) for r in range(args.repeats)],
            "overhead": round(mb / ma - 1, 4), "overhead_target": "at most 0.05 (issue 11)",
            "overhead_same_outputs": round(mb / mc - 1, 4),
            "overhead_paired": paired(direct), "overhead_same_outputs_paired": paired(same),
            "overhead_outside_segmenter": rel(outside_b, outside_a, ma),
            "overhead_same_outputs_outside_segmenter": rel(outside_b, outside_c, mc),
            "overhead_definitions": {
                "overhead": "median wall (b) / median wall (a) - 1, whole processes",
                "overhead_same_outputs": "median wall (b) / median wall (c) - 1: the BIDS App and Pydra "
                                         "themselves, the QC and figures being made by both",
                "overhead_paired": "median over rounds of (b_r / a_r - 1), each round's paths run back to "
                                   "back in a rotated order",
                "overhead_same_outputs_paired": "median over rounds of (b_r / c_r - 1)",
                "overhead_outside_segmenter": "(median of (b) wall minus its Segmenter.segment total, minus the "
                                              "same for (a)) / median wall (a): less sensitive to load noise "
                                              "in the segmenter itself",
                "overhead_same_outputs_outside_segmenter": "the same with (c) in place of (a)"}}


def bench_throughput(args, model: Path, tmp: Path) -> dict:
    bids = varied_dataset(tmp / "bids_many", IXI, args.n_images)
    results = {}
    for nprocs in args.nprocs:
        threads = max(1, args.cpus // nprocs)
        out, work = tmp / f"tp_out_{nprocs}", tmp / f"tp_work_{nprocs}"
        cmd = app_command(bids, out, work, model, nprocs, threads, args.device)
        load_before = list(os.getloadavg())
        wall, start, text = timed(cmd, child_env(threads), tmp / f"throughput_{nprocs}.log")
        rows = read_summary(out)
        ok = sum(r["status"] == "ok" for r in rows)
        runtimes = [float(r["runtime_s"]) for r in rows if r["runtime_s"] not in ("", "n/a")]
        results[str(nprocs)] = {
            "command": " ".join(cmd), "nprocs": nprocs, "threads_per_job": threads, "wall_s": round(wall, 3),
            "images_ok": ok, "images": len(rows), "images_per_min": round(60 * ok / wall, 3),
            "median_image_runtime_s": median(runtimes), "median_per_image_sidecar": sidecar_medians(out),
            # launch to the first image published ("[1/N] sub-..." log line), and to the end
            **log_offsets(text, start),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg())}
        print(f"nprocs {nprocs}: {ok}/{len(rows)} images in {wall:.1f} s "
              f"({results[str(nprocs)]['images_per_min']:.2f} /min)", flush=True)
        for folder in (out, work):
            shutil.rmtree(folder)
    doc = {"input": {"sources": [str(p) for p in IXI], "n_images": args.n_images,
                     "variation": "intensity x U(0.9, 1.1) + N(0, 1% of p99) noise, seed 0"}, "runs": results}
    first, last = str(args.nprocs[0]), str(args.nprocs[-1])
    if first != last:  # images per minute with the last worker count over the first
        doc[f"speedup_{last}_vs_{first}"] = round(results[last]["images_per_min"] / results[first]["images_per_min"], 3)
    return doc


def machine_info(args) -> dict:
    import psutil
    from importlib.metadata import version

    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count_logical": psutil.cpu_count(), "cpu_count_physical": psutil.cpu_count(logical=False),
            "cpus_available": args.cpus, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "torch": version("torch"), "pydra": version("pydra"), "pybids": version("pybids"),
            "torch_threads_per_job": args.threads, "device": args.device}


def write_result(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_direct"]:  # child process of the overhead benchmark
        model, image, out, threads, device, kind = argv[1:7]
        print(json.dumps(direct_child(model, image, out, int(threads), device, same_outputs=kind == "same_outputs")))
        return 0
    from l2s_pipelines.bids_app.options import available_cpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model package (default: the bundled one)")
    ap.add_argument("--standin", action="store_true", help="untrained 2.5D 2 mm package (timings only)")
    ap.add_argument("--input", type=Path, default=BERT, help="1 mm 256^3 T1w for the overhead part")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (a), (c), (b) in rotated orders")
    ap.add_argument("--n-images", type=int, default=20, help="images of the throughput part")
    ap.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    ap.add_argument("--cpus", type=int, default=available_cpus(), help="CPUs shared by the jobs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads, overhead part (default: --cpus)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    args.threads = args.threads or args.cpus
    if args.model is not None and args.standin:
        ap.error("--model and --standin exclude each other")
    reduced = args.repeats < 3 or args.n_images < 20
    tmp = Path(tempfile.mkdtemp(prefix="l2s-bench-app-"))
    try:
        model, standin = resolve_model(args, tmp)
        common = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join([Path(sys.executable).name, "benchmarks/bench_app.py", *argv]),
                  "reduced": reduced, "machine": machine_info(args), "model": model_record(model, standin)}
        if standin:
            common["note"] = "UNTRAINED timing stand-in model: timings only, segmentations meaningless"
        if not args.skip_overhead:
            load0 = list(os.getloadavg())
            res = bench_overhead(args, model, tmp)
            write_result(args.out_dir / "app_overhead.json", {
                "benchmark": "app_overhead", **common, "repeats": args.repeats,
                "input": {"path": str(args.input)}, "load_average_before": load0,
                "load_average_after": list(os.getloadavg()), **res})
        if not args.skip_throughput:
            res = bench_throughput(args, model, tmp)
            write_result(args.out_dir / "app_throughput.json", {"benchmark": "app_throughput", **common, **res})
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
