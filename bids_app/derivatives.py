"""BIDS Derivatives output: names, sidecars, look-up tables, dataset_description and .bidsignore.

Every file is written under a temporary hidden name in its destination folder and moved into
place with ``os.replace`` (atomic on POSIX), so a killed job never leaves a half-written
derivative. Per image, the ``_dseg.json`` sidecar is written last and serves as the completion
marker (:func:`image_is_complete`). ``dataset_description.json`` is merged under a file lock
because several cluster jobs may write into one output folder at the same time.

Layout of one image's outputs (native space: no ``space-`` entity)::

    sub-X[/ses-Y]/anat/sub-X[_ses-Y][_acq-..][_ce-..][_rec-..][_run-..]_dseg.nii.gz  (+ .tsv, .json)
    ..._probseg.nii.gz (+ .json)        optional, 4D (X, Y, Z, K), channels in dseg.tsv order
    ..._desc-volumes_morph.tsv          label volumes in mm^3, hard and soft (in .bidsignore)
    ..._desc-dice_stats.tsv             Dice against a reference, when one exists (in .bidsignore)
    ..._desc-qc_stats.tsv               automated QC flags (in .bidsignore)
    sub-X/figures/<name>_desc-<plane>_dseg.png   report mosaics (figures/ in .bidsignore)
    ..._space-<tpl>_dseg.nii.gz (+ .json)  with --output-spaces: labels on the template grid
    ..._from-<suffix>_to-<tpl>_mode-image_xfm.txt   ITK affine (in .bidsignore)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from l2s_pipelines import __version__
from l2s_pipelines.bids_app import tables
from l2s_pipelines.bids_app.entities import entity_order
from l2s_pipelines.bids_app.locks import locked
from l2s_pipelines.bids_app.provenance import code_url, detect_container, software_versions
from l2s_pipelines.errors import InputError
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.system import TMP_MARK, atomic_write_text, temp_path, write_json  # noqa: F401 (re-exported)

PIPELINE_NAME = "l2s-pipelines"
BIDS_VERSION = "1.10.0"
#: Suffix (after the prefix) of each non-standard table; all listed in .bidsignore.
TABLES = {"volumes": "_desc-volumes_morph.tsv", "dice": "_desc-dice_stats.tsv",
          "qc": "_desc-qc_stats.tsv"}
BIDSIGNORE = ("*_morph.tsv", "*_stats.tsv", "*_morph.json", "*_stats.json", "*.html", "figures/", "**/figures", "logs/",
              "group_*", "run_summary*", "*.lock", "*_xfm.txt")


# ----------------------------------------------------------------------------- atomic writes
def atomic_copy(src, dest, *, move: bool = False) -> Path:
    """Copy (or move) ``src`` to ``dest`` atomically; the folder of ``dest`` is created."""
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    try:
        if move:
            shutil.move(str(src), tmp)
        else:
            shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def clean_stale_temporaries(output_dir) -> list[Path]:
    """Remove temporary files left by killed writers anywhere under ``output_dir``."""
    removed = []
    for path in Path(output_dir).rglob(f"*{TMP_MARK}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- dataset level
def write_dataset_description(output_dir, *, bids_dir, model_manifest: dict,
                              container: dict | None = None) -> Path:
    """Create or merge ``OUTPUT_DIR/dataset_description.json`` under a lock, atomically.

    ``GeneratedBy`` gets (or updates) one entry named ``l2s-pipelines`` with the version, the
    model (name, sha256; all models used are listed in ``L2SModels``, the library versions in
    ``L2SVersions``) and the container (``container`` or, when ``None``, detected from
    ``APPTAINER_CONTAINER``/``SINGULARITY_CONTAINER``/``L2S_CONTAINER_URI``). Entries of other
    pipelines, ``SourceDatasets`` and ``DatasetLinks`` from earlier runs are kept (union).
    ``DatasetLinks["raw"]`` points at ``bids_dir`` so that sidecars can cite ``bids:raw:...``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    bids_uri = Path(bids_dir).absolute().as_uri()
    model = {"Name": str(model_manifest.get("name", "unknown")),
             "SHA256": str(model_manifest.get("weights", {}).get("sha256", ""))}
    entry = {"Name": PIPELINE_NAME, "Version": __version__, "CodeURL": code_url(),
             "Description": (f"Brain MRI segmentation with a network trained by Learn2Synth; "
                             f"model {model['Name']} (sha256 {model['SHA256']})")}
    container = container if container is not None else detect_container()
    if container:
        entry["Container"] = container
    dest = output_dir / "dataset_description.json"
    with locked(output_dir / ".dataset_description.json.lock", timeout=120):
        try:
            desc = json.loads(dest.read_text()) if dest.exists() else {}
        except (OSError, json.JSONDecodeError):
            desc = {}  # a corrupt file cannot be merged; it is rewritten whole
        desc.setdefault("Name", "l2s-pipelines segmentations")
        desc["BIDSVersion"] = BIDS_VERSION
        desc["DatasetType"] = "derivative"
        others = [g for g in desc.get("GeneratedBy", []) if g.get("Name") != PIPELINE_NAME]
        desc["GeneratedBy"] = [entry] + others
        sources = [s for s in desc.get("SourceDatasets", []) if s.get("URL") != bids_uri]
        desc["SourceDatasets"] = [{"URL": bids_uri}] + sources
        desc.setdefault("DatasetLinks", {})["raw"] = bids_uri
        models = [m for m in desc.get("L2SModels", []) if m.get("SHA256") != model["SHA256"]]
        desc["L2SModels"] = models + [model]
        desc["L2SVersions"] = software_versions()
        write_json(dest, desc)
        readme = output_dir / "README.md"
        if not readme.exists():
            atomic_write_text(readme, _README)
    return dest


_README = """# l2s-pipelines derivatives

Native-space brain segmentations (`*_dseg.nii.gz` with `*_dseg.tsv` look-up tables and JSON
sidecars), optional posteriors (`*_probseg.nii.gz`), label volumes (`*_desc-volumes_morph.tsv`),
Dice against reference labels (`*_desc-dice_stats.tsv`), QC flags (`*_desc-qc_stats.tsv`),
per-subject HTML reports (`sub-<label>.html`) and group tables (`group_*.tsv`, `group.html`).
Generated by l2s-pipelines; see `dataset_description.json` for the version and model.
"""


def write_bidsignore(output_dir) -> Path:
    """Write or extend ``OUTPUT_DIR/.bidsignore`` with the non-standard outputs' patterns."""
    dest = Path(output_dir) / ".bidsignore"
    existing = dest.read_text().splitlines() if dest.exists() else []
    lines = existing + [p for p in BIDSIGNORE if p not in existing]
    if lines != existing or not dest.exists():
        atomic_write_text(dest, "\n".join(lines) + "\n")
    return dest


# ----------------------------------------------------------------------------- names
def _entity_value(entities: dict, long: str, short: str):
    value = entities.get(long, entities.get(short))
    if value is None or value == "":
        return None
    value = str(value)
    if long == "subject" and value.startswith("sub-"):
        value = value[4:]
    if long == "session" and value.startswith("ses-"):
        value = value[4:]
    if not re.fullmatch(r"[A-Za-z0-9]+", value):
        raise InputError(f"entity {short}-{value!r}: BIDS labels must be alphanumeric")
    return value


def derivative_prefix(output_dir, entities: dict, *, space: str | None = None) -> Path:
    """``OUTPUT_DIR/sub-X[/ses-Y]/anat/sub-X[_ses-Y][_acq-..]...[_run-..][_echo-..][_part-..]``.

    ``entities`` uses the BIDS schema's names (``subject``, ``session``, ``acquisition``, ...) or
    the short keys (``sub``, ``ses``, ``acq``, ...), written in the schema's order. Suffix and
    extension are not part of it; ``space`` (only from the argument, never from ``entities``)
    goes in its BIDS place.
    """
    parts, folder = [], Path(output_dir)
    entities = {k: v for k, v in entities.items() if k != "space"}
    if space is not None:
        entities["space"] = space
    for long, short in entity_order():
        value = _entity_value(entities, long, short)
        if value is not None:
            parts.append(f"{short}-{value}")
            if short in ("sub", "ses"):
                folder = folder / f"{short}-{value}"
    if not parts or not parts[0].startswith("sub-"):
        raise InputError(f"entities {entities}: a subject label is required")
    return folder / "anat" / "_".join(parts)


def _with(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def bids_uri(path, bids_dir) -> str:
    """``bids:raw:<relative path>`` when ``path`` lies in ``bids_dir``, else a ``file://`` URI."""
    path = Path(path).absolute()
    if bids_dir is not None:
        try:
            return "bids:raw:" + path.relative_to(Path(bids_dir).absolute()).as_posix()
        except ValueError:
            pass
    return path.as_uri()


def _linked_bids_dir(output_dir) -> Path | None:
    try:
        desc = json.loads((Path(output_dir) / "dataset_description.json").read_text())
        uri = desc["DatasetLinks"]["raw"]
    except (OSError, KeyError, json.JSONDecodeError):
        return None
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


# ----------------------------------------------------------------------------- per image
def _read_result(result_dir: Path) -> tuple[dict, dict]:
    for name in ("dseg.nii.gz", "volumes.tsv", "qc.json", "info.json"):
        if not (result_dir / name).is_file():
            raise InputError(f"{result_dir / name}: missing from the segmentation result folder")
    try:
        info = json.loads((result_dir / "info.json").read_text())
        qc = json.loads((result_dir / "qc.json").read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{result_dir}: unreadable info.json or qc.json ({exc})") from exc
    if "labels" not in info:
        raise InputError(f"{result_dir / 'info.json'}: no 'labels' table")
    return info, qc


def model_entry(info: dict) -> dict:
    """The sidecars' ``Model`` entry from a result's ``info``: name, sha256 and, when the
    package records them, its measured accuracy and the accuracy warning."""
    model = {"Name": info.get("model_name"), "SHA256": info.get("model_sha256")}
    if info.get("model_accuracy"):
        model["Accuracy"] = info["model_accuracy"]
    if info.get("model_accuracy_warning"):
        model["AccuracyWarning"] = info["model_accuracy_warning"]
    return model


def publish_image_results(result_dir, output_dir, *, entities: dict, source_file,
                          save_probseg: bool, bids_dir=None, move: bool = False,
                          spaces_dir=None, spaces=()) -> dict[str, Path]:
    """Copy one image's result folder (see the shared contract) into BIDS derivative names.

    Parameters
    ----------
    result_dir : path-like
        Folder with ``dseg.nii.gz``, ``volumes.tsv``, ``qc.json``, ``info.json`` and optionally
        ``probseg.nii.gz``, ``dice.tsv``, ``figures/*.png``.
    output_dir : path-like
        Derivatives root (``dataset_description.json`` lives there).
    entities : dict
        Source image entities (pybids names or short keys); carried over to the outputs.
    source_file : path-like
        The input image, cited in ``Sources`` as ``bids:raw:...`` when inside ``bids_dir``.
    save_probseg : bool
        Also publish the 4D posteriors (an error if the result folder has none).
    bids_dir : path-like, optional
        Input dataset root; by default read from ``DatasetLinks.raw`` of the output's
        ``dataset_description.json``.
    move : bool
        Move instead of copy (frees the work folder; Pydra's cache then no longer holds them).
    spaces_dir, spaces : path-like or None, sequence of str
        Template-space results (``spaces/<id>/``) and the ids to publish
        (:func:`l2s_pipelines.bids_app.spaces.publish_space_results`).

    Returns
    -------
    dict
        Output kind (``dseg``, ``dseg_tsv``, ``probseg``, ``probseg_json``, ``volumes``, ``dice``,
        ``qc``, ``figure_<plane>``, ``space-<id>_*``, ``dseg_json``) -> path written.
    """
    result_dir, output_dir = Path(result_dir), Path(output_dir)
    info, qc = _read_result(result_dir)
    prefix = derivative_prefix(output_dir, entities)
    sidecar = _with(prefix, "_dseg.json")
    sidecar.unlink(missing_ok=True)  # not complete until rewritten last
    bids_dir = bids_dir if bids_dir is not None else _linked_bids_dir(output_dir)
    source_uri = bids_uri(source_file, bids_dir)
    written: dict[str, Path] = {}

    tsv_text, rows = tables.lookup_table_tsv(result_dir / "dseg.nii.gz", info["labels"])
    written["dseg_tsv"] = atomic_write_text(_with(prefix, "_dseg.tsv"), tsv_text)
    written["dseg"] = atomic_copy(result_dir / "dseg.nii.gz", _with(prefix, "_dseg.nii.gz"), move=move)
    model = model_entry(info)
    generated = {"Name": PIPELINE_NAME, "Version": __version__, "CodeURL": code_url()}
    container = detect_container()
    if container:
        generated["Container"] = container
    common = {"Sources": [source_uri], "SpatialReference": "orig", "Model": model,
              "RandomSeed": info.get("seed"), "Device": info.get("device"), "GeneratedBy": [generated],
              # torch intra-op threads: bit-identical CPU output needs the same seed, input and threads
              "Threads": info.get("threads"),
              "L2SVersions": software_versions(info.get("versions"))}

    probseg = result_dir / "probseg.nii.gz"
    if save_probseg:
        if not probseg.is_file():
            raise InputError(f"{probseg}: --save-probseg asked for posteriors the task did not write")
        entries = LabelTable.from_dict(info["labels"]).entries()
        written["probseg"] = atomic_copy(probseg, _with(prefix, "_probseg.nii.gz"), move=move)
        written["probseg_json"] = write_json(_with(prefix, "_probseg.json"), {
            **common, "Description": "Posterior probability of each label (4th axis).",
            "LabelMap": {str(i): e["name"] for i, e in enumerate(entries)},
            "LabelValues": [e["value"] for e in entries],
            # float32, or uint8 with the NIfTI scale factor 1/255 for large images (readers that
            # apply scl_slope, e.g. nibabel's get_fdata, see probabilities either way)
            "Encoding": info.get("probseg_encoding", "float32")})

    # tables through pandas (fixed decimals, n/a), each with its JSON data dictionary
    written["volumes"] = tables.write_table(tables.read_tsv(result_dir / "volumes.tsv"),
                                            _with(prefix, TABLES["volumes"]), tables.VOLUMES)
    if (result_dir / "dice.tsv").is_file():
        written["dice"] = tables.write_table(tables.read_tsv(result_dir / "dice.tsv"),
                                             _with(prefix, TABLES["dice"]), tables.DICE)
    else:  # a rerun without reference must not keep a stale Dice table
        for ext in (".tsv", ".json"):
            _with(prefix, TABLES["dice"]).with_suffix(ext).unlink(missing_ok=True)
    written["qc"] = tables.write_table(tables.qc_frame(qc), _with(prefix, TABLES["qc"]), tables.QC)

    figures_dir = output_dir / f"sub-{_entity_value(entities, 'subject', 'sub')}" / "figures"
    for png in sorted((result_dir / "figures").glob("*.png")):
        plane = re.sub(r"[^A-Za-z0-9]", "", png.stem.replace("mosaic_", ""))
        written[f"figure_{plane}"] = atomic_copy(png, figures_dir / f"{prefix.name}_desc-{plane}_dseg.png")

    from l2s_pipelines.bids_app.spaces import publish_space_results

    written.update(publish_space_results(spaces_dir, output_dir, entities=entities, spaces=spaces,
                                         common=common, move=move))
    reference = info.get("reference")
    written["dseg_json"] = write_json(sidecar, {
        **common,
        "Description": "Native-space segmentation by l2s-pipelines (labels in the _dseg.tsv).",
        "Reference": bids_uri(reference, bids_dir) if reference else None,
        "UsedForTuning": bool(info.get("used_for_tuning", False)),
        "TotalIntracranialVolume": {"Value": info.get("tiv_mm3"), "Units": "mm^3",
                                    "Method": info.get("tiv_method")},
        "RuntimeSeconds": info.get("runtime_s"), "PeakMemoryMB": info.get("peak_memory_mb"),
        "TimingsSeconds": info.get("timings_s", {}), "Warnings": list(info.get("warnings", [])),
        "Labels": [e["value"] for e in rows]})
    return written


def image_is_complete(output_dir, entities: dict, spaces=()) -> bool:
    """True when the image's outputs were all published (the ``_dseg.json`` marker is valid),
    including every template space in ``spaces`` (a new space makes the image incomplete)."""
    from l2s_pipelines.bids_app.spaces import space_is_complete

    prefix = derivative_prefix(output_dir, entities)
    sidecar = _with(prefix, "_dseg.json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    needed = [_with(prefix, "_dseg.nii.gz"), _with(prefix, "_dseg.tsv"),
              _with(prefix, TABLES["volumes"]), _with(prefix, TABLES["qc"])]
    return (isinstance(meta, dict) and "Sources" in meta and all(p.is_file() for p in needed)
            and all(space_is_complete(output_dir, entities, t) for t in spaces))


def conflicting_source(output_dir, entities: dict, source_file) -> str | None:
    """The input cited by an existing ``_dseg.json`` at this image's output names when it is not
    ``source_file`` (e.g. a T1w segmentation where a ``--input-suffix T2w`` run would write:
    derivative names carry no contrast), else None. Compared by file name."""
    sidecar = _with(derivative_prefix(output_dir, entities), "_dseg.json")
    try:
        cited = json.loads(sidecar.read_text()).get("Sources", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if not cited:
        return None
    name = unquote(str(cited[0])).rsplit("/", 1)[-1].rsplit(":", 1)[-1]  # bids:raw:... or file://...
    return None if name == Path(source_file).name else str(cited[0])


def quote_path(path) -> str:
    """URL-quote a relative path for use in HTML links (spaces, #, ...)."""
    return quote(Path(path).as_posix())
