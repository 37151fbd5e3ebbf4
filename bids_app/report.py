"""Per-subject HTML report, built from the derivatives on disk only.

Because the report reads nothing but the output folder, ``--reports-only`` and the group level
work on any finished output, and reruns regenerate it from what is actually there.

Example
-------
>>> write_subject_report("out", "01")  # doctest: +SKIP
PosixPath('out/sub-01.html')
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from l2s_pipelines.bids_app import html as H
from l2s_pipelines.bids_app.derivatives import TABLES, atomic_write_text, quote_path
from l2s_pipelines.errors import InputError
from l2s_pipelines.metrics import mean_dice
from l2s_pipelines.workflows.figures import DISAGREEMENT_COLOUR, PLANES, display_colour

#: Figures of an image, in report order: the three planes, then prediction against reference.
FIGURES = (*PLANES, "disagreement")


@dataclass
class ImageDerivatives:
    """What the output folder holds for one segmented image (tables as DataFrames)."""

    prefix: Path                      # .../anat/sub-X[_ses-Y]... without suffix
    entities: dict[str, str]          # short key -> label, e.g. {"sub": "01", "ses": "a"}
    sidecar: dict                     # the _dseg.json
    volumes: pd.DataFrame             # index, name, volume_hard_mm3, volume_soft_mm3
    lut: pd.DataFrame                 # the _dseg.tsv (index, name, abbreviation, color)
    qc: pd.DataFrame                  # name, value, threshold, flagged, description
    dice: pd.DataFrame | None = None  # index, name, dice, volume_*_mm3, volume_diff_pct
    figures: dict[str, Path] = field(default_factory=dict)  # plane -> png path
    spaces: dict[str, dict] = field(default_factory=dict)   # template id -> _space-<id>_dseg.json

    @property
    def name(self) -> str:
        return self.prefix.name

    @property
    def subject(self) -> str:
        return self.entities["sub"]


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True)
    except Exception as exc:  # pandas raises several types for malformed tables
        raise InputError(f"{path}: unreadable table ({exc})") from exc


def _with(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def parse_entities(name: str) -> dict[str, str]:
    """``"sub-01_ses-a_run-2"`` -> ``{"sub": "01", "ses": "a", "run": "2"}``."""
    return dict(part.split("-", 1) for part in name.split("_") if "-" in part)


def collect_images(output_dir, subject: str | None = None) -> list[ImageDerivatives]:
    """All complete segmented images under ``output_dir`` (one subject, or all), sorted by name.

    An image counts when its ``_dseg.json`` completion marker exists; a missing table is an
    :class:`InputError` naming the file.
    """
    output_dir = Path(output_dir)
    pattern = f"sub-{subject}" if subject else "sub-*"
    images = []
    for sidecar_path in sorted(output_dir.glob(f"{pattern}/**/anat/*_dseg.json")):
        prefix = sidecar_path.with_name(sidecar_path.name[: -len("_dseg.json")])
        if "space" in parse_entities(prefix.name):
            continue  # a template-space output of an image, read with that image
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{sidecar_path}: unreadable sidecar ({exc})") from exc
        dice_path = _with(prefix, TABLES["dice"])
        fig_dir = output_dir / f"sub-{parse_entities(prefix.name)['sub']}" / "figures"
        figures = {p: fig_dir / f"{prefix.name}_desc-{p}_dseg.png" for p in FIGURES}
        images.append(ImageDerivatives(
            prefix=prefix, entities=parse_entities(prefix.name), sidecar=sidecar,
            volumes=_read_tsv(_with(prefix, TABLES["volumes"])), lut=_read_tsv(_with(prefix, "_dseg.tsv")),
            qc=_read_tsv(_with(prefix, TABLES["qc"])),
            dice=_read_tsv(dice_path) if dice_path.is_file() else None,
            figures={p: f for p, f in figures.items() if f.is_file()}, spaces=_space_sidecars(prefix)))
    return images


def _space_sidecars(prefix: Path) -> dict[str, dict]:
    """Template id -> sidecar of the image's ``space-<id>`` outputs (entities after the
    image's own, e.g. ``sub-01_run-1_space-X_dseg.json`` for ``sub-01_run-1``)."""
    own = parse_entities(prefix.name)
    found = {}
    for path in sorted(prefix.parent.glob("*_space-*_dseg.json")):
        ents = parse_entities(path.name[: -len("_dseg.json")])
        space = ents.pop("space", None)
        if space and ents == own:
            try:
                found[space] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: unreadable sidecar ({exc})") from exc
    return found


def _is_true(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _display_colours(img: ImageDerivatives) -> dict[int, str]:
    """Label value -> colour the figures draw it in (see :func:`display_colour`)."""
    return {int(i): display_colour(c) for i, c in zip(img.lut["index"], img.lut["color"])}


def _legend(img: ImageDerivatives) -> str:
    """Colour legend of the labels present in the segmentation (hard volume > 0)."""
    shown = _display_colours(img)
    lut = img.lut.set_index("index")
    items, changed = [], {}  # changed: (FreeSurfer colour, display colour) -> label names
    for rec in img.volumes.itertuples(index=False):
        if int(rec.index) == 0 or not rec.volume_hard_mm3 > 0:
            continue
        colour = shown.get(int(rec.index), "#808080")
        abbrev = lut["abbreviation"].get(rec.index) if "abbreviation" in lut else None
        items.append(f"<li>{H.swatch(colour)}{H.esc(rec.name)}"
                     + (f" <small>({H.esc(abbrev)})</small>" if isinstance(abbrev, str) else "") + "</li>")
        original = str(lut["color"].get(rec.index, colour)).lower()
        if colour != original:
            changed.setdefault((original, colour), []).append(str(rec.name))
    note = "".join(f"<p>{H.swatch(new)}<strong>{H.esc(', '.join(names))}</strong>: drawn in {H.esc(new)}; their "
                   f"FreeSurfer colour {H.swatch(old)}{H.esc(old)} (kept in <code>dseg.tsv</code>) would vanish "
                   "on the grey image.</p>" for (old, new), names in changed.items())
    return (f'<div class="legend" aria-label="label colours"><h3>Legend: {len(items)} labels '
            f'present</h3><ul>{"".join(items)}</ul>{note}</div>')


def _volumes_section(img: ImageDerivatives) -> str:
    colors = _display_colours(img)
    tiv = img.sidecar.get("TotalIntracranialVolume") or {}
    tiv_value = tiv.get("Value")
    rows = []
    for rec in img.volumes.itertuples(index=False):
        if int(rec.index) == 0:
            continue
        share = 100.0 * rec.volume_hard_mm3 / tiv_value if tiv_value else None
        rows.append([H.swatch(colors.get(int(rec.index), "#808080")) + H.esc(rec.name), rec.index,
                     H.fmt(rec.volume_hard_mm3), H.fmt(rec.volume_soft_mm3), H.fmt(share, 2)])
    tiv_line = (f"<p>Total intracranial volume: <strong>{H.fmt(tiv_value)} mm<sup>3</sup></strong>"
                f" (method: {H.esc(tiv.get('Method') or 'not stated')}).</p>")
    return ("<h3>Volumes</h3>" + tiv_line + '<div class="scroll">' + H.table(
        ["Label", "Value", "Hard (mm³)", "Soft (mm³)", "% of TIV"], rows, raw_columns=(0,)) + "</div>")


def _dice_section(img: ImageDerivatives) -> str:
    if img.dice is None:
        return "<h3>Dice</h3><p>No reference labels were found for this image.</p>"
    tuned = bool(img.sidecar.get("UsedForTuning"))
    note = ('<div class="callout"><strong>Used to tune the model.</strong> This subject was one of '
            "the labelled real scans of Learn2Synth training: its Dice scores are not held-out "
            "estimates.</div>" if tuned else "")
    rows = [[r.name, r.index, H.fmt(r.dice, 3) if pd.notna(r.dice) else "absent from both",
             H.fmt(r.volume_pred_mm3), H.fmt(r.volume_ref_mm3), H.fmt(r.volume_diff_pct, 1)]
            for r in img.dice.itertuples(index=False) if int(r.index) != 0]
    records = img.dice.to_dict("records")
    mean = mean_dice(records)
    scored = sum(1 for r in records if int(r["index"]) != 0 and pd.notna(r["dice"]))
    ref = img.sidecar.get("Reference")
    return ("<h3>Dice against reference labels " + (H.badge("tuning subject", "warn") if tuned else
            H.badge("held out", "ok")) + "</h3>" + note +
            f"<p>Reference: <code>{H.esc(ref or 'n/a')}</code>. Mean Dice over the {scored} structures "
            f"present in prediction or reference (background excluded): <strong>{H.fmt(mean, 3)}</strong>."
            "</p>" + '<div class="scroll">' +
            H.table(["Label", "Value", "Dice", "Predicted (mm³)", "Reference (mm³)", "Difference (%)"],
                    rows) + "</div>")


def _spaces_section(img: ImageDerivatives) -> str:
    """Template-space eTIV (method named) and tissue overlap, one row per template."""
    if not img.spaces:
        return ""
    rows, methods = [], []
    for template_id, side in img.spaces.items():
        etiv = side.get("EstimatedTotalIntracranialVolume") or {}
        dice = side.get("TissueDice") or {}
        rows.append([template_id, H.fmt(etiv.get("Value")), H.fmt(dice.get("CSF"), 3),
                     H.fmt(dice.get("GM"), 3), H.fmt(dice.get("WM"), 3)])
        methods += [m for m in (etiv.get("Method"), side.get("TissueDiceMethod"),
                                side.get("RegistrationMethod")) if m and m not in methods]
    notes = "".join(f"<li>{H.esc(m)}</li>" for m in methods)
    return ("<h3>Template spaces</h3>" + H.table(
        ["Template", "eTIV (mm³)", "Dice CSF", "Dice GM", "Dice WM"], rows, text_columns=(0,))
        + f"<p>Methods:</p><ul>{notes}</ul>")


def _qc_section(img: ImageDerivatives) -> str:
    if img.qc.empty:
        return "<h3>QC flags</h3><p>No QC measures recorded.</p>"
    status = [qc_status(r.flagged, r.value) for r in img.qc.itertuples(index=False)]
    order = sorted(range(len(status)), key=lambda i: _QC_ORDER[status[i]])  # stable: table order kept
    recs = list(img.qc.itertuples(index=False))
    rows = [[recs[i].name, H.fmt(recs[i].value, 3), recs[i].threshold, H.badge(*_QC_BADGE[status[i]]),
             recs[i].description] for i in order]
    counts = {k: status.count(k) for k in _QC_ORDER}
    summary = (f"<p>{counts['flagged']} of {len(status)} checks flagged"
               + (f", {counts['not checked']} not checked (no value: e.g. a structure absent or too small)"
                  if counts["not checked"] else "")
               + ". Flags ask for a visual check; they do not exclude the image.</p>")
    return "<h3>QC flags</h3>" + summary + H.table(
        ["Check", "Value", "Threshold", "Status", "Description"], rows, text_columns=(0, 2, 4),
        raw_columns=(3,), row_classes=["flagged" if status[i] == "flagged" else "" for i in order])


_QC_ORDER = {"flagged": 0, "ok": 1, "not checked": 2}
_QC_BADGE = {"flagged": ("flagged", "bad"), "ok": ("ok", "ok"), "not checked": ("not checked", "na")}


def qc_status(flagged, value) -> str:
    """``"flagged"``, ``"ok"`` or ``"not checked"`` (no value: e.g. the structure is absent)."""
    if _is_true(flagged):
        return "flagged"
    return "ok" if pd.notna(value) else "not checked"


def _figures_section(img: ImageDerivatives, output_dir: Path) -> str:
    if not img.figures:
        return "<p>No figures were found for this image.</p>"
    parts = [_legend(img)]
    for plane, path in img.figures.items():
        rel = quote_path(path.relative_to(output_dir))
        if plane == "disagreement":
            parts.append(f"<h3>Prediction against reference</h3><p>{H.swatch(DISAGREEMENT_COLOUR)}voxels "
                         "where the prediction differs from the reference; lines: the reference's label "
                         "boundaries, in the legend's colours. Same slices as above.</p>")
        else:
            side = " (x &lt; 0: left hemisphere)" if plane == "sagittal" else ""
            parts.append(f"<h3>{plane.capitalize()}{side}</h3>")
        parts.append(f'<img class="mosaic" src="{rel}" alt="{H.esc(plane)} slices of {H.esc(img.name)}">')
    return "".join(parts)


def image_section(img: ImageDerivatives, output_dir: Path) -> str:
    """The report block for one image (figures, volumes, Dice, QC, run facts)."""
    side = img.sidecar
    model = side.get("Model") or {}
    facts = H.table(["Item", "Value"], [
        ["Source", ", ".join(side.get("Sources", []))], ["Model", model.get("Name")],
        ["Model sha256", model.get("SHA256")], ["Device", side.get("Device")],
        ["Random seed", side.get("RandomSeed")], ["Runtime (s)", H.fmt(side.get("RuntimeSeconds"), 1)],
        ["Peak memory (MB)", H.fmt(side.get("PeakMemoryMB"), 0)]], text_columns=(0, 1))
    anchor = re.sub(r"[^A-Za-z0-9_-]", "", img.name)
    warnings = "".join(f'<div class="callout">{H.esc(w)}</div>' for w in side.get("Warnings") or [])
    return (f'<section id="{anchor}"><h2>{H.esc(img.name)}</h2>' + warnings + _figures_section(img, output_dir)
            + facts + _volumes_section(img) + _spaces_section(img) + _dice_section(img) + _qc_section(img)
            + "</section>")


def _errors_section(errors) -> str:
    if not errors:
        return "<section><h2>Errors</h2><p>No errors were reported.</p></section>"
    items = []
    for err in errors:
        if isinstance(err, dict):
            where = err.get("input") or err.get("image") or err.get("source") or ""
            text = f"{where}: {err.get('error', '')}" if where else str(err.get("error", err))
        else:
            text = str(err)
        items.append(f'<div class="error">{H.esc(text)}</div>')
    return f"<section><h2>Errors ({len(items)})</h2>{''.join(items)}</section>"


def write_subject_report(output_dir, subject: str, *, errors=()) -> Path:
    """Write ``OUTPUT_DIR/sub-<subject>.html`` from the subject's derivatives.

    Parameters
    ----------
    output_dir : path-like
        Derivatives root.
    subject : str
        Label with or without ``sub-``.
    errors : iterable of str or dict
        Failures to list (dicts with ``input``/``image`` and ``error`` keys, as in the run summary).

    Returns
    -------
    Path of the HTML file. A subject with errors but no finished image still gets a report.
    """
    output_dir = Path(output_dir)
    subject = subject[4:] if subject.startswith("sub-") else subject
    images = collect_images(output_dir, subject)
    errors = list(errors)
    if not images and not errors:
        raise InputError(f"{output_dir}: no finished derivatives for sub-{subject}")
    nav = "".join(f'<a href="#{re.sub(r"[^A-Za-z0-9_-]", "", i.name)}">{H.esc(i.name)}</a>'
                  for i in images)
    summary = (f"<section><h2>Summary</h2><p>{len(images)} image(s) segmented, "
               f"{len(errors)} error(s).</p><nav>{nav}</nav></section>")
    first = images[0].sidecar if images else {}
    model = first.get("Model") or {}
    tiv = (first.get("TotalIntracranialVolume") or {}).get("Method")
    body = (summary + "".join(image_section(i, output_dir) for i in images) + _errors_section(errors)
            + "<section><h2>Methods and citation</h2>"
            + H.citation(model.get("Name") or "n/a", model.get("SHA256") or "n/a", tiv) + "</section>")
    html_text = H.page(f"sub-{subject}", "l2s-pipelines segmentation report", body)
    return atomic_write_text(output_dir / f"sub-{subject}.html", html_text)
