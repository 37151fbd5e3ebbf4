"""Does connected-component clean-up of the posteriors raise real-scan Dice? (issue 9, part B)

Scores one model package on the **validation** subjects only (ixi012 ixi013 ixi014 bert; the
scored subjects are never read) under each clean-up setting of ``inference.cleanup``
(:mod:`l2s_pipelines.inference.cleanup`): none, ``structures`` (largest component of each
structure's posterior mask), ``brain`` (largest component of the non-background labels) and both.
Each setting runs on a copy of the package whose manifest differs only in that field (weights
copied), with the same scoring code as ``real_accuracy.py``. The setting is chosen on
these subjects; ``install_default_model.sh`` then writes it into the bundled manifest.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cleanup_validation.py l2s_pipelines/models/default --threads 2

Writes ``benchmarks/results/cleanup_validation.json``: per setting the mean Dice, per-subject and
per-tissue Dice, and the segmentation time per image (clean-up included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json  # noqa: E402
from real_accuracy import DEFAULT_BIDS, DEFAULT_TUNED, evaluate_model, find_subjects  # noqa: E402

SETTINGS = {"none": [], "structures": ["structures"], "brain": ["brain"], "both": ["structures", "brain"]}


def variant(package: Path, steps: list[str], where: Path) -> Path:
    """A copy of ``package`` whose manifest sets ``inference.cleanup`` to ``steps`` (weights copied:
    a package refuses weights that lead outside its folder)."""
    where.mkdir(parents=True)
    for f in package.iterdir():
        if f.is_file() and f.name != "manifest.json":
            shutil.copy2(f, where / f.name)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["inference"] = {**manifest.get("inference", {}), "cleanup": steps}
    (where / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return where


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", type=Path)
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "cleanup_validation.json")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    subjects = find_subjects(DEFAULT_BIDS, DEFAULT_TUNED)
    record = {"package": str(args.package), "subjects": list(DEFAULT_TUNED), "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            pkg = variant(args.package.resolve(), SETTINGS[name], Path(tmp) / name)
            res = evaluate_model(pkg, subjects, args.device)
            record["sha256"] = res["sha256"]
            record["settings"][name] = {
                "cleanup": SETTINGS[name], "mean_dice": res["summary"]["all"]["mean_dice"],
                "per_subject": {s: r["mean_dice"] for s, r in res["subjects"].items()},
                "tissue_dice": res["summary"]["all"]["tissue_dice"],
                "runtime_s": {s: r["runtime_s"] for s, r in res["subjects"].items()}}
            write_json(args.out, record)
            print(f"{name}: validation mean Dice {record['settings'][name]['mean_dice']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
