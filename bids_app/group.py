"""Group level: wide tables, distributions and outliers, from the derivatives alone.

Outputs in ``OUTPUT_DIR`` (all listed in ``.bidsignore``):

- ``group_volumes.tsv`` / ``group_volumes_soft.tsv``: one row per image, one column per label
  (hard / soft volume in mm^3), plus ``tiv_mm3`` and ``tiv_method`` (a short level whose text is
  in the table's JSON data dictionary);
- ``group_dice.tsv``: one row per image with a reference, one column per label, ``mean_dice`` and
  ``used_for_tuning``;
- ``group_qc.tsv``: one row per image, one column per QC measure (value) and ``<name>_flagged``;
- ``group_outliers.tsv``: image, participant, session, label, volume as % of TIV, robust z-score
  (|z| > 3);

Every table is written by :func:`~l2s_pipelines.bids_app.tables.write_table` with a JSON data
dictionary beside it (``group_volumes.json``, ...).
- ``figures/group_volumes.png`` (one heatmap of every label's robust z-score), ``figures/group_dice.png``
  (Dice per structure, held-out and tuning images apart; see
  :mod:`~l2s_pipelines.bids_app.group_figures`) and ``group.html``.

Robust z-score of label ``l`` for image ``i``: ``0.6745 * (v_il - median_l) / MAD_l`` with
``v = volume_hard / TIV``; labels with ``MAD = 0`` (or fewer than 3 images) get no z-score.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from l2s_pipelines.bids_app import html as H
from l2s_pipelines.bids_app.cli import EXIT_BAD_INPUT, EXIT_OK
from l2s_pipelines.bids_app.derivatives import atomic_write_text, write_bidsignore
from l2s_pipelines.bids_app.group_figures import OUTLIER_Z, dice_plot, volume_heatmap
from l2s_pipelines.bids_app.report import ImageDerivatives, collect_images, write_subject_report
from l2s_pipelines.bids_app.tables import write_table
from l2s_pipelines.errors import InputError
from l2s_pipelines.metrics import mean_dice

LOGGER = logging.getLogger("l2s_pipelines.group")
_IDS = {"image": "Image: the output name prefix of its segmentation (sub-X[_ses-Y]...).",
        "participant_id": "Participant.", "session_id": "Session (n/a: none)."}
DICTIONARIES = {
    "volumes": {**_IDS, "tiv_mm3": {"Description": "Total intracranial volume.", "Units": "mm^3"},
                "*": {"Description": "Hard volume of the label named by the column.", "Units": "mm^3"}},
    "volumes_soft": {**_IDS, "tiv_mm3": {"Description": "Total intracranial volume.", "Units": "mm^3"},
                     "*": {"Description": "Soft volume (posterior sum) of the label named by the column.",
                           "Units": "mm^3"}},
    "dice": {**_IDS, "used_for_tuning": "True when the image's subject tuned the model (not held out).",
             "mean_dice": "Mean Dice over the non-background labels present in prediction or reference "
                          "(l2s_pipelines.metrics.mean_dice, as in the subject report).", "*": "Dice of the label named by the column."},
    "qc": {**_IDS, "n_flagged": "Number of QC flags raised.",
           "*": "QC measure value, or <measure>_flagged: True when beyond its threshold."},
    "outliers": {**_IDS, "label": "Label.", "percent_tiv": {"Description": "Hard volume as % of TIV.", "Units": "%"},
                 "robust_z": "Robust z-score 0.6745 (x - median) / MAD of percent_tiv over the images."},
}


def _ids(img: ImageDerivatives) -> dict:
    return {"image": img.name, "participant_id": f"sub-{img.subject}",
            "session_id": f"ses-{img.entities['ses']}" if "ses" in img.entities else "n/a"}


def _wide(images: list[ImageDerivatives], frame_of, column: str) -> pd.DataFrame:
    """One row per image, one column per label name (label-table order) of ``frame[column]``."""
    rows, order = [], {}
    for img in images:
        frame = frame_of(img)
        if frame is None:
            continue
        row = _ids(img)
        for rec in frame.itertuples(index=False):
            if int(rec.index) == 0:
                continue
            order.setdefault(rec.name, int(rec.index))
            row[rec.name] = getattr(rec, column)
        rows.append(row)
    columns = sorted(order, key=order.get)
    return pd.DataFrame(rows, columns=["image", "participant_id", "session_id"] + columns)


def tiv_levels(images: list[ImageDerivatives]) -> dict[str, str]:
    """Short level (``"1"``, ``"2"``, ...) -> TIV method text, in order of first appearance."""
    texts = [str((img.sidecar.get("TotalIntracranialVolume") or {}).get("Method") or "unknown") for img in images]
    return {str(i + 1): t for i, t in enumerate(dict.fromkeys(texts))}


def volume_tables(images: list[ImageDerivatives]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide hard and soft volume tables (mm^3) with TIV columns after the identifiers; the
    ``tiv_method`` column holds the levels of :func:`tiv_levels`, not the method's text."""
    tiv = [(img.sidecar.get("TotalIntracranialVolume") or {}) for img in images]
    code = {t: k for k, t in tiv_levels(images).items()}
    out = []
    for column in ("volume_hard_mm3", "volume_soft_mm3"):
        table = _wide(images, lambda i: i.volumes, column)
        table.insert(3, "tiv_mm3", [t.get("Value") for t in tiv])
        table.insert(4, "tiv_method", [code[str(t.get("Method") or "unknown")] for t in tiv])
        out.append(table)
    return out[0], out[1]


def dice_table(images: list[ImageDerivatives]) -> pd.DataFrame:
    """Wide Dice table for the images that have a reference, with ``used_for_tuning``."""
    with_ref = [i for i in images if i.dice is not None]
    table = _wide(with_ref, lambda i: i.dice, "dice")
    labels = table.columns[3:]
    table.insert(3, "used_for_tuning", [bool(i.sidecar.get("UsedForTuning")) for i in with_ref])
    table.insert(4, "mean_dice", [mean_dice(i.dice.to_dict("records")) for i in with_ref])
    return table


def qc_table(images: list[ImageDerivatives]) -> pd.DataFrame:
    """One row per image: ``n_flagged`` then each QC measure's value and ``<name>_flagged``."""
    rows = []
    for img in images:
        row = _ids(img)
        flagged = [str(v).strip().lower() in ("true", "1") for v in img.qc["flagged"]]
        row["n_flagged"] = int(sum(flagged))
        for rec, flag in zip(img.qc.itertuples(index=False), flagged):
            row[rec.name] = rec.value
            row[f"{rec.name}_flagged"] = flag
        rows.append(row)
    return pd.DataFrame(rows)


def robust_z(relative: pd.DataFrame) -> pd.DataFrame:
    """Robust z-scores per column: ``0.6745 (x - median) / MAD`` (NaN where MAD is 0 or n < 3)."""
    median = relative.median(axis=0, skipna=True)
    mad = (relative - median).abs().median(axis=0, skipna=True)
    z = 0.6745 * (relative - median) / mad.replace(0, np.nan)
    if len(relative) < 3:
        z[:] = np.nan
    return z


def outliers(hard: pd.DataFrame) -> pd.DataFrame:
    """Rows (image, participant_id, session_id, label, percent_tiv, robust_z) with ``|z| > OUTLIER_Z``."""
    labels = list(hard.columns[5:])
    tiv = pd.to_numeric(hard["tiv_mm3"], errors="coerce")
    relative = hard[labels].apply(pd.to_numeric, errors="coerce").div(tiv, axis=0) * 100.0
    z = robust_z(relative)
    found = []
    for i, j in zip(*np.nonzero((z.abs() > OUTLIER_Z).to_numpy())):
        found.append({"image": hard["image"].iat[i], "participant_id": hard["participant_id"].iat[i],
                      "session_id": hard["session_id"].iat[i], "label": labels[j],
                      "percent_tiv": relative.iat[i, j], "robust_z": z.iat[i, j]})
    return pd.DataFrame(found, columns=["image", "participant_id", "session_id", "label", "percent_tiv", "robust_z"])


def _image_link(name: str, participant: str) -> str:
    anchor = "".join(c for c in name if c.isalnum() or c in "_-")
    return f'<a href="{H.esc(participant)}.html#{H.esc(anchor)}">{H.esc(name)}</a>'


def _names(names: list[str], most: int = 20) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _dice_section(dice: pd.DataFrame) -> str:
    """Held-out and tuning images summarised apart, then every image, worst mean Dice first."""
    tuned = dice["used_for_tuning"].astype(bool)
    note = (f'<div class="callout">Used to tune the model (not held out): '
            f'{H.esc(_names(dice.loc[tuned, "image"].tolist()))}. Their Dice is not a held-out estimate.</div>'
            if tuned.any() else "<p>No image with a reference was used to tune the model.</p>")
    summary = []
    for name, mask in (("held out", ~tuned), ("used for tuning", tuned)):
        values = pd.to_numeric(dice.loc[mask, "mean_dice"], errors="coerce")
        summary.append([name, int(mask.sum()), H.fmt(values.mean(), 3), H.fmt(values.median(), 3),
                        H.fmt(values.min(), 3)])
    order = dice.assign(_t=tuned).sort_values(["_t", "mean_dice"], kind="stable")
    rows = [[_image_link(r.image, r.participant_id), "yes" if r.used_for_tuning else "no",
             H.fmt(r.mean_dice, 3)] for r in order.itertuples(index=False)]
    return ("<section><h2>Dice against reference labels</h2>" + note
            + "<p>Mean Dice per image: non-background labels present in prediction or reference.</p>"
            + H.table(["Images", "n", "Mean", "Median", "Lowest"], summary)
            + '<h3>Per image (held out first, lowest first)</h3><div class="scroll">'
            + H.table(["Image", "Used for tuning", "Mean Dice"], rows, raw_columns=(0,)) + "</div></section>")


def _group_html(output_dir: Path, hard, dice, qc, found, figures: dict, accuracy_warnings=()) -> str:
    flags = dict(zip(qc["image"], qc["n_flagged"]))
    n_out = found["image"].value_counts().to_dict()
    rows = sorted(([_image_link(r.image, r.participant_id), r.session_id, H.fmt(r.tiv_mm3),
                    int(flags.get(r.image, 0)), int(n_out.get(r.image, 0))] for r in hard.itertuples(index=False)),
                  key=lambda row: -(row[3] + row[4]))
    body = [f'<div class="callout">{H.esc(w)}</div>' for w in accuracy_warnings]
    body += ["<section><h2>Images</h2><p>Images with QC flags or volume outliers first.</p>",
             '<div class="scroll">', H.table(["Image", "Session", "TIV (mm³)", "QC flags", "Volume outliers"],
                                              rows, raw_columns=(0,)), "</div></section>"]
    body.append(f"<section><h2>Outliers (|robust z| &gt; {OUTLIER_Z:g}, volume as % of TIV)</h2>")
    if found.empty:
        body.append("<p>No outliers" + (" (fewer than 3 images: no z-scores)." if len(hard) < 3 else ".")
                    + "</p>")
    else:
        body.append('<div class="scroll">' + H.table(["Image", "Label", "% of TIV", "Robust z"], [
            [_image_link(r.image, r.participant_id), r.label, H.fmt(r.percent_tiv, 3),
             H.fmt(r.robust_z, 2)] for r in found.itertuples(index=False)], raw_columns=(0,),
            text_columns=(0, 1)) + "</div>")
    body.append("</section>")
    for key, title in (("volumes", "Volumes of all labels, one heatmap"),
                       ("dice", "Dice per structure (held out and tuning apart)")):
        if figures.get(key):
            rel = figures[key].relative_to(output_dir).as_posix()
            body.append(f'<section><h2>{title}</h2><img class="mosaic" src="{H.esc(rel)}" '
                        f'alt="{H.esc(title)}"></section>')
    if not dice.empty:
        body.append(_dice_section(dice))
    body.append("<section><h2>Tables</h2><ul>" + "".join(
        f'<li><a href="{n}">{n}</a></li>' for n in ("group_volumes.tsv", "group_volumes_soft.tsv",
                                                    "group_dice.tsv", "group_qc.tsv", "group_outliers.tsv")
        if (output_dir / n).exists()) + "</ul></section>")
    return H.page("Group report", f"{len(hard)} image(s) from {hard['participant_id'].nunique()} "
                  "participant(s)", "".join(body))


def _accuracy_warnings(images: list[ImageDerivatives]) -> list[str]:
    """The distinct model-accuracy warnings recorded in the images' dseg sidecars."""
    found = ((i.sidecar.get("Model") or {}).get("AccuracyWarning") for i in images)
    return list(dict.fromkeys(w for w in found if w))


def _write_tsv(frame: pd.DataFrame, path: Path, kind: str, images=()) -> Path:
    descriptions = dict(DICTIONARIES[kind])
    if "tiv_mm3" in descriptions:
        descriptions["tiv_method"] = {"Description": "How the total intracranial volume was estimated.",
                                      "Levels": tiv_levels(images)}
    return write_table(frame, path, descriptions)


def build_group(output_dir, participants=None) -> dict[str, Path]:
    """Write every group output; raise :class:`InputError` when there are no derivatives."""
    output_dir = Path(output_dir)
    images = collect_images(output_dir)
    if participants:
        wanted = {p[4:] if p.startswith("sub-") else p for p in participants}
        images = [i for i in images if i.subject in wanted]
    if not images:
        raise InputError(f"{output_dir}: no finished segmentations (*_dseg.json) found; "
                         "run the participant level first")
    hard, soft = volume_tables(images)
    dice, qc = dice_table(images), qc_table(images)
    found = outliers(hard)
    written = {"volumes": _write_tsv(hard, output_dir / "group_volumes.tsv", "volumes", images),
               "volumes_soft": _write_tsv(soft, output_dir / "group_volumes_soft.tsv", "volumes_soft", images),
               "qc": _write_tsv(qc, output_dir / "group_qc.tsv", "qc"),
               "outliers": _write_tsv(found, output_dir / "group_outliers.tsv", "outliers")}
    if not dice.empty:
        written["dice"] = _write_tsv(dice, output_dir / "group_dice.tsv", "dice")
    labels = list(hard.columns[5:])
    relative = hard[labels].apply(pd.to_numeric, errors="coerce").div(
        pd.to_numeric(hard["tiv_mm3"], errors="coerce"), axis=0) * 100.0
    tuned = {i.name for i in images if i.sidecar.get("UsedForTuning")}
    figures = {"volumes": volume_heatmap(relative, robust_z(relative), hard["image"].tolist(), tuned,
                                         output_dir / "figures" / "group_volumes.png"),
               "dice": dice_plot(dice, list(dice.columns[5:]), output_dir / "figures" / "group_dice.png")
               if not dice.empty else None}
    written.update({f"figure_{k}": v for k, v in figures.items() if v})
    for participant in sorted({i.subject for i in images}):
        if not (output_dir / f"sub-{participant}.html").exists():
            write_subject_report(output_dir, participant)
    written["html"] = atomic_write_text(output_dir / "group.html",
                                        _group_html(output_dir, hard, dice, qc, found, figures,
                                                    _accuracy_warnings(images)))
    write_bidsignore(output_dir)
    return written


def run_group(output_dir, options=None) -> int:
    """Group level entry point: 0 on success, 2 when no derivatives are found (message on stderr).

    ``options`` may carry ``participant_label`` (a list) to restrict the group to some subjects.
    """
    participants = getattr(options, "participant_label", None) if options is not None else None
    try:
        written = build_group(output_dir, participants)
    except InputError as exc:
        LOGGER.error("%s", exc)
        print(f"l2s-bids group: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    LOGGER.info("group report: %s", written["html"])
    return EXIT_OK
