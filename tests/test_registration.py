"""Label-driven affine registration and ITK transform files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2s_pipelines.errors import InputError
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.registration import (read_itk_affine, register_affine, resample_labels,
                                        tissue_maps_from_labels, write_itk_affine)
from template_fixtures import (TEST_TEMPLATE, brain_points, build_templateflow_home, known_affine,
                               subject_dseg)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return build_templateflow_home(tmp_path_factory.mktemp("tf"))


def _rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    u, _, vt = np.linalg.svd((np.linalg.inv(a) @ b)[:3, :3])
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def test_recovers_known_affine(home):
    import nibabel as nib

    torch.set_num_threads(1)
    truth = known_affine()
    dseg, affine = subject_dseg(home, truth)
    table = LabelTable.default()
    stem = home / f"tpl-{TEST_TEMPLATE}" / f"tpl-{TEST_TEMPLATE}_res-02"
    imgs = [nib.load(f"{stem}_label-{t}_probseg.nii.gz") for t in ("CSF", "GM", "WM")]
    tpl = np.stack([i.get_fdata(dtype=np.float32) for i in imgs])
    reg = register_affine(tissue_maps_from_labels(dseg, table), affine, tpl, imgs[0].affine)
    pts = brain_points(home)
    err_mm = np.linalg.norm(pts @ (reg.matrix - truth).T, axis=1)
    assert err_mm.max() < 1.0, err_mm.max()
    assert _rotation_error_deg(reg.matrix, truth) < 1.0
    assert reg.scale_determinant == pytest.approx(np.linalg.det(truth[:3, :3]), rel=0.01)
    # the warped labels land on the template's tissue
    warped = resample_labels(dseg, affine, reg.matrix, imgs[0].shape, imgs[0].affine)
    wm = tissue_maps_from_labels(warped, table)[2] > 0.5
    ref = tpl[2] > 0.5
    assert 2 * (wm & ref).sum() / (wm.sum() + ref.sum()) > 0.85


def test_itk_file_uses_lps_and_round_trips(tmp_path):
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -2.0, 3.0]  # RAS mm
    path = write_itk_affine(tmp_path / "xfm.txt", shift)
    lines = path.read_text().splitlines()
    assert lines[0] == "#Insight Transform File V1.0"
    assert lines[2] == "Transform: AffineTransform_double_3_3"
    params = [float(v) for v in lines[3].split(":")[1].split()]
    assert params[:9] == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert params[9:] == [-5.0, 2.0, 3.0]  # LPS flips x and y
    matrix = known_affine()
    np.testing.assert_allclose(read_itk_affine(write_itk_affine(tmp_path / "b.txt", matrix)), matrix,
                               atol=1e-12)


def test_itk_reader_applies_centre(tmp_path):
    (tmp_path / "c.txt").write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: MatrixOffsetTransformBase_double_3_3\n"
        "Parameters: 2 0 0 0 2 0 0 0 2 0 0 0\nFixedParameters: 1 1 1\n")
    m = read_itk_affine(tmp_path / "c.txt")
    # LPS: y = 2 (x - c) + c; the point c = (1, 1, 1) LPS = (-1, -1, 1) RAS is fixed
    np.testing.assert_allclose(m @ [-1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, 1.0])


def test_bad_inputs(tmp_path):
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(InputError, match="x.txt"):
        read_itk_affine(tmp_path / "x.txt")
    with pytest.raises(InputError, match="empty"):
        register_affine(np.zeros((3, 8, 8, 8)), np.eye(4), np.ones((3, 8, 8, 8)), np.eye(4))
