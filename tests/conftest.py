"""Shared fixtures: a tiny generated BIDS dataset, a tiny (untrained, tests only) model package,
and a helper that runs ``l2s-bids`` in a subprocess (its own process tree, so the ``cf`` pool
never forks a pytest process in which torch already ran)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("NO_ET", "1")
os.environ.setdefault("NIPYPE_NO_ET", "1")

SHAPE = (40, 40, 40)
VOXEL_MM = 2.0
#: Two subjects, the second with two sessions.
LAYOUT = {"01": [None], "02": ["1", "2"]}


def blob_volumes(seed: int, shape=SHAPE, zooms=(VOXEL_MM,) * 3) -> tuple[np.ndarray, np.ndarray]:
    """A head-like blob: ``(image float32, labels int16)`` of ``shape``; labels are SynthSeg
    values (2/41 white matter, 3/42 cortex, 4/43 ventricles, 24 CSF) on an ellipsoid."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * z for n, z in zip(shape, zooms)],
                                indexing="ij"))
    radii = np.array([30.0, 34.0, 28.0]) * (1 + 0.05 * rng.standard_normal(3))
    r = np.sqrt(sum((grid[i] / radii[i]) ** 2 for i in range(3)))
    left = grid[0] < 0
    lab = np.zeros(shape, np.int16)
    lab[r < 1.0] = 24
    lab[r < 0.9] = np.where(left, 3, 42)[r < 0.9]
    lab[r < 0.75] = np.where(left, 2, 41)[r < 0.75]
    vent = (np.abs(grid[0]) > 3) & (np.abs(grid[0]) < 9) & (r < 0.35)
    lab[vent] = np.where(left, 4, 43)[vent]
    means = {0: 0.0, 24: 30.0, 3: 60.0, 42: 60.0, 2: 100.0, 41: 100.0, 4: 25.0, 43: 25.0}
    img = np.vectorize(means.get)(lab).astype(np.float32)
    img += rng.normal(0, 3.0, shape).astype(np.float32)
    return np.clip(img, 0, None), lab


def affine_for(zooms=(VOXEL_MM,) * 3, shape=SHAPE) -> np.ndarray:
    aff = np.diag([*zooms, 1.0])
    aff[:3, 3] = -np.asarray(zooms) * np.asarray(shape) / 2
    return aff


def save_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine_for() if affine is None else affine), path)
    return path


def image_path(root: Path, sub: str, ses: str | None, suffix: str = "T1w") -> Path:
    name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_{suffix}.nii.gz"
    return root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat" / name


def build_bids(root: Path, layout=None, *, reference: bool = True) -> Path:
    """Write a tiny BIDS dataset under ``root``: one T1w per subject/session (``LAYOUT``) and,
    with ``reference``, ``derivatives/reference`` holding each image's label map as dseg."""
    layout = LAYOUT if layout is None else layout
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "tiny test", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in layout))
    ref_root = root / "derivatives" / "reference"
    if reference:
        ref_root.mkdir(parents=True, exist_ok=True)
        (ref_root / "dataset_description.json").write_text(json.dumps(
            {"Name": "reference", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
             "GeneratedBy": [{"Name": "synthetic"}]}))
    seed = 0
    for sub, sessions in layout.items():
        for ses in sessions:
            img, lab = blob_volumes(seed)
            seed += 1
            path = save_nifti(image_path(root, sub, ses), img)
            path.with_name(path.name.replace(".nii.gz", ".json")).write_text("{}")
            if reference:
                rel = image_path(ref_root, sub, ses)
                save_nifti(rel.with_name(rel.name.replace("_T1w", "_desc-reference_dseg")), lab)
    return root


@pytest.fixture()
def bids_dir(tmp_path) -> Path:
    """A fresh tiny BIDS dataset (2 subjects, 3 T1w images, reference labels)."""
    return build_bids(tmp_path / "bids")


def make_model_package(directory: Path, *, widths=(4, 8), name: str = "tiny-untrained-test") -> Path:
    """An untrained 2D UNet package (tests only: never shipped) at 2 mm, 33 SynthSeg labels."""
    import torch

    from l2s_pipelines.io.checkpoint import save_model_package
    from l2s_pipelines.labels import LabelTable
    from l2s_pipelines.nn.unet import UNet, UNetConfig

    torch.manual_seed(0)
    table = LabelTable.default()
    cfg = UNetConfig(ndim=2, out_channels=len(table), widths=tuple(widths), convs_per_level=1)
    manifest = {"name": name, "description": "untrained network for tests only",
                "architecture": cfg.to_dict(), "labels": table.to_dict()["labels"],
                "preprocessing": {"orientation": "RAS", "voxel_size_mm": [VOXEL_MM] * 3,
                                  "intensity": "percentile", "percentiles": [1, 99]},
                "inference": {"mode": "2d", "planes": ["axial"]},
                "training": {"method": "none", "steps": 0, "seed": 0, "tune_subjects": ["sub-01"]}}
    return save_model_package(directory, UNet(cfg), manifest)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The tiny test model package (session-wide, read-only by convention)."""
    return make_model_package(tmp_path_factory.mktemp("model") / "tiny")


def run_cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``l2s-bids`` with ``args`` in a subprocess; returns the completed process."""
    env = dict(os.environ, NO_ET="1", NIPYPE_NO_ET="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "l2s_pipelines.bids_app.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def read_summary(output_dir: Path) -> list[dict]:
    """Rows of ``OUTPUT_DIR/logs/run_summary.tsv`` as dicts."""
    lines = (Path(output_dir) / "logs" / "run_summary.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"))) for line in lines[1:]]


def files_under(path: Path) -> set[str]:
    """Relative paths of all files under ``path`` (empty set when absent)."""
    path = Path(path)
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} if path.exists() else set()
