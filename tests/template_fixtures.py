"""Test-only TemplateFlow home and synthetic subjects for template-space tests.

The home holds a template called ``testICBM2009aSym`` built from the ICBM 2009a *symmetric*
maps that nilearn ships (GM, WM, brain-extracted T1w), pooled to 2 mm, with CSF = brain minus
GM and WM. It is test data only and is never presented as MNI152NLin2009cAsym.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

TEST_TEMPLATE = "testICBM2009aSym"
_NILEARN_DATA = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def _nilearn_map(kind: str) -> nib.Nifti1Image:
    import nilearn.datasets

    return nib.load(Path(nilearn.datasets.__file__).parent / "data" / _NILEARN_DATA.format(kind))


def _pool2(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2x2 mean pooling (crop to even shape); affine of the 2 mm voxel centres."""
    sx, sy, sz = (s - s % 2 for s in data.shape)
    d = data[:sx, :sy, :sz].reshape(sx // 2, 2, sy // 2, 2, sz // 2, 2).mean(axis=(1, 3, 5))
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    scale[:3, 3] = 0.5
    return d.astype(np.float32), affine @ scale


def build_templateflow_home(home: Path) -> Path:
    """Write ``tpl-testICBM2009aSym`` (res-02: T1w, brain mask, CSF/GM/WM probseg) under ``home``."""
    tpl = home / f"tpl-{TEST_TEMPLATE}"
    tpl.mkdir(parents=True, exist_ok=True)
    gm_img = _nilearn_map("gm")
    gm, affine = _pool2(gm_img.get_fdata(dtype=np.float32) / 255.0, gm_img.affine)
    wm, _ = _pool2(_nilearn_map("wm").get_fdata(dtype=np.float32) / 255.0, gm_img.affine)
    t1, _ = _pool2(_nilearn_map("t1").get_fdata(dtype=np.float32), gm_img.affine)
    mask = (t1 > 0.05 * t1.max()).astype(np.uint8)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    stem = f"tpl-{TEST_TEMPLATE}_res-02"
    files = {"T1w": t1, "desc-brain_mask": mask, "label-CSF_probseg": csf, "label-GM_probseg": gm,
             "label-WM_probseg": wm}
    for name, data in files.items():
        nib.save(nib.Nifti1Image(data, affine), tpl / f"{stem}_{name}.nii.gz")
    (tpl / "template_description.json").write_text(json.dumps({"Name": "test-only ICBM 2009a sym"}))
    return home


def rotation(axis: int, degrees: float) -> np.ndarray:
    """4x4 rotation about world axis ``axis`` (0 x, 1 y, 2 z)."""
    a = np.deg2rad(degrees)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i] = r[j, j] = np.cos(a)
    r[i, j], r[j, i] = -np.sin(a), np.sin(a)
    return r


def known_affine() -> np.ndarray:
    """Template -> subject world transform used by the tests (rotations, anisotropic scale,
    translation in mm)."""
    t = rotation(2, 8.0) @ rotation(0, -5.0) @ np.diag([1.08, 0.95, 1.0, 1.0])
    t[:3, 3] = [6.0, -4.0, 3.0]
    return t


def subject_dseg(home: Path, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A subject label map (SynthSeg values: 24 CSF, 3 cortex, 2 white matter) made by moving
    the test template's tissue maps with ``matrix`` (template -> subject world) onto a 2 mm
    subject grid of 100^3 voxels. Returns (int16 labels, affine)."""
    import torch

    from l2s_pipelines.registration import sample_at_world

    stem = home / f"tpl-{TEST_TEMPLATE}" / f"tpl-{TEST_TEMPLATE}_res-02"
    imgs = [nib.load(f"{stem}_label-{t}_probseg.nii.gz") for t in ("CSF", "GM", "WM")]
    maps = torch.as_tensor(np.stack([i.get_fdata(dtype=np.float32) for i in imgs]))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -100.0
    idx = torch.stack(torch.meshgrid(*[torch.arange(100, dtype=torch.float64)] * 3, indexing="ij"), -1)
    world = idx @ torch.as_tensor(affine[:3, :3]).T + torch.as_tensor(affine[:3, 3])
    inv = torch.as_tensor(np.linalg.inv(matrix))
    probs = sample_at_world(maps, imgs[0].affine, world @ inv[:3, :3].T + inv[:3, 3]).numpy()
    probs = np.concatenate([np.clip(1 - probs.sum(0, keepdims=True), 0, None), probs])
    values = np.array([0, 24, 3, 2], dtype=np.int16)
    return values[probs.argmax(0)], affine


def brain_points(home: Path) -> np.ndarray:
    """World coordinates (N, 4 homogeneous) of the test template's brain-mask voxels."""
    img = nib.load(home / f"tpl-{TEST_TEMPLATE}" / f"tpl-{TEST_TEMPLATE}_res-02_desc-brain_mask.nii.gz")
    ijk = np.argwhere(np.asarray(img.dataobj) > 0)
    return np.c_[ijk, np.ones(len(ijk))] @ img.affine.T
