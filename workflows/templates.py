"""Template-space outputs from TemplateFlow files that are already on disk (never downloaded).

TemplateFlow's layout is read directly under ``TEMPLATEFLOW_HOME``
(``tpl-<id>/tpl-<id>_res-<RR>_<entities>.nii.gz``); ``templateflow.api.get`` is not called, so
a missing file gives an :class:`~l2s_pipelines.errors.InputError` that says how to pre-fetch it,
instead of a download attempt. The container pre-fetches the files into ``/opt/templateflow``.

``template_space_task`` (Pydra python task) registers one image's segmentation to a template
with :func:`l2s_pipelines.registration.register_affine` (tissue maps vs the template's
CSF/GM/WM probability maps) and writes, in ``template/`` of its cache folder:
``space-<id>_dseg.nii.gz`` (nearest resampling of the native dseg into the template grid),
``from-<suffix>_to-<id>_mode-image_xfm.txt`` (ITK text affine, template -> subject points, LPS;
``antsApplyTransforms -r template -i subject -t xfm`` resamples the subject into the template)
and ``template.json`` (eTIV-style estimate with its method, per-tissue Dice of the warped labels
against the template tissue maps thresholded at 0.5, registration loss, matrix).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fileformats.generic import Directory
from pydra.compose import python

from l2s_pipelines.errors import InputError

TISSUE_LABELS = ("CSF", "GM", "WM")


@dataclass(frozen=True)
class TemplateFiles:
    """Paths of the template files used for template-space outputs (all exist, non-empty)."""

    template_id: str
    resolution: int
    t1w: Path
    brain_mask: Path
    probseg: dict  # tissue label ("CSF", "GM", "WM") -> Path


def templateflow_home() -> Path:
    """``$TEMPLATEFLOW_HOME``, else TemplateFlow's default ``$HOME/.cache/templateflow``."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if home:
        return Path(home)
    if not os.environ.get("HOME"):
        raise InputError("TEMPLATEFLOW_HOME is not set (and HOME is unset): cannot locate templates")
    return Path(os.environ["HOME"]) / ".cache" / "templateflow"


def available_templates() -> list[str]:
    """Template ids with a ``tpl-<id>`` folder under the TemplateFlow home (sorted)."""
    home = templateflow_home()
    if not home.is_dir():
        return []
    return sorted(p.name[4:] for p in home.glob("tpl-*") if p.is_dir())


def get_template_files(template_id: str, resolution: int = 1) -> TemplateFiles:
    """Locate T1w, brain mask and CSF/GM/WM probseg of ``template_id`` at ``res-<resolution>``.

    Raises InputError naming the first missing or empty file and the pre-fetch command.
    """
    home = templateflow_home()
    res = f"res-{int(resolution):02d}"
    stem = home / f"tpl-{template_id}" / f"tpl-{template_id}_{res}"
    wanted = {"T1w": f"{stem}_T1w.nii.gz", "mask": f"{stem}_desc-brain_mask.nii.gz"}
    wanted.update({t: f"{stem}_label-{t}_probseg.nii.gz" for t in TISSUE_LABELS})
    for key, path in wanted.items():
        p = Path(path)
        if not p.is_file() or p.stat().st_size == 0:
            state = "is empty (a TemplateFlow placeholder)" if p.is_file() else "is missing"
            found = ", ".join(available_templates()) or "none"
            raise InputError(
                f"template {template_id} not found in TEMPLATEFLOW_HOME={home}: {p} {state} "
                f"(templates present: {found}); pre-fetch it on a machine with network access with: "
                f"python -c 'import templateflow.api as tf; "
                f"tf.get(\"{template_id}\", resolution={int(resolution)}, "
                f"suffix=[\"T1w\", \"mask\", \"probseg\"])' and point TEMPLATEFLOW_HOME at that folder"
            )
    return TemplateFiles(template_id=template_id, resolution=int(resolution), t1w=Path(wanted["T1w"]),
                         brain_mask=Path(wanted["mask"]),
                         probseg={t: Path(wanted[t]) for t in TISSUE_LABELS})


def transform_name(suffix: str, template_id: str) -> str:
    """BIDS-style transform file name part: ``from-<suffix>_to-<template>_mode-image_xfm.txt``."""
    return f"from-{suffix}_to-{template_id}_mode-image_xfm.txt"


def _subject_tissue_maps(result_dir: Path, table):
    """(3, X, Y, Z) subject tissue maps (probseg when present, else one-hot dseg), dseg, affine."""
    import nibabel as nib
    import numpy as np

    from l2s_pipelines.registration import tissue_maps_from_labels, tissue_maps_from_posteriors

    dseg_img = nib.load(result_dir / "dseg.nii.gz")
    dseg = np.asarray(dseg_img.dataobj).astype(np.int16)
    probseg = result_dir / "probseg.nii.gz"
    if probseg.is_file():
        maps = tissue_maps_from_posteriors(nib.load(probseg).get_fdata(dtype=np.float32), table)
    else:
        maps = tissue_maps_from_labels(dseg, table)
    return maps, dseg, dseg_img.affine


def map_to_template(result_dir, out_dir, template_id: str, resolution: int = 1,
                    suffix: str = "T1w") -> dict:
    """Register one per-image result folder to a template and write the template-space files.

    result_dir: folder with ``dseg.nii.gz`` (+ optional ``probseg.nii.gz``) and ``info.json``
    (``labels``). Returns the dict written to ``out_dir/template.json``.
    """
    import json

    import nibabel as nib
    import numpy as np

    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.registration import (TISSUES, register_affine, resample_labels,
                                            tissue_maps_from_labels, write_itk_affine)

    result_dir, out_dir = Path(result_dir), Path(out_dir)
    files = get_template_files(template_id, resolution)
    info_path = result_dir / "info.json"
    try:
        table = LabelTable.from_dict(json.loads(info_path.read_text())["labels"])
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{info_path}: cannot read the label table ({exc})") from exc
    maps, dseg, dseg_affine = _subject_tissue_maps(result_dir, table)
    tpl_imgs = [nib.load(files.probseg[t]) for t in TISSUES]
    tpl_maps = np.stack([img.get_fdata(dtype=np.float32) for img in tpl_imgs])
    tpl_affine, tpl_shape = tpl_imgs[0].affine, tpl_imgs[0].shape[:3]
    reg = register_affine(maps, dseg_affine, tpl_maps, tpl_affine)

    out_dir.mkdir(parents=True, exist_ok=True)
    warped = resample_labels(dseg, dseg_affine, reg.matrix, tpl_shape, tpl_affine)
    img = nib.Nifti1Image(warped, tpl_affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm")
    nib.save(img, out_dir / f"space-{template_id}_dseg.nii.gz")
    xfm = write_itk_affine(out_dir / transform_name(suffix, template_id), reg.matrix)

    warped_tissue = tissue_maps_from_labels(warped, table) > 0.5
    dice = {}
    for k, tissue in enumerate(TISSUES):
        ref = tpl_maps[k] > 0.5
        denom = int(ref.sum()) + int(warped_tissue[k].sum())
        dice[tissue] = round(2.0 * int((ref & warped_tissue[k]).sum()) / denom, 4) if denom else None
    mask_img = nib.load(files.brain_mask)
    mask_mm3 = float((np.asarray(mask_img.dataobj) > 0.5).sum()) * float(abs(np.linalg.det(mask_img.affine[:3, :3])))
    summary = {
        "template": template_id, "resolution": int(resolution),
        "etiv_mm3": round(mask_mm3 * reg.scale_determinant, 1),
        "etiv_method": (f"eTIV-style: brain-mask volume of {template_id} res-{int(resolution):02d} "
                        f"({mask_mm3:.0f} mm3) times the determinant of the affine "
                        "template-to-subject registration (tissue-map driven, 12 parameters)"),
        "tissue_dice": dice, "tissue_dice_method": "warped labels (nearest) grouped into CSF/GM/WM "
                       "vs template tissue probability maps > 0.5",
        "registration_loss": reg.losses, "scale_determinant": reg.scale_determinant,
        "template_to_subject_ras": reg.matrix.round(6).tolist(),
        "files": {"dseg": f"space-{template_id}_dseg.nii.gz", "xfm": xfm.name},
        "template_files": {k: str(v) for k, v in
                           {"T1w": files.t1w, "mask": files.brain_mask, **files.probseg}.items()},
    }
    (out_dir / "template.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@python.define(outputs=["out_dir"])
def template_space_task(result_dir: Directory, template_id: str, resolution: int = 1,
                        suffix: str = "T1w", nthreads: int = 1) -> Directory:
    """Pydra task around :func:`map_to_template`; writes ``template/`` in its cache folder.

    result_dir: the per-image result folder (e.g. the segmentation node's ``out_dir``).
    nthreads: torch intra-op threads.
    """
    import shutil

    import torch

    torch.set_num_threads(max(1, int(nthreads)))
    out = Path.cwd() / "template"
    if out.exists():
        shutil.rmtree(out)
    map_to_template(Path(result_dir), out, template_id, int(resolution), suffix)
    return Directory(out)


@python.define(outputs=["out_dir"])
def template_spaces_task(result_dir: Directory, template_ids: list, resolution: int = 1,
                         suffix: str = "T1w", nthreads: int = 1) -> Directory:
    """All requested templates for one image: ``spaces/<template_id>/`` (as :func:`map_to_template`).

    For the participant workflow: one node per image after the segmentation node, with
    ``result_dir`` = the segmentation's result folder and ``template_ids`` = ``--output-spaces``.
    """
    import shutil

    import torch

    torch.set_num_threads(max(1, int(nthreads)))
    out = Path.cwd() / "spaces"
    if out.exists():
        shutil.rmtree(out)
    for template_id in template_ids:
        map_to_template(Path(result_dir), out / template_id, template_id, int(resolution), suffix)
    return Directory(out)
