"""Reproducibility: two CPU runs of the participant level with the same ``--random-seed`` (each
with its own work folder, so nothing is reused from Pydra's cache) give bit-identical
segmentations and posteriors, and the provenance (versions, model sha256, container) reaches
``dataset_description.json`` and the sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import read_summary, run_cli

#: Sidecar fields that legitimately differ between runs (measured, not computed).
TIMING_FIELDS = ("RuntimeSeconds", "PeakMemoryMB", "TimingsSeconds")
CONTAINER = {"Type": "apptainer", "URI": "file:///images/l2s-pipelines.sif", "Tag": "sha256:" + "0f" * 32}


def _run(bids_dir, model_dir, root: Path, monkeypatch) -> Path:
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/l2s-pipelines.sif")
    monkeypatch.setenv("L2S_CONTAINER_DIGEST", CONTAINER["Tag"])
    out = root / "out"
    proc = run_cli(bids_dir, out, "participant", "--model", model_dir, "-w", root / "work",
                   "--participant-label", "01", "--nprocs", "2", "--omp-nthreads", "2",
                   "--random-seed", "7", "--save-probseg", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["status"] for r in read_summary(out)] == ["ok"]
    return out / "sub-01" / "anat"


def _voxels(path: Path) -> tuple[bytes, str, tuple]:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)  # stored values (decompressed), without scaling
    return data.tobytes(), str(data.dtype), img.shape


def test_same_seed_gives_bit_identical_outputs_and_provenance(bids_dir, model_dir, tmp_path, monkeypatch):
    import torch

    from l2s_pipelines import __version__
    from l2s_pipelines.bids_app.provenance import code_url
    from l2s_pipelines.io.checkpoint import read_manifest

    first = _run(bids_dir, model_dir, tmp_path / "a", monkeypatch)
    second = _run(bids_dir, model_dir, tmp_path / "b", monkeypatch)
    for name in ("sub-01_dseg.nii.gz", "sub-01_probseg.nii.gz"):
        assert _voxels(first / name) == _voxels(second / name), name
    for name in ("sub-01_dseg.tsv", "sub-01_desc-volumes_morph.tsv", "sub-01_desc-qc_stats.tsv"):
        assert (first / name).read_text() == (second / name).read_text(), name
    sides = [json.loads((d / "sub-01_dseg.json").read_text()) for d in (first, second)]
    assert [{k: v for k, v in s.items() if k not in TIMING_FIELDS} for s in sides][0] == \
        {k: v for k, v in sides[1].items() if k not in TIMING_FIELDS}

    # provenance in the sidecar and in dataset_description.json
    sha = read_manifest(model_dir)["weights"]["sha256"]
    side = sides[0]
    assert side["RandomSeed"] == 7 and side["Device"] == "cpu" and side["Model"]["SHA256"] == sha
    assert side["GeneratedBy"] == [{"Name": "l2s-pipelines", "Version": __version__, "CodeURL": code_url(),
                                    "Container": CONTAINER}]
    assert side["L2SVersions"]["torch"] == torch.__version__
    assert side["L2SVersions"]["l2s_pipelines"] == __version__
    desc = json.loads((first.parents[1] / "dataset_description.json").read_text())
    ours = desc["GeneratedBy"][0]
    assert ours["Name"] == "l2s-pipelines" and ours["Version"] == __version__
    assert ours["Container"] == CONTAINER and sha in ours["Description"]
    assert desc["L2SVersions"]["torch"] == torch.__version__
    assert {"Name": read_manifest(model_dir)["name"], "SHA256": sha} in desc["L2SModels"]
