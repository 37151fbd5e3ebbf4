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
figures, derivatives, subject report). The three are alternated ``--repeats`` times in one run,
after one untimed round (page cache, bytecode caches: the timed processes run with Python's
bytecode cache on, as in a normal install, even where ``PYTHONDONTWRITEBYTECODE`` is set);
medians, ``overhead = median(b) / median(a) - 1`` (against the bare call) and
``overhead_same_outputs = median(b) / median(c) - 1`` (the BIDS App and Pydra themselves). The
breakdown comes from (a)'s and (c)'s own stage timers and from (b)'s ``_dseg.json`` sidecar
(``RuntimeSeconds``, ``TimingsSeconds``) and its log timestamps.

Throughput (``results/app_throughput.json``): ``--n-images`` copies of the 2 mm IXI scans of
``bids_real`` (each with its own intensity scale and a little noise, seeded) as separate subjects,
processed by ``l2s-bids ... participant --nprocs 1`` and ``--nprocs 2`` in the same run (threads per
job: CPUs // nprocs); images per minute and the speed-up.

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
REPO = HERE.parent
DATA = Path(os.environ.get("L2S_DATA", REPO.parent / "shared" / "data"))
BERT = DATA / "bids_real" / "sub-bert" / "anat" / "sub-bert_rec-fsnorm_T1w.nii.gz"
IXI = sorted((DATA / "bids_real").glob("sub-ixi*/anat/sub-ixi*_T1w.nii.gz"))
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
sys.path.insert(0, str(HERE))
from bench_app_children import direct_child  # noqa: E402


# ----------------------------------------------------------------------------- datasets and model
def write_bids_root(root: Path, name: str) -> None:
    """A minimal valid raw BIDS dataset folder (dataset_description.json, README)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw"}, indent=2) + "\n")
    (root / "README").write_text(f"{name}: temporary benchmark dataset made by benchmarks/bench_app.py\n")


def one_subject_dataset(root: Path, image: Path) -> Path:
    """BIDS dataset holding ``image`` as ``sub-bench/anat/sub-bench_T1w.nii.gz`` (a copy)."""
    write_bids_root(root, "bench_app overhead")
    anat = root / "sub-bench" / "anat"
    anat.mkdir(parents=True)
    shutil.copyfile(image, anat / "sub-bench_T1w.nii.gz")
    return root


def varied_dataset(root: Path, sources: list[Path], n: int, seed: int = 0) -> Path:
    """BIDS dataset of ``n`` subjects ``sub-tNN``: scan ``sources[i % len]`` times a random
    intensity scale in [0.9, 1.1] plus Gaussian noise of 1% of its 99th percentile (seeded)."""
    import nibabel as nib
    import numpy as np

    if not sources:
        raise SystemExit(f"no IXI scans found under {DATA / 'bids_real'}")
    write_bids_root(root, "bench_app throughput")
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = nib.load(sources[i % len(sources)])
        data = np.asarray(img.dataobj, dtype=np.float32)
        scale = rng.uniform(0.9, 1.1)
        sigma = 0.01 * float(np.percentile(data, 99))
        data = np.clip(data * scale + rng.normal(0, sigma, data.shape).astype(np.float32), 0, None)
        hdr = img.header.copy()
        hdr.set_data_dtype(np.float32)
        anat = root / f"sub-t{i:02d}" / "anat"
        anat.mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, img.affine, hdr), anat / f"sub-t{i:02d}_T1w.nii.gz")
    return root


def standin_package(directory: Path) -> Path:
    """UNTRAINED package with the default model's shape: 2D UNet (16-24-32-48-64, 33 labels),
    2.5D over axial + coronal, 2 mm voxels. For timings only."""
    import torch

    from l2s_pipelines.io.checkpoint import save_model_package
    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.nn.unet import UNet, UNetConfig

    table = LabelTable.default()
    cfg = UNetConfig(ndim=2, out_channels=len(table))
    torch.manual_seed(0)
    manifest = {"name": "bench-standin-untrained-2p5d", "description": "random weights, timing stand-in",
                "architecture": cfg.to_dict(), "labels": table.to_dict()["labels"],
                "preprocessing": {"orientation": "RAS", "voxel_size_mm": [2.0, 2.0, 2.0],
                                  "intensity": "percentile", "percentiles": [1, 99]},
                "inference": {"mode": "2.5d", "planes": ["axial", "coronal"]},
                "training": {"method": "none (untrained timing stand-in)", "steps": 0, "seed": 0}}
    return save_model_package(directory, UNet(cfg), manifest)


def resolve_model(args, tmp: Path) -> tuple[Path, bool]:
    """(model package folder, is_timing_standin); a clear exit message when none is found."""
    if args.model is not None:
        if not (args.model / "manifest.json").is_file():
            raise SystemExit(f"{args.model}: not a model package (manifest.json missing)")
        return args.model.resolve(), False
    if args.standin:
        return standin_package(tmp / "standin_model"), True
    from l2s_pipelines.errors import ModelError
    from l2s_pipelines.io.checkpoint import default_model_dir

    try:
        return default_model_dir(), False
    except ModelError as exc:
        raise SystemExit(f"bench_app: {exc}\nPass --model PKG (e.g. /work/runs/l2s-parametric/step_00500) "
                         "or --standin (untrained timing stand-in).") from None


def model_record(path: Path, standin: bool) -> dict:
    from l2s_pipelines.io.checkpoint import read_manifest

    m = read_manifest(path)
    return {"path": str(path), "name": m.get("name"), "sha256": m.get("weights", {}).get("sha256"),
            "timing_standin": standin, "trained": not standin,
            "training_method": m.get("training", {}).get("method"), "training_steps": m.get("training", {}).get("steps"),
            "architecture": m.get("architecture"), "inference": m.get("inference"),
            "voxel_size_mm": m.get("preprocessing", {}).get("voxel_size_mm")}


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
    marks = {"image(s) selected": "selected_s", "done:": "done_s"}
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
def bench_overhead(args, model: Path, tmp: Path) -> dict:
    bids = one_subject_dataset(tmp / "bids_one", args.input)
    env = child_env(args.threads)
    direct, same, app = [], [], []
    # repeat -1 is untimed: it warms the page cache and writes the bytecode caches of both paths
    for r in range(-1, args.repeats):
        cmds = {}
        for kind, runs in (("bare", direct), ("same_outputs", same)):
            out_a = tmp / f"direct_{kind}_{r}"
            cmds[kind] = [sys.executable, str(Path(__file__).resolve()), "_direct", str(model),
                          str(bids / "sub-bench/anat/sub-bench_T1w.nii.gz"), str(out_a), str(args.threads),
                          args.device, kind]
            wall, _, text = timed(cmds[kind], env, tmp / f"direct_{kind}_{r}.log")
            if r >= 0:
                runs.append({"wall_s": round(wall, 3), **json.loads(text.strip().splitlines()[-1])})
            shutil.rmtree(out_a)
        out_b, work_b = tmp / f"app_out_{r}", tmp / f"app_work_{r}"
        cmd_b = app_command(bids, out_b, work_b, model, 1, args.threads, args.device)
        wall, start, text = timed(cmd_b, env, tmp / f"app_{r}.log")
        if r < 0:
            for folder in (out_b, work_b):
                shutil.rmtree(folder)
            continue
        status = [row["status"] for row in read_summary(out_b)]
        if status != ["ok"]:
            raise SystemExit(f"l2s-bids run {r}: statuses {status}; log in {tmp / f'app_{r}.log'}")
        app.append({**app_breakdown(out_b, wall, text, start), "task_timeline": task_timeline(work_b, start)})
        print(f"repeat {r}: direct {direct[-1]['wall_s']:.1f} s, direct with QC and figures "
              f"{same[-1]['wall_s']:.1f} s, l2s-bids {app[-1]['wall_s']:.1f} s", flush=True)
        for folder in (out_b, work_b):
            shutil.rmtree(folder)
    ma, mc, mb = (median([d["wall_s"] for d in runs]) for runs in (direct, same, app))
    # the segmenter's own time varies with machine load; the work outside it is steadier
    outside_a, outside_c = (median([d["wall_s"] - d["segmenter_timings_s"]["total"] for d in runs])
                            for runs in (direct, same))
    outside_b = median([a["wall_s"] - a["segmenter_timings_s"]["total"] for a in app
                        if a["segmenter_timings_s"]])
    rel = lambda b, a, base: None if b is None else round((b - a) / base, 4)  # noqa: E731
    return {"direct": {"command": " ".join(cmds["bare"]), "runs": direct, "median_wall_s": ma,
                       "median_outside_segmenter_s": outside_a},
            "direct_same_outputs": {"command": " ".join(cmds["same_outputs"]), "runs": same, "median_wall_s": mc,
                                    "median_outside_segmenter_s": outside_c},
            "app": {"command": " ".join(cmd_b), "runs": app, "median_wall_s": mb,
                    "median_outside_segmenter_s": outside_b},
            "overhead": round(mb / ma - 1, 4), "overhead_target": "at most 0.05 (issue 11)",
            "overhead_same_outputs": round(mb / mc - 1, 4),
            "overhead_outside_segmenter": rel(outside_b, outside_a, ma),
            "overhead_same_outputs_outside_segmenter": rel(outside_b, outside_c, mc),
            "overhead_definitions": {
                "overhead": "median wall (b) / median wall (a) - 1, whole processes",
                "overhead_same_outputs": "median wall (b) / median wall (c) - 1: the BIDS App and Pydra "
                                         "themselves, the QC and figures being made by both",
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
        wall, _, _ = timed(cmd, child_env(threads), tmp / f"throughput_{nprocs}.log")
        rows = read_summary(out)
        ok = sum(r["status"] == "ok" for r in rows)
        runtimes = [float(r["runtime_s"]) for r in rows if r["runtime_s"] not in ("", "n/a")]
        results[str(nprocs)] = {
            "command": " ".join(cmd), "nprocs": nprocs, "threads_per_job": threads, "wall_s": round(wall, 3),
            "images_ok": ok, "images": len(rows), "images_per_min": round(60 * ok / wall, 3),
            "median_image_runtime_s": median(runtimes), "median_per_image_sidecar": sidecar_medians(out),
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
    ap.add_argument("--repeats", type=int, default=3, help="alternated (a)/(c)/(b) triples")
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
