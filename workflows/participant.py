"""Participant-level Pydra workflows, built by keyword-only factory functions.

``init_single_image_wf`` checks one image (and its reference), segments it, then measures and
plots the segmentation and writes its result folder (small tasks, see
:mod:`l2s_pipelines.workflows.tasks` and :mod:`l2s_pipelines.workflows.result_tasks`: a change to
the figures reruns the figures only) and, with ``output_spaces``, maps that result to TemplateFlow
templates (:mod:`l2s_pipelines.workflows.templates`). ``init_participant_wf`` holds one such
sub-workflow per image, as independent nodes: the ``cf`` worker runs them in parallel and one
failing image does not stop the others. Each image's workflow carries its source path as a
string, so byte-identical files of two subjects never collapse into one cached job. The options
shared by all images travel as one :class:`ImageOptions`.

Example (building runs anywhere; running needs a model package and a 3D NIfTI)
-------
>>> from l2s_pipelines.workflows.execution import make_submitter
>>> opts = ImageOptions.from_manifest(model_dir="model", manifest={"name": "m", "weights": {"sha256": "0" * 64}})
>>> wf = init_single_image_wf(source="sub-01_T1w.nii.gz", options=opts)
>>> with make_submitter("debug", work_dir="work") as sub:  # doctest: +SKIP
...     res = sub(wf)
>>> sorted(p.name for p in res.outputs.out_dir.fspath.iterdir())  # doctest: +SKIP
['dseg.nii.gz', 'figures', 'info.json', 'qc.json', 'volumes.tsv']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fileformats.generic import Directory
from pydra.compose import python, workflow

from l2s_pipelines.workflows.result_tasks import MeasureSegmentation, PlotSegmentation, WriteResult
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


@dataclass(frozen=True)
class ImageOptions:
    """Options shared by every image of a participant run: plain values that Pydra hashes
    (a changed option reruns only the tasks that take it).

    Parameters
    ----------
    model_dir, model_name, model_sha256 : str
        Model package folder (absolute), its name and weights sha256 (from its manifest).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    save_probseg : bool
        Also write the 4D posteriors.
    seed, nthreads : int
        torch seed and intra-op threads of the segmentation (and registration) task.
    mem_mb : int
        Memory budget of one image's segmentation in MiB (0: automatic).
    output_spaces : tuple of str
        TemplateFlow template ids to map the segmentation to (files must be present locally).
    suffix : str
        Input suffix (``T1w``...), names the transform ``from-<suffix>_to-<id>``.
    resolution : int
        TemplateFlow ``res-`` index of the template files.
    figure_slices : int or None
        Slices per plane of the report figures (None: the figures' default).
    """

    model_dir: str
    model_name: str = ""
    model_sha256: str = ""
    device: str = "auto"
    save_probseg: bool = False
    seed: int = 0
    nthreads: int = 1
    mem_mb: int = 0
    output_spaces: tuple = ()
    suffix: str = "T1w"
    resolution: int = 1
    figure_slices: int | None = None

    def __post_init__(self):
        norm = {"model_dir": str(Path(self.model_dir).absolute()), "save_probseg": bool(self.save_probseg),
                "seed": int(self.seed), "nthreads": max(1, int(self.nthreads)), "mem_mb": max(0, int(self.mem_mb)),
                "output_spaces": tuple(str(t) for t in self.output_spaces), "suffix": str(self.suffix),
                "resolution": int(self.resolution)}
        for name, value in norm.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_manifest(cls, *, model_dir, manifest: dict, **options) -> "ImageOptions":
        """Options for the model package ``model_dir`` whose manifest is ``manifest`` (name and
        weights sha256 taken from it); ``options``: the other fields.

        >>> opts = ImageOptions.from_manifest(model_dir="/models/m", nthreads=2,
        ...                                   manifest={"name": "m", "weights": {"sha256": "ab12"}})
        >>> opts.model_name, opts.model_sha256, opts.nthreads, opts.device
        ('m', 'ab12', 2, 'auto')
        """
        return cls(model_dir=str(model_dir), model_name=manifest.get("name", ""),
                   model_sha256=manifest["weights"]["sha256"], **options)


@workflow.define(outputs=["out_dir", "spaces_dir"])
def SingleImageWf(source: str, reference: str, options: ImageOptions, used_for_tuning: bool,
                  fingerprint: str) -> tuple[Directory, Directory | None]:
    """Check and segment (side by side: the segmentation checks the image's declared size
    itself, so a check never delays it), measure, plot, write the result folder, then (with
    ``options.output_spaces``) map to the templates. A failed check still fails the image:
    the result folder waits for it.

    Outputs: the result folder, and the ``spaces/`` folder (one ``<template_id>/`` each, see
    :func:`l2s_pipelines.workflows.templates.template_spaces_task`) or None without spaces.
    """
    o = options
    check = workflow.add(CheckImage(source=source, reference=reference, model_dir=o.model_dir,
                                    fingerprint=fingerprint, mem_mb=o.mem_mb, nthreads=o.nthreads), name="check")
    seg = workflow.add(SegmentImage(source=source, model_dir=o.model_dir, model_sha256=o.model_sha256,
                                    device=o.device, save_probseg=o.save_probseg, seed=o.seed, nthreads=o.nthreads,
                                    fingerprint=fingerprint.split("|", 1)[0],  # the image's part only
                                    mem_mb=o.mem_mb), name="segment")
    measures = workflow.add(MeasureSegmentation(source=source, seg_dir=seg.seg_dir, reference=check.reference,
                                                fingerprint=fingerprint), name="measures")
    figures = workflow.add(PlotSegmentation(source=source, seg_dir=seg.seg_dir, reference=check.reference,
                                            n_slices=o.figure_slices, fingerprint=fingerprint), name="figures")
    result = workflow.add(WriteResult(
        source=source, reference=check.reference, seg_dir=seg.seg_dir, measures_dir=measures.out_dir,
        figures_dir=figures.out_dir, model_name=o.model_name, model_sha256=o.model_sha256, seed=o.seed,
        used_for_tuning=used_for_tuning, warnings=check.warnings,
        measures_s=measures.runtime_s, figures_s=figures.runtime_s, measures_peak_mb=measures.peak_memory_mb,
        figures_peak_mb=figures.peak_memory_mb), name="result")
    if not o.output_spaces:
        return result.out_dir, None
    spaces = workflow.add(template_spaces_task(result_dir=result.out_dir, template_ids=list(o.output_spaces),
                                               resolution=o.resolution, suffix=o.suffix, nthreads=o.nthreads),
                          name="spaces")
    return result.out_dir, spaces.out_dir


def init_single_image_wf(*, source: str, options: ImageOptions, reference: str = "",
                         used_for_tuning: bool = False):
    """The workflow task of one image (all inputs plain values; paths as absolute strings).

    Parameters
    ----------
    source : str
        Input image (3D NIfTI).
    options : ImageOptions
        Model, device, threads, memory, outputs: shared by all images of a run.
    reference : str
        Reference label map on the image's grid for Dice, or ``""``.
    used_for_tuning : bool
        The subject was a labelled real scan when the model was trained (flagged in outputs).

    Example
    -------
    >>> opts = ImageOptions(model_dir="/models/m", model_name="m", model_sha256="0" * 64)
    >>> wf = init_single_image_wf(source="/data/sub-01_T1w.nii.gz", options=opts)
    >>> wf.source, wf.options.nthreads, wf.fingerprint
    ('/data/sub-01_T1w.nii.gz', 1, '-|-')
    """
    source = str(Path(source).absolute())
    reference = str(Path(reference).absolute()) if reference else ""
    return SingleImageWf(source=source, reference=reference, options=options,
                         used_for_tuning=bool(used_for_tuning), fingerprint=input_fingerprint(source, reference))


def node_name(index: int, entities: dict) -> str:
    """A Pydra node name for an image: ``img<index>_<sub>[_<ses>]`` (identifier characters)."""
    parts = [f"img{index}", entities.get("subject", "")]
    if entities.get("session"):
        parts.append(entities["session"])
    return "_".join(p for p in parts if p)


@python.define(outputs=["out_dir", "spaces_dir"])
def ImageJob(image: dict, cache_root: str) -> tuple[str, str]:
    """One image's :class:`SingleImageWf` (keyword inputs ``image``) run to the end inside this
    one job, by Pydra's ``debug`` worker, with the same cache folder ``cache_root``: its tasks
    keep their own cache entries (a figure change still reruns the figures only, and the
    driver finds the result by the image's workflow task), but a cluster scheduler sees one
    job per image instead of one per task. Returns the result folder and the ``spaces/``
    folder (``""`` without template spaces); raises the image's error."""
    from pydra.engine.submitter import Submitter

    with Submitter(worker="debug", cache_root=cache_root) as sub:
        res = sub(SingleImageWf(**image), raise_errors=True)
    spaces = res.outputs.spaces_dir
    return str(res.outputs.out_dir), str(spaces) if spaces is not None else ""


#: ``--cluster-jobs`` choices: ``image`` (one scheduler job per image, :class:`ImageJob`) or
#: ``task`` (one job per Pydra task: check, segment, measures, figures, result).
JOB_GRANULARITIES = ("image", "task")


@workflow.define(outputs=["n_images"])
def ParticipantWf(images: list, job_per_image: bool = False, cache_root: str = "") -> int:
    """One :class:`SingleImageWf` node per entry of ``images`` (dicts of its keyword inputs,
    plus ``entities`` for the node name); with ``job_per_image``, one :class:`ImageJob` node
    each instead, running that workflow inside one job with the cache ``cache_root``."""
    for i, spec in enumerate(images):
        kwargs = {k: v for k, v in spec.items() if k != "entities"}
        name = node_name(i, spec.get("entities", {}))
        if job_per_image:
            workflow.add(ImageJob(image=kwargs, cache_root=cache_root), name=name)
        else:
            workflow.add(SingleImageWf(**kwargs), name=name)
    return len(images)


def init_participant_wf(*, image_tasks: list, entities: list[dict] | None = None,
                        job_per_image: bool = False, cache_root=""):
    """The participant workflow over the given single-image workflow tasks.

    ``image_tasks`` are made by :func:`init_single_image_wf`; ``entities`` (same length) only
    name the nodes. ``job_per_image`` (cluster workers): each image runs as one job
    (:class:`ImageJob`, caching in ``cache_root``, the submitter's work folder). Returns
    ``(workflow_task, image_tasks)``: the driver looks each image's result up by its own task
    (:func:`l2s_pipelines.workflows.execution.job_dir`), in either mode.
    """
    from pydra.utils.general import attrs_values

    if job_per_image and not cache_root:
        raise ValueError("job_per_image needs the cache_root of the submitter")
    entities = entities or [{} for _ in image_tasks]
    specs = [dict(attrs_values(t), entities=e) for t, e in zip(image_tasks, entities)]
    return (ParticipantWf(images=specs, job_per_image=bool(job_per_image), cache_root=str(cache_root)),
            list(image_tasks))


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
