"""Template-space derivatives (``--output-spaces``): names, sidecars and completion checks.

The template-space task (:func:`l2s_pipelines.workflows.templates.template_spaces_task`) writes
``spaces/<template_id>/`` with ``space-<id>_dseg.nii.gz``, the ITK transform
``from-<suffix>_to-<id>_mode-image_xfm.txt`` and ``template.json`` (eTIV-style volume, tissue
Dice, registration). Published per image, next to the native outputs::

    sub-X[_ses-Y]..._space-<id>_dseg.nii.gz          labels on the template grid (int16)
    sub-X[_ses-Y]..._space-<id>_dseg.json            Sources, SpatialReference, registration,
                                                     eTIV, tissue Dice, model, versions
    sub-X[_ses-Y]..._from-<suffix>_to-<id>_mode-image_xfm.txt   (listed in .bidsignore)

Example
-------
>>> publish_space_results("work/.../spaces", "out", entities={"subject": "01"},
...                       spaces=["MNI152NLin2009cAsym"], common={})  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from l2s_pipelines.errors import InputError

#: How the template-space outputs are made (written to every space sidecar).
REGISTRATION_METHOD = (
    "12-parameter affine, label driven: the subject's CSF/GM/WM maps from the segmentation are "
    "fitted to the template's CSF/GM/WM probability maps (mean squared error, multi-resolution, "
    "Adam; l2s_pipelines.registration.register_affine); labels resampled with nearest neighbour")


def _name(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def space_paths(output_dir, entities: dict, template_id: str) -> dict[str, Path]:
    """Output paths of one template space for one image: ``dseg``, ``dseg_json`` and the
    folder/pattern of the transform (``xfm_glob``: the suffix of the input is not needed)."""
    from l2s_pipelines.bids_app.derivatives import derivative_prefix

    spaced = derivative_prefix(output_dir, entities, space=template_id)
    native = derivative_prefix(output_dir, entities)
    return {"dseg": _name(spaced, "_dseg.nii.gz"), "dseg_json": _name(spaced, "_dseg.json"),
            "xfm_glob": native.parent / f"{native.name}_from-*_to-{template_id}_mode-image_xfm.txt",
            "native_prefix": native}


def space_is_complete(output_dir, entities: dict, template_id: str) -> bool:
    """True when the space's dseg, its sidecar (valid JSON with ``SpatialReference``) and the
    transform exist for the image."""
    paths = space_paths(output_dir, entities, template_id)
    try:
        meta = json.loads(paths["dseg_json"].read_text())
    except (OSError, json.JSONDecodeError):
        return False
    xfm = paths["xfm_glob"]
    return (isinstance(meta, dict) and "SpatialReference" in meta and paths["dseg"].is_file()
            and any(xfm.parent.glob(xfm.name)))


def _read_summary(folder: Path, template_id: str) -> dict:
    path = folder / "template.json"
    try:
        summary = json.loads(path.read_text())
        files = summary["files"]
        dseg, xfm = folder / files["dseg"], folder / files["xfm"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: missing or unreadable template-space summary ({exc})") from exc
    for f in (dseg, xfm):
        if not f.is_file():
            raise InputError(f"{f}: missing from the template-space result of {template_id}")
    return summary


def publish_space_results(spaces_dir, output_dir, *, entities: dict, spaces, common: dict,
                          move: bool = False) -> dict[str, Path]:
    """Publish each requested template space of one image (before the native completion marker).

    Parameters
    ----------
    spaces_dir : path-like or None
        The task's ``spaces/`` folder (one ``<template_id>/`` each); None only when ``spaces``
        is empty.
    output_dir : path-like
        Derivatives root.
    entities : dict
        Source image entities (as for :func:`~l2s_pipelines.bids_app.derivatives.derivative_prefix`).
    spaces : sequence of str
        Template ids to publish (all folders of ``spaces_dir`` when empty).
    common : dict
        Sidecar fields shared with the native outputs (``Sources`` = the raw image, ``Model``,
        ``RandomSeed``, ``Device``, ``GeneratedBy``, ``L2SVersions``).

    Returns
    -------
    dict
        ``space-<id>_dseg``, ``space-<id>_dseg_json``, ``space-<id>_xfm`` -> path written.
    """
    from l2s_pipelines.bids_app.derivatives import atomic_copy, write_json

    if spaces_dir is None:
        if spaces:
            raise InputError(f"--output-spaces {' '.join(spaces)}: the workflow returned no template outputs")
        return {}
    spaces_dir = Path(spaces_dir)
    spaces = list(spaces) or sorted(p.name for p in spaces_dir.iterdir() if p.is_dir())
    written: dict[str, Path] = {}
    for template_id in spaces:
        folder = spaces_dir / template_id
        summary = _read_summary(folder, template_id)
        paths = space_paths(output_dir, entities, template_id)
        native = paths["native_prefix"]
        xfm_dest = native.with_name(f"{native.name}_{summary['files']['xfm']}")
        written[f"space-{template_id}_xfm"] = atomic_copy(folder / summary["files"]["xfm"], xfm_dest)
        written[f"space-{template_id}_dseg"] = atomic_copy(folder / summary["files"]["dseg"],
                                                           paths["dseg"], move=move)
        native_rel = _name(native, "_dseg.nii.gz").relative_to(Path(output_dir)).as_posix()
        written[f"space-{template_id}_dseg_json"] = write_json(paths["dseg_json"], {
            **common,
            "Description": (f"Segmentation resampled into the {template_id} template space "
                            "(labels in the native _dseg.tsv)."),
            "Sources": list(common.get("Sources", [])) + [f"bids::{native_rel}"],
            "SpatialReference": template_id,
            "TemplateFlow": {"Template": template_id, "Resolution": summary.get("resolution")},
            "RegistrationMethod": REGISTRATION_METHOD,
            "Transform": {"File": xfm_dest.name, "Format": "ITK text affine (LPS), template -> subject "
                          "points; antsApplyTransforms -r template -i image -t transform"},
            "RegistrationLoss": summary.get("registration_loss"),
            "EstimatedTotalIntracranialVolume": {"Value": summary.get("etiv_mm3"), "Units": "mm^3",
                                                 "Method": summary.get("etiv_method")},
            "TissueDice": summary.get("tissue_dice"), "TissueDiceMethod": summary.get("tissue_dice_method"),
        })
    return written
