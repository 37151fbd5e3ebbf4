"""Builders for tests of derivatives, reports and the group level.

They write what the segmentation task would (the per-image result folder of the shared
contract) from small synthetic volumes, without running any network, so these tests do not
depend on the participant engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from l2s_pipelines.labels import LabelTable
from l2s_pipelines.workflows.figures import label_entries, plot_segmentation_mosaics

SHAPE = (30, 34, 28)
VOXEL_MM = 2.0
MANIFEST = {"name": "test-model", "weights": {"sha256": "ab" * 32}, "training": {"tune_subjects": ["sub-01"]}}


def label_dict() -> dict:
    return LabelTable.default().to_dict()


def synthetic_volumes(seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A ``SHAPE`` label map (ellipsoid 'brain' with hemispheres, ventricles, hippocampi) and image."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.8, 0.85, 0.75])[:, None, None, None] / scale) ** 2).sum(0))
    left = grid[0] < 0
    lab = np.zeros(SHAPE, np.int16)
    lab[r < 1.0] = np.where(left, 3, 42)[r < 1.0]          # cortex
    lab[r < 0.8] = np.where(left, 2, 41)[r < 0.8]          # white matter
    vent = (np.abs(grid[0]) > 0.05) & (np.abs(grid[0]) < 0.25) & (np.abs(grid[1]) < 0.3) & (np.abs(grid[2]) < 0.15)
    lab[vent] = np.where(left, 4, 43)[vent]
    hip = (np.abs(np.abs(grid[0]) - 0.45) < 0.1) & (np.abs(grid[1] + 0.2) < 0.15) & (np.abs(grid[2] + 0.3) < 0.1)
    lab[hip] = np.where(left, 17, 53)[hip]
    means = {0: 0.0, 2: 0.9, 41: 0.9, 3: 0.55, 42: 0.55, 4: 0.15, 43: 0.15, 17: 0.5, 53: 0.5}
    img = np.vectorize(means.get)(lab).astype(np.float32) + rng.normal(0, 0.03, SHAPE).astype(np.float32)
    return lab, np.clip(img, 0, None) * 1000


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    return img


def make_bids(root: Path, subjects=("01", "02")) -> Path:
    """Tiny raw BIDS dataset with one T1w per subject; returns its root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0"}))
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    for i, sub in enumerate(subjects):
        anat = root / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        _, img = synthetic_volumes(i, scale=1.0 - 0.05 * i)
        nib.save(_nifti(img, affine), anat / f"sub-{sub}_T1w.nii.gz")
    return root


def make_result_dir(work: Path, source: Path, *, seed: int, with_dice: bool = True,
                    with_probseg: bool = True, used_for_tuning: bool = False,
                    flagged: bool = False, accuracy_warning: str | None = None) -> Path:
    """Write the per-image result folder for ``source`` (labels from :func:`synthetic_volumes`)."""
    work.mkdir(parents=True, exist_ok=True)
    img = nib.load(str(source))
    lab, _ = synthetic_volumes(seed, scale=1.0 - 0.05 * seed)
    nib.save(_nifti(lab, img.affine), work / "dseg.nii.gz")
    entries = label_entries(label_dict())
    voxel = float(np.prod(img.header.get_zooms()[:3]))
    if with_probseg:
        post = np.stack([(lab == e["value"]).astype(np.float32) for e in entries], axis=-1)
        nib.save(_nifti(post, img.affine), work / "probseg.nii.gz")
    rows = ["index\tname\tvolume_hard_mm3\tvolume_soft_mm3"]
    for e in entries:
        hard = float((lab == e["value"]).sum()) * voxel
        rows.append(f"{e['value']}\t{e['name']}\t{hard:.1f}\t{hard * 0.98:.1f}")
    (work / "volumes.tsv").write_text("\n".join(rows) + "\n")
    if with_dice:
        rows = ["index\tname\tdice\tvolume_pred_mm3\tvolume_ref_mm3\tvolume_diff_pct"]
        for e in entries[1:]:
            n = float((lab == e["value"]).sum()) * voxel
            dice = 0.8 + 0.01 * seed if n else float("nan")
            rows.append(f"{e['value']}\t{e['name']}\t{dice}\t{n}\t{n * 1.05}\t{-4.76 if n else 'n/a'}")
        (work / "dice.tsv").write_text("\n".join(rows) + "\n")
    flags = [{"name": "tiv_plausible", "value": 1.2e6, "threshold": [9e5, 2.2e6], "flagged": False,
              "description": "total intracranial volume within 0.9-2.2 L"},
             {"name": "missing_labels", "value": 20, "threshold": 0, "flagged": flagged,
              "description": "labels of the table absent from the segmentation"}]
    (work / "qc.json").write_text(json.dumps({"flags": flags}))
    info = {"source": str(source), "reference": None, "device": "cpu", "runtime_s": 1.5,
            "peak_memory_mb": 512.0, "model_name": MANIFEST["name"],
            "model_sha256": MANIFEST["weights"]["sha256"], "seed": 0,
            "timings_s": {"load": 0.1, "segment": 1.2}, "tiv_mm3": float((lab > 0).sum()) * voxel,
            "tiv_method": "sum of non-background labels", "used_for_tuning": used_for_tuning,
            "warnings": ["voxel size 2.0 mm: resampled to 1 mm"] + ([accuracy_warning] if accuracy_warning else []),
            "labels": label_dict(), "model_accuracy_warning": accuracy_warning}
    (work / "info.json").write_text(json.dumps(info))
    plot_segmentation_mosaics(source, work / "dseg.nii.gz", info["labels"], work / "figures")
    return work
