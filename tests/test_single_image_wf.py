"""The single-image workflow is split into small Pydra tasks (check, inference, measures,
figures, result folder): a change to the figures reruns the figures only, never inference."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from conftest import build_bids, image_path

from l2s_pipelines.io.checkpoint import read_manifest
from l2s_pipelines.workflows.execution import make_submitter
from l2s_pipelines.workflows.participant import ImageOptions, init_single_image_wf


def _jobs(work: Path, marker: str) -> dict[str, int]:
    """Job folders holding ``marker`` -> mtime (ns) of their ``_result.pklz``."""
    return {d.name: (d / "_result.pklz").stat().st_mtime_ns
            for d in sorted(work.iterdir()) if (d / marker).exists() and (d / "_result.pklz").is_file()}


def _run(wf, work: Path) -> Path:
    with make_submitter("debug", work_dir=work) as sub:
        res = sub(wf)
    assert not res.errored
    return Path(res.outputs.out_dir)


def test_figure_change_does_not_rerun_inference(tmp_path, model_dir):
    bids = build_bids(tmp_path / "bids")
    source = image_path(bids, "01", None)
    reference = next((bids / "derivatives").rglob("sub-01_*dseg.nii.gz"))
    work = tmp_path / "work"
    opts = ImageOptions.from_manifest(model_dir=model_dir, manifest=read_manifest(model_dir))
    out = _run(init_single_image_wf(source=str(source), reference=str(reference), options=opts), work)
    assert {p.name for p in out.iterdir()} == {"dseg.nii.gz", "dice.tsv", "figures", "info.json", "qc.json",
                                               "volumes.tsv"}
    inference = _jobs(work, "result/segmentation.json")
    measures = _jobs(work, "result/tiv.json")
    figures = _jobs(work, "figures")
    assert len(inference) == len(measures) == len(figures) == 1
    dseg_mtime = (work / next(iter(inference)) / "result" / "dseg.nii.gz").stat().st_mtime_ns

    # only a figure option changes: the figures are redrawn, inference and measures come from the cache
    changed = dataclasses.replace(opts, figure_slices=3)
    out2 = _run(init_single_image_wf(source=str(source), reference=str(reference), options=changed), work)
    assert out2 != out
    assert _jobs(work, "result/segmentation.json") == inference  # same job folder, never rewritten
    assert (work / next(iter(inference)) / "result" / "dseg.nii.gz").stat().st_mtime_ns == dseg_mtime
    assert _jobs(work, "result/tiv.json") == measures
    assert len(_jobs(work, "figures")) == 2
    assert (out2 / "dseg.nii.gz").read_bytes() == (out / "dseg.nii.gz").read_bytes()
    info, info2 = (json.loads((o / "info.json").read_text()) for o in (out, out2))
    assert info2["timings_s"] == info["timings_s"] and info2["tiv_mm3"] == info["tiv_mm3"]

    # a model-relevant option (the seed) reruns inference
    _run(init_single_image_wf(source=str(source), reference=str(reference),
                              options=dataclasses.replace(opts, seed=1)), work)
    assert len(_jobs(work, "result/segmentation.json")) == 2


def test_check_reads_no_voxels(tmp_path, model_dir, monkeypatch):
    """CheckImage checks the header and declared size only: the image's voxels are read once,
    by the inference task."""
    from nibabel.arrayproxy import ArrayProxy

    from l2s_pipelines.workflows.tasks import CheckImage

    source = image_path(build_bids(tmp_path / "bids"), "01", None)

    def refuse(*args, **kwargs):
        raise AssertionError("CheckImage read voxel data")

    monkeypatch.setattr(ArrayProxy, "__array__", refuse)
    monkeypatch.setattr(ArrayProxy, "__getitem__", refuse)
    task = CheckImage(source=str(source), reference="", model_dir=str(model_dir), fingerprint="-")
    with make_submitter("debug", work_dir=tmp_path / "work") as sub:
        res = sub(task)
    assert not res.errored and res.outputs.source == str(source) and res.outputs.warnings == []
