"""Accuracy of model packages on the real BIDS test set (``../shared/data/bids_real``).

Usage (from the repository root)::

    python benchmarks/real_accuracy.py MODEL_DIR [MODEL_DIR ...] [--robustness MODEL_DIR]
    python benchmarks/real_accuracy.py --curve CKPT_DIR [CKPT_DIR ...]   # Dice against training time

Scores each model on the scored subjects (default ixi015 ixi033 ixi034 ixi039 vxm01; never
the tune subjects ixi012 ixi013 ixi014 bert unless ``--allow-tuned``) with
:class:`l2s_pipelines.inference.Segmenter` and :mod:`l2s_pipelines.metrics`:

- per-structure Dice of the 32 non-background labels, reference value 255 ignored;
- mean Dice = per subject, the mean over the 32 structures (a structure absent from both
  prediction and reference is skipped), then the mean over subjects;
- tissue Dice (CSF, cortex, white matter, deep grey), labels merged by the label table's tissue;
- FreeSurfer-referenced and DLMUSE-referenced subjects summarised separately (the protocol is
  read from the dataset's ``participants.tsv`` column ``reference``).

Robustness (one model): label-preserving degradations generated here, seeded:
``thick_1x1x5mm`` (Gaussian slice profile of FWHM 5 mm along the superior axis, then resampled to
1 x 1 x 5 mm), ``iso_3mm`` (FWHM 3 mm blur, resampled to 3 mm), ``bias_noise`` (multiplicative
bias field exp(N(0, 0.4^2)) smooth on a 4^3 grid, Gaussian noise of sd 8% of the 99th percentile).
Resampled scans are scored against the reference resampled to the degraded grid with nearest
neighbour (the prediction stays on the grid the model was given).

Writes ``benchmarks/results/real_accuracy.json`` and ``.md`` (``real_accuracy_curve.*`` with
``--curve``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BIDS = ROOT.parent / "shared" / "data" / "bids_real"
DEFAULT_SCORED = ("ixi015", "ixi033", "ixi034", "ixi039", "vxm01")
DEFAULT_TUNED = ("ixi012", "ixi013", "ixi014", "bert")
TISSUES = ("csf", "cortex", "white_matter", "deep_grey")
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def find_subjects(bids_dir: Path, labels) -> list[dict]:
    """``[{"subject", "image", "reference", "protocol"}]`` for ``labels`` (pybids, validate=True).

    ``protocol`` is "FreeSurfer" or "DLMUSE", from ``participants.tsv``'s ``reference`` column.
    """
    from l2s_pipelines.bids_app.train_cli import collect_real_pairs

    pairs = collect_real_pairs(bids_dir, None, list(labels))
    with open(bids_dir / "participants.tsv", newline="") as fh:
        ref = {r["participant_id"]: r.get("reference", "") for r in csv.DictReader(fh, delimiter="\t")}
    for p in pairs:
        text = ref.get(p["subject"], "")
        p["protocol"] = "FreeSurfer" if "FreeSurfer" in text else "DLMUSE" if "DLMUSE" in text else "other"
    return pairs


# ------------------------------------------------------------------ degradations
def _blur_resample(img, ref, fwhm_mm, voxel_mm):
    """Blur a RAS image so its resolution is ``fwhm_mm`` per axis, resample both to ``voxel_mm``."""
    from l2s_pipelines.io.preprocess import reorient_to_ras, resample_to_voxel_size, voxel_sizes

    img, ref = reorient_to_ras(img), reorient_to_ras(ref)
    data = np.asarray(img.dataobj, dtype=np.float32)
    vox = voxel_sizes(img.affine)
    extra = np.sqrt(np.maximum(np.asarray(fwhm_mm, float) ** 2 - vox ** 2, 0.0))
    data = ndimage.gaussian_filter(data, sigma=extra * FWHM_TO_SIGMA / vox, mode="nearest")
    d_img, a_img = resample_to_voxel_size(data, img.affine, voxel_mm, order=1)
    d_ref, _ = resample_to_voxel_size(np.asarray(ref.dataobj).astype(np.int16), ref.affine, voxel_mm, order=0)
    return nib.Nifti1Image(d_img, a_img), nib.Nifti1Image(d_ref, a_img)


def _bias_noise(img, ref, seed):
    rng = np.random.default_rng(seed)
    data = np.asarray(img.dataobj, dtype=np.float32)
    coarse = rng.normal(0.0, 0.4, size=(4, 4, 4))
    zoom = [s / 4 for s in data.shape]
    bias = np.exp(ndimage.zoom(coarse, zoom, order=3, mode="nearest")[tuple(slice(0, s) for s in data.shape)])
    sd = 0.08 * float(np.percentile(data, 99))
    noisy = data * bias.astype(np.float32) + rng.normal(0.0, sd, size=data.shape).astype(np.float32)
    return nib.Nifti1Image(np.clip(noisy, 0, None), img.affine), ref


DEGRADATIONS = {
    "thick_1x1x5mm": lambda img, ref, seed: _blur_resample(img, ref, (0, 0, 5.0), (1.0, 1.0, 5.0)),
    "iso_3mm": lambda img, ref, seed: _blur_resample(img, ref, (3.0, 3.0, 3.0), (3.0, 3.0, 3.0)),
    "bias_noise": _bias_noise,
}


# ------------------------------------------------------------------ scoring
def score_image(segmenter, img, ref_img) -> dict:
    """Segment ``img`` and score against ``ref_img`` (same grid). Returns dice per structure
    name, mean Dice over the 32 structures, tissue Dice, runtime (s)."""
    from l2s_pipelines import metrics

    t0 = time.perf_counter()
    res = segmenter.segment(img, return_posteriors=False)
    runtime = time.perf_counter() - t0
    ref = np.asarray(ref_img.dataobj).astype(np.int16)
    pred = np.asarray(res.dseg)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction grid {pred.shape} differs from reference {ref.shape}")
    table = scoring_table(res.label_table)
    rows = metrics.dice_scores(pred, ref, table, ignore_value=255)
    return {"dice": {r["name"]: r["dice"] for r in rows if r["index"] != 0},
            "mean_dice": metrics.mean_dice(rows),
            "tissue_dice": metrics.tissue_dice(pred, ref, table, ignore_value=255, tissues=TISSUES),
            "runtime_s": runtime}


def scoring_table(table):
    """The model's label table, or SynthSeg 2.0's default table when the values are the same
    (a manifest without tissue classes would otherwise put every label in one tissue)."""
    from l2s_pipelines.labels import LabelTable

    default = LabelTable.default()
    return default if list(table.values) == list(default.values) else table


def _nanmean(values) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def summarise(per_subject: dict[str, dict], subjects: list[dict]) -> dict:
    """Group summaries ``{"all" | "FreeSurfer" | "DLMUSE": {n, subjects, mean_dice,
    per_structure, tissue_dice}}``; groups without subjects are left out."""
    out = {}
    groups = {"all": subjects, **{g: [s for s in subjects if s["protocol"] == g] for g in ("FreeSurfer", "DLMUSE")}}
    for g, members in groups.items():
        res = [per_subject[s["subject"]] for s in members if s["subject"] in per_subject]
        if not res:
            continue
        names = list(res[0]["dice"])
        out[g] = {"n": len(res), "subjects": [s["subject"] for s in members],
                  "mean_dice": _nanmean(r["mean_dice"] for r in res),
                  "per_structure": {n: _nanmean(r["dice"][n] for r in res) for n in names},
                  "tissue_dice": {t: _nanmean(r["tissue_dice"][t] for r in res) for t in TISSUES}}
    return out


def evaluate_model(package: Path, subjects: list[dict], device: str, degradation: str | None = None,
                   seed: int = 0) -> dict:
    """Score one model package on ``subjects`` (optionally degraded); returns per-subject
    results, group summaries and the manifest's identity and training record."""
    from l2s_pipelines.inference import Segmenter

    seg = Segmenter.from_package(package, device=device)
    from l2s_pipelines.io.checkpoint import read_manifest
    manifest = read_manifest(package)
    per_subject = {}
    for i, s in enumerate(subjects):
        img, ref = nib.load(s["image"]), nib.load(s["reference"])
        if degradation:
            img, ref = DEGRADATIONS[degradation](img, ref, seed + i)
        per_subject[s["subject"]] = {"protocol": s["protocol"], **score_image(seg, img, ref)}
        print(f"  {manifest['name']} {degradation or 'original'} {s['subject']}: "
              f"mean Dice {per_subject[s['subject']]['mean_dice']:.3f}", file=sys.stderr)
    return {"package": str(package), "name": manifest["name"], "sha256": manifest["weights"]["sha256"],
            "inference": manifest.get("inference"), "training": manifest.get("training", {}),
            "degradation": degradation, "subjects": per_subject, "summary": summarise(per_subject, subjects)}


# ------------------------------------------------------------------ Markdown
def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _group(res, g, key="mean_dice"):
    return res["summary"].get(g, {}).get(key, math.nan)


def markdown(report: dict) -> str:
    """Markdown tables: summary per model, per-structure Dice, robustness, curve."""
    lines = [f"# Accuracy on real scans ({report['dataset']})", "",
             f"Scored: {', '.join(report['scored'])}. Tune subjects (never scored): "
             f"{', '.join(report['tuned'])}. Mean Dice = per subject the mean over the 32 "
             "structures (reference 255 ignored), then the mean over subjects.", ""]
    models = report.get("models", [])
    if models:
        lines += ["| model | method | steps | DLMUSE mean Dice (n) | FreeSurfer mean Dice (n) | all | "
                  + " | ".join(TISSUES) + " |", "|---" * (6 + len(TISSUES)) + "|"]
        for m in models:
            t = m["training"]
            n = {g: m["summary"].get(g, {}).get("n", 0) for g in ("DLMUSE", "FreeSurfer")}
            lines.append(f"| {m['name']} | {t.get('method', '?')} | {t.get('steps', '?')} | "
                         f"{_f(_group(m, 'DLMUSE'))} ({n['DLMUSE']}) | {_f(_group(m, 'FreeSurfer'))} "
                         f"({n['FreeSurfer']}) | {_f(_group(m, 'all'))} | "
                         + " | ".join(_f(m["summary"]["all"]["tissue_dice"][t_]) for t_ in TISSUES) + " |")
        lines += ["", "Per-structure Dice (all scored subjects; DLMUSE / FreeSurfer in brackets):", "",
                  "| structure | " + " | ".join(m["name"] for m in models) + " |", "|---" * (1 + len(models)) + "|"]
        for name in models[0]["summary"]["all"]["per_structure"]:
            cells = [f"{_f(m['summary']['all']['per_structure'][name])} "
                     f"({_f(m['summary'].get('DLMUSE', {}).get('per_structure', {}).get(name))} / "
                     f"{_f(m['summary'].get('FreeSurfer', {}).get('per_structure', {}).get(name))})" for m in models]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rob = report.get("robustness")
    if rob:
        lines += ["", f"Robustness of {rob['model']} ({rob['scoring']}):", "",
                  "| condition | DLMUSE | FreeSurfer | all |", "|---|---|---|---|"]
        for cond, res in rob["conditions"].items():
            lines.append(f"| {cond} | {_f(_group(res, 'DLMUSE'))} | {_f(_group(res, 'FreeSurfer'))} | "
                         f"{_f(_group(res, 'all'))} |")
    curve = report.get("curve")
    if curve:
        lines += ["", "Dice against training time:", "",
                  "| package | step | wall time (s) | DLMUSE | FreeSurfer | all |", "|---|---|---|---|---|---|"]
        for c in curve:
            lines.append(f"| {c['name']} | {c['step']} | {_f(c['wall_time_s'])} | {_f(c['DLMUSE'])} | "
                         f"{_f(c['FreeSurfer'])} | {_f(c['all'])} |")
    return "\n".join(lines) + "\n"


def _curve_packages(paths) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out += [p] if (p / "manifest.json").is_file() else sorted(q.parent for q in p.glob("*/manifest.json"))
    if not out:
        raise SystemExit(f"--curve: no model packages (folders with manifest.json) in {paths}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", type=Path, help="model package folders")
    ap.add_argument("--bids", type=Path, default=DEFAULT_BIDS)
    ap.add_argument("--scored", nargs="+", default=list(DEFAULT_SCORED))
    ap.add_argument("--tuned", nargs="+", default=list(DEFAULT_TUNED))
    ap.add_argument("--allow-tuned", action="store_true", help="allow scoring tune subjects")
    ap.add_argument("--robustness", type=Path, default=None, metavar="MODEL_DIR")
    ap.add_argument("--curve", nargs="+", default=None, metavar="DIR",
                    help="checkpoint packages (or folders of them) to score in training order")
    ap.add_argument("--append", action="store_true",
                    help="with --curve: keep the rows of the existing curve file for packages not "
                         "scored again (score new checkpoints as training goes on)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated degradations")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_accuracy.json")
    args = ap.parse_args(argv)
    if not (args.models or args.robustness or args.curve):
        ap.error("give model packages, --robustness or --curve")
    overlap = sorted(set(args.scored) & set(args.tuned))
    if overlap and not args.allow_tuned:
        ap.error(f"scored subjects {overlap} were used for tuning; pass --allow-tuned to score them anyway")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    subjects = find_subjects(args.bids.resolve(), args.scored)
    report = {"dataset": str(args.bids), "scored": [s["subject"] for s in subjects],
              "tuned": [f"sub-{t}" for t in args.tuned], "device": args.device,
              "definition": "mean Dice: per subject mean over 32 structures (label 255 ignored), then mean over subjects"}
    report["models"] = [evaluate_model(m, subjects, args.device) for m in args.models]
    if args.robustness:
        conds = {"original": evaluate_model(args.robustness, subjects, args.device)}
        for d in DEGRADATIONS:
            conds[d] = evaluate_model(args.robustness, subjects, args.device, d, args.seed)
        report["robustness"] = {"model": conds["original"]["name"], "package": str(args.robustness),
                                "scoring": "resampled scans scored against the reference resampled to the "
                                           "degraded grid with nearest neighbour", "conditions": conds}
    if args.curve:
        rows = []
        for pkg in _curve_packages(args.curve):
            res = evaluate_model(pkg, subjects, args.device)
            t = res["training"]
            rows.append({"name": res["name"], "package": str(pkg), "step": t.get("steps"),
                         "wall_time_s": t.get("wall_time_s", t.get("budget", {}).get("wall_time_s")),
                         **{g: _group(res, g) for g in ("all", "DLMUSE", "FreeSurfer")}})
        if args.out.name == "real_accuracy.json":
            args.out = args.out.with_name("real_accuracy_curve.json")
        if args.append and args.out.is_file():
            scored = {r["package"] for r in rows}
            rows += [r for r in json.loads(args.out.read_text()).get("curve", []) if r["package"] not in scored]
        report["curve"] = sorted(rows, key=lambda r: (r["name"], r["step"] is None, r["step"] or 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
