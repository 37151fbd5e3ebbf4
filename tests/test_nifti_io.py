"""NIfTI loading (RAS, checks), resampling, intensity normalisation and datasets."""

import nibabel as nib
import numpy as np
import pytest
import torch

from l2s_pipelines.errors import InputError
from l2s_pipelines.io.nifti import (LabelMapDataset, RealPairDataset, load_image, load_label_map,
                                    slices_2d)
from l2s_pipelines.io.preprocess import normalise_intensity, resample_to_voxel_size
from l2s_pipelines.labels import IGNORE_INDEX, LabelTable

LIA = np.array([[-1.0, 0, 0, 10], [0, 0, 1, -20], [0, -1, 0, 30], [0, 0, 0, 1]])


def save(path, data, affine=None, dtype=None):
    data = np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def labels_volume(shape=(12, 14, 10)):
    d = np.zeros(shape, np.int32)
    d[2:6, 3:10, 2:8] = 2
    d[6:10, 3:10, 2:8] = 41
    d[4:8, 5:8, 4:6] = 17
    return d


def test_label_map_is_reoriented_to_ras(tmp_path):
    d = labels_volume()
    lab, aff = load_label_map(save(tmp_path / "lia.nii.gz", d, LIA))
    assert lab.dtype == torch.long and lab.shape[0] == 1
    assert np.all(np.diag(aff)[:3] > 0)  # RAS: positive diagonal
    # the world position of every labelled voxel is preserved
    src = nib.affines.apply_affine(LIA, np.argwhere(d == 17))
    dst = nib.affines.apply_affine(aff, np.argwhere(lab[0].numpy() == 17))
    assert np.allclose(np.sort(src, 0), np.sort(dst, 0))


def test_float_stored_integer_labels_are_cast(tmp_path):
    lab, _ = load_label_map(save(tmp_path / "f.nii.gz", labels_volume(), dtype=np.float32))
    assert lab.dtype == torch.long and set(lab.unique().tolist()) == {0, 2, 17, 41}


@pytest.mark.parametrize("case, data, message", [
    ("fraction", labels_volume().astype(np.float32) + 0.3, "non-integer"),
    ("empty", np.zeros((8, 8, 8), np.int16), "empty"),
    ("four_d", np.ones((6, 6, 6, 2), np.int16), "3D"),
    ("two_d", np.ones((6, 6), np.int16), "3D"),
])
def test_bad_label_maps_raise_naming_the_file(tmp_path, case, data, message):
    path = save(tmp_path / f"bad_{case}.nii.gz", data)
    with pytest.raises(InputError, match=message) as err:
        load_label_map(path)
    assert f"bad_{case}.nii.gz" in str(err.value)


def test_unreadable_files_raise(tmp_path):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b this is not gzip data")
    with pytest.raises(InputError, match="corrupt.nii.gz"):
        load_label_map(corrupt)
    good = save(tmp_path / "trunc.nii.gz", labels_volume())
    (tmp_path / "trunc2.nii.gz").write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="trunc2.nii.gz"):
        load_label_map(tmp_path / "trunc2.nii.gz")
    with pytest.raises(InputError, match="missing.nii.gz"):
        load_image(tmp_path / "missing.nii.gz")


def test_load_image_checks(tmp_path):
    with pytest.raises(InputError, match="const.nii.gz.*constant"):
        load_image(save(tmp_path / "const.nii.gz", np.ones((5, 5, 5), np.float32)))
    nan = np.random.default_rng(0).random((5, 5, 5)).astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="nan.nii.gz"):
        load_image(save(tmp_path / "nan.nii.gz", nan))
    img, aff = load_image(save(tmp_path / "ok.nii.gz", np.arange(125, dtype=np.int16).reshape(5, 5, 5)))
    assert img.dtype == torch.float32 and img.shape == (1, 5, 5, 5)


def test_resampling_to_voxel_size(tmp_path):
    d = labels_volume((20, 20, 20))
    out, aff = resample_to_voxel_size(d, np.eye(4), (2.0, 2.0, 2.0), order=0)
    assert out.shape == (10, 10, 10) and np.allclose(np.diag(aff)[:3], 2)
    assert set(np.unique(out)) <= set(np.unique(d))
    # voxel 0 of the new grid is centred between input voxels 0 and 1 (same field of view)
    assert np.allclose(aff[:3, 3], 0.5)
    lab, laff = load_label_map(save(tmp_path / "l.nii.gz", d), voxel_size=2.0)
    assert lab.shape == (1, 10, 10, 10) and np.allclose(laff, aff)


def test_normalise_intensity_batched_and_numpy():
    x = torch.stack([torch.linspace(0, 1, 1001), torch.linspace(-5, 15, 1001)]).reshape(2, 1, 1001)
    y = normalise_intensity(x, batch_dims=1)
    assert torch.allclose(y[0, 0, 10], torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(y[1, 0, 990], torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(y[0], y[1], atol=1e-5)
    assert y.min() == 0 and y.max() == 1
    a = np.random.default_rng(1).normal(size=(9, 8, 7)).astype(np.float32)
    lo, hi = np.percentile(a, [1, 99])
    assert np.allclose(normalise_intensity(a), np.clip((a - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert not normalise_intensity(np.full((4, 4), 3.0)).any()


def test_slices_2d_planes():
    v = torch.zeros(1, 4, 5, 6)
    assert slices_2d(v, "sagittal").shape == (4, 1, 5, 6)
    assert slices_2d(v, "coronal").shape == (5, 1, 4, 6)
    assert slices_2d(v, "axial").shape == (6, 1, 4, 5)
    with pytest.raises(ValueError):
        slices_2d(v, "oblique")


def test_label_map_dataset_2d_skips_empty_slices_and_3d_patches(tmp_path):
    d = labels_volume()
    d[0, 0, 0] = d[-1, -1, -1] = 4  # single voxels: axial slices 0 and 9 are near-empty
    paths = [save(tmp_path / f"m{i}.nii.gz", d) for i in range(2)]
    ds = LabelMapDataset(paths, ndim=2, plane="axial")
    assert ds.volumes[0].dtype == torch.int16 and ds.label_values() == [0, 2, 4, 17, 41]
    b = ds.sample_batch(32, torch.Generator().manual_seed(0), (16, 16))
    assert b.shape == (32, 1, 16, 16) and b.dtype == torch.long
    assert ((b.reshape(32, -1) > 0).sum(1) > 10).all()
    ds3 = LabelMapDataset(paths, ndim=3)
    b3 = ds3.sample_batch(2, torch.Generator().manual_seed(0), (6, 6, 6))
    assert b3.shape == (2, 1, 6, 6, 6)
    assert set(b3.unique().tolist()) <= {0, 2, 4, 17, 41}


def test_real_pair_dataset(tmp_path):
    table = LabelTable.default()
    d = labels_volume()
    d[0, 0, 0] = 255
    rng = np.random.default_rng(0)
    img = save(tmp_path / "t1.nii.gz", (d * 3 + rng.random(d.shape)).astype(np.float32), LIA)
    ref = save(tmp_path / "ref.nii.gz", d, LIA)
    ds = RealPairDataset([img], [ref], table, ndim=2, plane="coronal")
    (vol,) = ds.all_volumes()
    assert vol["image"].shape == (1, 12, 10, 14) and vol["target"].shape == (12, 10, 14)
    assert 0 <= vol["image"].min() and vol["image"].max() <= 1
    assert (vol["target"] == IGNORE_INDEX).sum() == 1
    assert set(vol["target"].unique().tolist()) == {IGNORE_INDEX, 0, table.index_of(2),
                                                    table.index_of(17), table.index_of(41)}
    x, y = ds.sample_batch(3, torch.Generator().manual_seed(1), (8, 8))
    assert x.shape == (3, 1, 8, 8) and y.shape == (3, 8, 8) and y.dtype == torch.long
    bad = d.copy()
    bad[1, 1, 1] = 502
    with pytest.raises(InputError, match=r"badref.nii.gz.*\[502\]"):
        RealPairDataset([img], [save(tmp_path / "badref.nii.gz", bad, LIA)], table)
    with pytest.raises(InputError, match="other.nii.gz"):
        RealPairDataset([img], [save(tmp_path / "other.nii.gz", d[:10], LIA)], table)


def test_label_map_dataset_2d_slices_chosen_by_content_labels(tmp_path):
    d = labels_volume()
    d[:, :, 0:2] = 500  # a "neck" slab: an extracerebral generation label only
    path = save(tmp_path / "m.nii.gz", d)
    any_label = LabelMapDataset([path], ndim=2, plane="axial")
    brain = LabelMapDataset([path], ndim=2, plane="axial", content_labels=[0, 2, 41, 17])
    assert {s for _, s in any_label.index.pairs} >= {0, 1}
    assert {s for _, s in brain.index.pairs} == set(range(2, 8))
    b = brain.sample_batch(16, torch.Generator().manual_seed(0), (16, 16))
    assert (torch.isin(b.reshape(16, -1), torch.tensor([2, 17, 41])).sum(1) > 0).all()
    with pytest.raises(InputError, match="content labels"):
        LabelMapDataset([path], ndim=2, content_labels=[3])
