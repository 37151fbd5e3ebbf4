"""Participant-level Pydra workflows, built by keyword-only factory functions.

``init_single_image_wf`` checks one image (and its reference), then segments it into a result
folder (see :mod:`l2s_pipelines.workflows.tasks`) and, with ``output_spaces``, maps that
result to TemplateFlow templates (:mod:`l2s_pipelines.workflows.templates`). ``init_participant_wf`` holds one such
sub-workflow per image, as independent nodes: the ``cf`` worker runs them in parallel and one
failing image does not stop the others. Each image's workflow carries its source path as a
string, so byte-identical files of two subjects never collapse into one cached job.

Example (runnable; needs a model package and a 3D NIfTI)
-------
>>> from l2s_pipelines.workflows.execution import make_submitter
>>> wf = init_single_image_wf(source="sub-01_T1w.nii.gz", model_dir="model",
...                           model_name="m", model_sha256="0" * 64)  # doctest: +SKIP
>>> with make_submitter("debug", work_dir="work") as sub:  # doctest: +SKIP
...     res = sub(wf)
>>> sorted(p.name for p in res.outputs.out_dir.fspath.iterdir())  # doctest: +SKIP
['dseg.nii.gz', 'figures', 'info.json', 'qc.json', 'volumes.tsv']
"""

from __future__ import annotations

import os
from pathlib import Path

from fileformats.generic import Directory
from pydra.compose import workflow

from l2s_pipelines.workflows.tasks import CheckImage, SegmentImage
from l2s_pipelines.workflows.templates import template_spaces_task

__desc__ = """\
Brain MRI segmentation was performed with *l2s-pipelines* {version}, a BIDS App built on Pydra.
Each {suffix} image was checked (three-dimensional, finite, not empty), reoriented to RAS,
resampled to the {voxel_size} mm resolution of the segmentation network and its intensities
rescaled so that the 1st and 99th percentiles map to 0 and 1. The network model *{model}*
(sha256 {sha256_short}), trained with Learn2Synth ({method}), predicted posterior probabilities
of {n_labels} labels, which were resampled back to the native grid of the input before the
arg-max; volumes were computed from hard labels (voxel counts) and from posterior sums (soft).
"""


def input_fingerprint(*paths: str) -> str:
    """``size:mtime_ns`` of each existing path, joined: enters the cache key so an input
    replaced in place is processed again."""
    parts = []
    for p in paths:
        if p and os.path.exists(p):
            st = os.stat(p)
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        else:
            parts.append("-")
    return "|".join(parts)


@workflow.define(outputs=["out_dir", "spaces_dir"])
def SingleImageWf(source: str, reference: str, model_dir: str, model_name: str, model_sha256: str,
                  device: str, save_probseg: bool, seed: int, nthreads: int, used_for_tuning: bool,
                  fingerprint: str, mem_mb: int = 0, output_spaces: list = [],  # noqa: B006
                  suffix: str = "T1w", resolution: int = 1) -> tuple[Directory, Directory | None]:
    """Check, segment, then (with ``output_spaces``) map to the templates.

    Outputs: the result folder, and the ``spaces/`` folder (one ``<template_id>/`` each, see
    :func:`l2s_pipelines.workflows.templates.template_spaces_task`) or None without spaces.
    """
    check = workflow.add(CheckImage(source=source, reference=reference, model_dir=model_dir,
                                    fingerprint=fingerprint, mem_mb=mem_mb, nthreads=nthreads), name="check")
    seg = workflow.add(SegmentImage(source=check.source, reference=check.reference, model_dir=model_dir,
                                    model_name=model_name, model_sha256=model_sha256, device=device,
                                    save_probseg=save_probseg, seed=seed, nthreads=nthreads,
                                    used_for_tuning=used_for_tuning, warnings=check.warnings,
                                    mem_mb=mem_mb),
                       name="segment")
    if not output_spaces:
        return seg.out_dir, None
    spaces = workflow.add(template_spaces_task(result_dir=seg.out_dir, template_ids=list(output_spaces),
                                               resolution=resolution, suffix=suffix, nthreads=nthreads),
                          name="spaces")
    return seg.out_dir, spaces.out_dir


def init_single_image_wf(*, source: str, model_dir: str, model_name: str, model_sha256: str,
                         reference: str = "", device: str = "auto", save_probseg: bool = False,
                         seed: int = 0, nthreads: int = 1, used_for_tuning: bool = False,
                         mem_mb: int = 0, output_spaces=(), suffix: str = "T1w", resolution: int = 1):
    """The workflow task of one image (all inputs plain values; paths as absolute strings).

    Parameters
    ----------
    source : str
        Input image (3D NIfTI).
    model_dir, model_name, model_sha256 : str
        Model package folder, its name and weights sha256 (the latter two from its manifest).
    reference : str
        Reference label map on the image's grid for Dice, or ``""``.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    save_probseg : bool
        Also write the 4D posteriors.
    seed, nthreads : int
        torch seed and intra-op threads of the segmentation (and registration) task.
    used_for_tuning : bool
        The subject was a labelled real scan when the model was trained (flagged in outputs).
    mem_mb : int
        Memory budget of the segmentation in MiB (0: automatic).
    output_spaces : sequence of str
        TemplateFlow template ids to map the segmentation to (files must be present locally).
    suffix : str
        Input suffix (``T1w``...), names the transform ``from-<suffix>_to-<id>``.
    resolution : int
        TemplateFlow ``res-`` index of the template files.
    """
    source = str(Path(source).absolute())
    reference = str(Path(reference).absolute()) if reference else ""
    return SingleImageWf(source=source, reference=reference, model_dir=str(Path(model_dir).absolute()),
                         model_name=model_name, model_sha256=model_sha256, device=device,
                         save_probseg=bool(save_probseg), seed=int(seed), nthreads=int(nthreads),
                         used_for_tuning=bool(used_for_tuning),
                         fingerprint=input_fingerprint(source, reference), mem_mb=max(0, int(mem_mb)),
                         output_spaces=[str(t) for t in output_spaces], suffix=str(suffix),
                         resolution=int(resolution))


def node_name(index: int, entities: dict) -> str:
    """A Pydra node name for an image: ``img<index>_<sub>[_<ses>]`` (identifier characters)."""
    parts = [f"img{index}", entities.get("subject", "")]
    if entities.get("session"):
        parts.append(entities["session"])
    return "_".join(p for p in parts if p)


@workflow.define(outputs=["n_images"])
def ParticipantWf(images: list) -> int:
    """One :class:`SingleImageWf` node per entry of ``images`` (dicts of its keyword inputs,
    plus ``entities`` for the node name)."""
    for i, spec in enumerate(images):
        kwargs = {k: v for k, v in spec.items() if k != "entities"}
        workflow.add(SingleImageWf(**kwargs), name=node_name(i, spec.get("entities", {})))
    return len(images)


def init_participant_wf(*, image_tasks: list, entities: list[dict] | None = None):
    """The participant workflow over the given single-image workflow tasks.

    ``image_tasks`` are made by :func:`init_single_image_wf`; ``entities`` (same length) only
    name the nodes. Returns ``(workflow_task, image_tasks)``: the driver looks each image's
    result up by its own task (:func:`l2s_pipelines.workflows.execution.job_dir`).
    """
    from pydra.utils.general import attrs_values

    entities = entities or [{} for _ in image_tasks]
    specs = [dict(attrs_values(t), entities=e) for t, e in zip(image_tasks, entities)]
    return ParticipantWf(images=specs), list(image_tasks)


def boilerplate(*, manifest: dict, suffix: str = "T1w") -> str:
    """The methods text (``__desc__``) filled from a model manifest."""
    from l2s_pipelines import __version__

    pre = manifest.get("preprocessing", {})
    sha = manifest.get("weights", {}).get("sha256", "")
    labels = manifest.get("labels", [])
    return __desc__.format(version=__version__, suffix=suffix, model=manifest.get("name", "?"),
                           voxel_size="x".join(str(v) for v in pre.get("voxel_size_mm", [1, 1, 1])),
                           sha256_short=sha[:12], method=manifest.get("training", {}).get("method", "?"),
                           n_labels=len(labels.get("labels", labels)) if isinstance(labels, dict) else len(labels))
