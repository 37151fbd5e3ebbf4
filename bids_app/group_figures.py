"""Group report figures that stay readable from 2 images to thousands.

- :func:`volume_heatmap`: one heatmap of every label's volume (as % of TIV) per image, coloured by
  robust z-score (red: larger, blue: smaller than the group; ``|z| > 3`` marked). Up to
  :data:`MAX_ROWS` images are shown in table order; with more, the :data:`MAX_ROWS` most atypical
  images (largest ``|z|``) are shown, and a bar panel above gives, per label, the share of *all*
  images with ``|z| > 3``. With fewer than 3 images no z-score exists: the cells show the
  difference from the label's mean in %.
- :func:`dice_plot`: Dice per structure in one plot, held-out and tuning images side by side
  (never pooled): a box per group and structure, and the images as points while a group has at
  most :data:`MAX_POINTS` of them.

Both take the wide tables of :mod:`l2s_pipelines.bids_app.group` and write a PNG.

Example
-------
>>> volume_heatmap(relative, z, tuned=set(), path="figures/group_volumes.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: Most image rows drawn in the volume heatmap.
MAX_ROWS = 60
#: Most images drawn as points per group and structure in the Dice plot.
MAX_POINTS = 40
#: |robust z| beyond which a volume is marked as an outlier.
OUTLIER_Z = 3.0
#: Colour-scale limit of the heatmap (z beyond it is drawn at the limit colour).
Z_LIMIT = 4.0
GROUP_COLOURS = {"held out": "#1f5fa8", "used for tuning": "#e08a00"}


def heatmap_rows(z: pd.DataFrame, max_rows: int = MAX_ROWS) -> list[int]:
    """Row positions to draw: all when at most ``max_rows``, else the ``max_rows`` rows with the
    largest ``max |z|`` (ties and NaN rows last), most atypical first."""
    if len(z) <= max_rows:
        return list(range(len(z)))
    score = z.abs().max(axis=1, skipna=True).fillna(-1.0).to_numpy()
    return [int(i) for i in np.argsort(-score, kind="stable")[:max_rows]]


def volume_heatmap(relative: pd.DataFrame, z: pd.DataFrame, names: list[str], tuned: set[str],
                   path) -> Path | None:
    """Heatmap of ``z`` (images x labels) with row labels ``names``; see the module docstring.

    ``relative``: volumes as % of TIV (same shape as ``z``), used when ``z`` is all NaN (fewer
    than 3 images). ``tuned``: names of images whose subject tuned the model (marked ``*``).
    Returns the PNG path, or None when no label has a value.
    """
    keep = [c for c in relative.columns if relative[c].notna().any()]
    if not keep:
        return None
    relative, z = relative[keep], z[keep]
    n = len(relative)
    use_z = bool(z.notna().to_numpy().any())
    if use_z:
        values, limit = z, Z_LIMIT
        scale = f"robust z-score of volume as % of TIV (clipped at ±{Z_LIMIT:g}); ○: |z| > {OUTLIER_Z:g}"
    else:
        mean = relative.mean(axis=0)
        values = 100.0 * (relative - mean) / mean.replace(0, np.nan)
        limit = max(float(np.nanmax(np.abs(values.to_numpy()))) if values.notna().any().any() else 1.0, 1.0)
        scale = "difference from the label's mean volume (% of TIV), in % (fewer than 3 images: no z-scores)"
    rows = heatmap_rows(values if use_z else values.fillna(0))
    sampled = len(rows) < n
    data = values.iloc[rows].to_numpy(dtype=float)
    row_h = 0.16 if len(rows) > 20 else 0.32
    bottom_h = 0.6 + 0.05 * max(len(str(c)) for c in keep)  # rotated label names, then the scale text
    heat_h, title_h, top_h = max(row_h * len(rows), 0.9), 0.35, 1.1 if sampled else 0.0
    fig_h = bottom_h + heat_h + title_h + top_h
    fig = plt.figure(figsize=(11, fig_h), dpi=90)
    heat = fig.add_axes([0.2, bottom_h / fig_h, 0.68, heat_h / fig_h])
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#d9d9d9")
    im = heat.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, vmin=-limit, vmax=limit,
                     interpolation="nearest")
    if use_z:
        yy, xx = np.nonzero(np.abs(np.nan_to_num(data)) > OUTLIER_Z)
        heat.scatter(xx, yy, s=14 if len(rows) <= 20 else 6, facecolors="none", edgecolors="k", linewidths=0.8)
    heat.set_xticks(range(len(keep)), keep, rotation=90, fontsize=7)
    shown = [names[i] + (" *" if names[i] in tuned else "") for i in rows]
    heat.set_yticks(range(len(rows)), shown, fontsize=7 if len(rows) > 20 else 8)
    bar = fig.add_axes([0.9, bottom_h / fig_h, 0.015, heat_h / fig_h])
    cbar = fig.colorbar(im, cax=bar)
    cbar.ax.tick_params(labelsize=7)
    cbar.set_label("robust z" if use_z else "% from mean", fontsize=7)
    title = (f"the {len(rows)} most atypical of {n} images (largest |z|); all in group_volumes.tsv"
             if sampled else f"{n} image(s)")
    fig.text(0.2, (bottom_h + heat_h + 0.08) / fig_h, title + ("; * used to tune the model" if tuned else ""),
             fontsize=9, va="bottom")
    fig.text(0.2, 0.08 / fig_h, scale, fontsize=8, va="bottom")
    if sampled:
        share = fig.add_axes([0.2, (fig_h - top_h + 0.1) / fig_h, 0.68, (top_h - 0.25) / fig_h], sharex=heat)
        beyond = (z.abs() > OUTLIER_Z).sum(axis=0) / max(n, 1) * 100.0
        share.bar(range(len(keep)), beyond.to_numpy(), color="#c62828", width=0.7)
        share.set_ylabel("% |z|>3", fontsize=7)
        share.tick_params(axis="x", labelbottom=False)
        share.tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def dice_plot(dice: pd.DataFrame, labels: list[str], path) -> Path | None:
    """Dice per structure (columns ``labels`` of the wide Dice table), held-out and tuning images
    apart (``used_for_tuning``). Returns the PNG path, or None when nothing is scored."""
    keep = [c for c in labels if pd.to_numeric(dice[c], errors="coerce").notna().any()]
    if not keep:
        return None
    tuned = dice["used_for_tuning"].astype(str).str.lower().isin(("true", "1"))
    groups = [(name, dice[mask]) for name, mask in (("held out", ~tuned), ("used for tuning", tuned))
              if mask.any()]
    fig, ax = plt.subplots(figsize=(11, 3.8), dpi=90)
    width = 0.8 / len(groups)
    rng = np.random.default_rng(0)  # fixed jitter: reruns give identical figures
    for g, (name, frame) in enumerate(groups):
        offset = (g - (len(groups) - 1) / 2) * width
        colour = GROUP_COLOURS[name]
        series = [pd.to_numeric(frame[c], errors="coerce").dropna().to_numpy() for c in keep]
        where = [i for i, s in enumerate(series) if s.size]
        ax.boxplot([series[i] for i in where], positions=[i + offset for i in where], widths=width * 0.8,
                   showfliers=len(frame) > MAX_POINTS, patch_artist=True, manage_ticks=False,
                   boxprops={"facecolor": colour + "40", "edgecolor": colour},
                   medianprops={"color": colour}, whiskerprops={"color": colour}, capprops={"color": colour},
                   flierprops={"markeredgecolor": colour, "markersize": 2})
        if len(frame) <= MAX_POINTS:
            for i in where:
                jitter = rng.uniform(-width * 0.3, width * 0.3, series[i].size)
                ax.plot(i + offset + jitter, series[i], "o", ms=3, color=colour, alpha=0.8)
        ax.plot([], [], "s", color=colour, label=f"{name} (n={len(frame)})")
    ax.set_xticks(range(len(keep)), keep, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(keep) - 0.4)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Dice", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
