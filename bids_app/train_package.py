"""The last step of ``l2s-train``: complete the trained package's manifest (subjects, command,
budget with the cumulative wall time, label table) and copy its training curves into it."""

from __future__ import annotations

import logging
from pathlib import Path

from l2s_pipelines.planes import LR_MERGED_PLANES
from l2s_pipelines.system import write_json
from l2s_pipelines.train import NEEDS_REAL

LOG = logging.getLogger("l2s_pipelines.train_cli")


def cumulative_wall_time(records: list[dict]) -> float | None:
    """Training wall time (s) from ``metrics.jsonl`` records. The trainer's ``time`` continues
    across resumes; logs of older versions restart it at each resume, and their per-session
    times are summed (time between the last log and an interruption is lost). None when
    nothing was logged."""
    total, last = 0.0, None
    for r in sorted((r for r in records if isinstance(r.get("time"), (int, float))), key=lambda r: r["step"]):
        if last is not None and r["time"] < last:
            total += last
        last = r["time"]
    return None if last is None else total + last


def complete_labels(labels: list[dict]) -> list[dict]:
    """Fill ``abbreviation``, ``lr_partner`` and ``tissue`` of manifest label entries from
    SynthSeg 2.0's default table (by label value) where absent; other entries unchanged."""
    from l2s_pipelines.labels import LabelTable

    default = {d["index"]: d for d in LabelTable.default().to_dict()["labels"]}
    return [{**default.get(int(lab["index"]), {}), **lab} for lab in labels]


def finalize_package(spec: dict, result: dict) -> Path:
    """Complete the trained package's manifest and copy the training curves into it.

    ``result`` is the training task's output (``model_dir``, ``metrics``). The manifest gains
    ``training.tune_subjects``, ``val_subjects``, ``label_maps``, ``generation_labels``,
    ``command``, ``budget`` (steps, warm-up, batch, patch, device, cumulative ``wall_time_s``),
    ``curves`` (``metrics.jsonl``, copied into the package); with several planes the inference
    mode becomes ``2.5d`` over those planes (``lr_merged_planes``: the sagittal one). The
    weights (and their sha256) are untouched.
    """
    from l2s_pipelines.bids_app.training_report import read_metrics
    from l2s_pipelines.io.checkpoint import MANIFEST_NAME, read_manifest

    pkg = Path(result["model_dir"])
    manifest = read_manifest(pkg)
    training = manifest.setdefault("training", {})
    hyper = training.get("hyperparameters", {})
    records = []
    if result.get("metrics") and Path(result["metrics"]).is_file():
        src, dst = Path(result["metrics"]), pkg / "metrics.jsonl"
        if src.resolve() != dst.resolve():
            dst.write_bytes(src.read_bytes())
        training["curves"] = dst.name
        records = read_metrics(dst)
    cfg = spec["config"]
    planes = cfg.get("planes") or []
    if len(planes) > 1:
        manifest["inference"] = dict(manifest.get("inference", {}), mode="2.5d", planes=list(planes))
        merged = [p for p in planes if p in LR_MERGED_PLANES]  # learnt on left/right-merged labels
        if merged:
            manifest["inference"]["lr_merged_planes"] = merged
    manifest["labels"] = complete_labels(manifest["labels"])
    training["planes"] = list(planes)
    # subjects whose labels shaped the weights; validation-only subjects are listed separately
    training["tune_subjects"] = ([p["subject"] for p in spec["real_train"]]
                                 if cfg["method"] in NEEDS_REAL else [])
    training["val_subjects"] = [p["subject"] for p in spec["real_val"]]
    training["label_maps"] = [Path(p).name for p in spec["label_maps"]]
    gen_used = "generation_labels" in hyper  # the trainer records what it used
    training["generation_labels"] = (Path(spec["generation_labels"]).name
                                     if spec.get("generation_labels") and gen_used else None)
    if spec.get("generation_labels") and not gen_used:
        LOG.warning("%s: this trainer does not take generation classes; it used one class per "
                    "label (left/right merged)", spec["generation_labels"])
    training["command"] = spec["command"]
    training["budget"] = {"steps": training.get("steps", hyper.get("steps")),
                          "warmup_steps": hyper.get("warmup_steps"), "batch_size": hyper.get("batch_size"),
                          "patch_size": hyper.get("patch_size"), "device": hyper.get("device", cfg["device"]),
                          "wall_time_s": cumulative_wall_time(records)}
    write_json(pkg / MANIFEST_NAME, manifest)
    return pkg
