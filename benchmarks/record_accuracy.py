"""Model selection and the model card of the training campaign (issue 9, parts C and D).

Two uses, both with the same scoring code as ``real_accuracy.py`` (whole real volumes through
:class:`l2s_pipelines.inference.Segmenter`, mean Dice over the 32 structures):

``--select RUNS_DIR``: score every stage package ``RUNS_DIR/step_*`` (not yet scored) on the
**validation** subjects only (the tune subjects ixi012 ixi013 ixi014 bert; the scored subjects
are never read) and append to ``benchmarks/results/campaign_validation.json``; prints the
stage with the best validation Dice. This is how the bundled model is chosen.

``--record MODEL_DIR``: score one package on the validation subjects and on the held-out
subjects (ixi015 ixi033 ixi034 ixi039 vxm01) and write the ``validation`` block into its
manifest (see :mod:`l2s_pipelines.model_card`); the weights and their sha256 are untouched.

    .venv/bin/python benchmarks/record_accuracy.py --select /work/runs/campaign
    .venv/bin/python benchmarks/record_accuracy.py --record l2s_pipelines/models/default
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json  # noqa: E402
from l2s_pipelines.system import atomic_write_text  # noqa: E402
from real_accuracy import DEFAULT_BIDS, DEFAULT_SCORED, DEFAULT_TUNED, evaluate_model, find_subjects  # noqa: E402

METRIC = ("mean Dice over the 32 structures (background excluded, reference 255 ignored; a structure "
          "absent from both skipped), then the mean over subjects")


def _threads(n: int | None) -> None:
    import torch
    torch.set_num_threads(n or 1)


def _training_time_s(package: Path) -> float | None:
    """Cumulative training seconds at the package's last logged step (its ``metrics.jsonl``)."""
    curves = package / "metrics.jsonl"
    if not curves.is_file():
        return None
    last = [line for line in curves.read_text().splitlines() if line.strip()][-1:]
    return round(float(json.loads(last[0]).get("time", 0.0)), 1) if last else None


def select(runs: Path, out: Path, device: str) -> dict:
    """Score unscored stage packages on the validation subjects; returns the whole record."""
    record = json.loads(out.read_text()) if out.is_file() else {"metric": METRIC, "subjects": list(DEFAULT_TUNED),
                                                                 "stages": {}}
    subjects = find_subjects(DEFAULT_BIDS, DEFAULT_TUNED)
    for pkg in sorted(p.parent for p in runs.glob("step_*/manifest.json")):
        key = f"{runs.name}/{pkg.name}"
        if key in record["stages"]:
            continue
        res = evaluate_model(pkg, subjects, device)
        manifest = json.loads((pkg / "manifest.json").read_text())
        record["stages"][key] = {"step": manifest["training"]["steps"], "sha256": res["sha256"],
                                 "mean_dice": res["summary"]["all"]["mean_dice"],
                                 "per_subject": {s: r["mean_dice"] for s, r in res["subjects"].items()},
                                 "tissue_dice": res["summary"]["all"]["tissue_dice"],
                                 "runtime_s": {s: r["runtime_s"] for s, r in res["subjects"].items()},
                                 "training_time_s": _training_time_s(pkg)}
        write_json(out, record)
        print(f"{key}: validation mean Dice {record['stages'][key]['mean_dice']:.3f}", flush=True)
    if record["stages"]:
        best = max(record["stages"], key=lambda k: record["stages"][k]["mean_dice"])
        print(f"best: {best} ({record['stages'][best]['mean_dice']:.3f})")
    return record


def record_card(package: Path, device: str) -> dict:
    """Write the ``validation`` block into ``package``'s manifest (atomically); returns it."""
    val = evaluate_model(package, find_subjects(DEFAULT_BIDS, DEFAULT_TUNED), device)
    scored = evaluate_model(package, find_subjects(DEFAULT_BIDS, DEFAULT_SCORED), device)

    def part(res):
        return {"subjects": list(res["subjects"]), "mean_dice": res["summary"]["all"]["mean_dice"],
                "per_subject": {s: r["mean_dice"] for s, r in res["subjects"].items()},
                "tissue_dice": res["summary"]["all"]["tissue_dice"],
                "by_reference": {g: res["summary"][g]["mean_dice"] for g in ("DLMUSE", "FreeSurfer")
                                 if g in res["summary"]}}

    block = {"metric": METRIC, "validation": part(val), "scored": part(scored),
             "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "command": "python benchmarks/record_accuracy.py --record " + shlex.quote(str(package))}
    path = package / "manifest.json"
    manifest = json.loads(path.read_text())
    if manifest["weights"]["sha256"] != scored["sha256"]:
        raise SystemExit(f"{path}: weights changed while scoring")
    manifest["validation"] = block
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    print(f"{path}: validation {block['validation']['mean_dice']:.3f}, held-out {block['scored']['mean_dice']:.3f}")
    return block


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--select", type=Path, metavar="RUNS_DIR")
    what.add_argument("--record", type=Path, metavar="MODEL_DIR")
    ap.add_argument("--out", type=Path, default=RESULTS / "campaign_validation.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    _threads(args.threads)
    if args.select:
        select(args.select, args.out, args.device)
    else:
        record_card(args.record, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
