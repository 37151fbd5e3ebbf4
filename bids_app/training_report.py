"""HTML training report of a model package: ``MODEL_DIR/training_report.html``.

Sections: the model's identity and training record (method, tune and validation subjects,
budget, command line); curves from the package's ``metrics.jsonl`` (one JSON object per logged
step with a ``step`` key; keys containing ``loss`` go to the loss plot, keys containing ``dice``
to the Dice plot, keys starting with ``aug`` or ``theta`` to the augmentation-parameter plot);
and example images from ``examples.npz`` when present (written by :func:`l2s_pipelines.workflows.training.save_examples`):
synthetic, augmented and real slices side by side. Figures are PNGs (matplotlib, Agg) in
``MODEL_DIR/figures/``, linked from the HTML. numpy + matplotlib only (no torch).
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import numpy as np

from l2s_pipelines.system import atomic_write_text

AUG_PREFIXES = ("aug", "theta")
EXAMPLE_ROWS = ("synthetic", "augmented", "real")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Read ``metrics.jsonl``: a list of dicts (blank or unparsable lines skipped, e.g. a line
    cut by an interruption)."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def _flatten(row: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def series(rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Numeric series by key (nested dicts flattened with dots): ``{key: (steps, values)}``.

    Rows without ``step`` are skipped; a resumed run that re-logs a step keeps the last value.
    """
    by_key: dict[str, dict[int, float]] = {}
    for row in rows:
        flat = _flatten(row)
        if "step" not in flat:
            continue
        step = int(flat.pop("step"))
        for k, v in flat.items():
            by_key.setdefault(k, {})[step] = v
    return {k: (np.array(sorted(d)), np.array([d[s] for s in sorted(d)])) for k, d in by_key.items()}


def classify(keys) -> dict[str, list[str]]:
    """Split series keys into ``loss``, ``dice``, ``augmentation`` and ``other`` groups."""
    groups = {"loss": [], "dice": [], "augmentation": [], "other": []}
    for k in sorted(keys):
        low = k.lower()
        if low.startswith(AUG_PREFIXES):
            groups["augmentation"].append(k)
        elif "dice" in low:
            groups["dice"].append(k)
        elif "loss" in low:
            groups["loss"].append(k)
        else:
            groups["other"].append(k)
    return groups


def _plot(path: Path, data: dict, keys: list[str], ylabel: str, logy: bool = False) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for k in keys:
        steps, vals = data[k]
        ax.plot(steps, vals, label=k, lw=1.2, marker="." if len(steps) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if logy and all((data[k][1] > 0).all() for k in keys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_examples(path: Path, npz: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with np.load(npz) as f:
        rows = [(name, f[name]) for name in EXAMPLE_ROWS if name in f.files and f[name].size]
    ncol = max(len(a) for _, a in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.2 * ncol, 2.3 * len(rows)), dpi=100, squeeze=False)
    for r, (name, arr) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(arr):
                ax.imshow(np.rot90(arr[c]), cmap="gray", vmin=0, vmax=1)
                if c == 0:
                    ax.set_title(name, fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(d: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(_fmt, v)) if v else "none"
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def write_training_report(model_dir: str | os.PathLike, metrics_path: str | os.PathLike | None = None) -> Path:
    """Write ``model_dir/training_report.html`` (and PNGs in ``model_dir/figures``).

    ``metrics_path`` defaults to ``model_dir/metrics.jsonl``; ``model_dir/examples.npz`` is
    shown when present. Returns the HTML path. Sections with no data say so instead of failing.
    """
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    training = manifest.get("training", {})
    data = series(read_metrics(metrics_path or model_dir / "metrics.jsonl"))
    groups = classify(data)
    figdir = model_dir / "figures"
    figdir.mkdir(exist_ok=True)
    parts = [f"<h1>Training report: {html.escape(manifest.get('name', model_dir.name))}</h1>",
             f"<p>{html.escape(manifest.get('description', ''))}</p>", "<h2>Training</h2>",
             _table({k: training.get(k) for k in ("method", "steps", "seed", "tune_subjects",
                                                   "val_subjects", "label_maps", "budget") if k in training}),
             "<h3>Command</h3>", f"<pre>{html.escape(str(training.get('command', 'not recorded')))}</pre>",
             "<h3>Hyperparameters</h3>", _table(training.get("hyperparameters", {})),
             "<h3>Architecture, preprocessing, inference</h3>",
             _table({k: manifest.get(k) for k in ("architecture", "preprocessing", "inference")})]
    titles = {"loss": ("Losses", "loss", True), "dice": ("Dice", "Dice", False),
              "augmentation": ("Augmentation parameters over time", "value", False),
              "other": ("Other logged values", "value", False)}
    for group, (title, ylabel, logy) in titles.items():
        parts.append(f"<h2>{title}</h2>")
        if groups[group]:
            png = _plot(figdir / f"curve_{group}.png", data, groups[group], ylabel, logy)
            parts.append(f'<img src="figures/{png.name}" alt="{title}">')
        else:
            parts.append("<p>Nothing logged.</p>")
    parts.append("<h2>Synthetic, augmented and real images</h2>")
    npz = model_dir / "examples.npz"
    if npz.is_file():
        png = _plot_examples(figdir / "examples.png", npz)
        with np.load(npz) as f:
            step = int(f["step"]) if "step" in f.files else -1
        parts.append(f"<p>Rows: generator output, augmenter output, preprocessed real scans"
                     f"{f' (step {step})' if step >= 0 else ''}.</p>"
                     f'<img src="figures/{png.name}" alt="examples">')
    else:
        parts.append("<p>No examples were saved for this model.</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:13px}img{max-width:100%}")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Training report</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    return atomic_write_text(model_dir / "training_report.html", doc)
