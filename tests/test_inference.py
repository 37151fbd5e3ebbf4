"""Inference from a NIfTI image to native-space posteriors, with tiny untrained test networks."""

import nibabel as nib
import numpy as np
import pytest
import torch

from l2s_pipelines.errors import InputError
from l2s_pipelines.inference import Segmenter, resolve_device
from l2s_pipelines.inference.resample import native_slabs
from l2s_pipelines.inference.sliding_window import window_starts, window_weight
from l2s_pipelines.io.checkpoint import save_model_package
from l2s_pipelines.io.preprocess import normalise_intensity
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.nn.unet import UNet, UNetConfig

torch.set_num_threads(1)
TABLE = LabelTable.default()


def make_package(path, *, ndim=2, mode="2d", planes=("axial",), pointwise=False, patch=None, blending="gaussian",
                 flip_lr=False):
    """Write a tiny untrained package (tests only). ``pointwise``: one level, centre taps only,
    so each voxel's output depends on that voxel alone."""
    torch.manual_seed(1)
    cfg = UNetConfig(ndim=ndim, out_channels=len(TABLE), widths=(4,) if pointwise else (4, 8), convs_per_level=1)
    model = UNet(cfg)
    if pointwise:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and m.kernel_size[0] == 3:
                    centre = m.weight[(...,) + (1,) * ndim].clone()
                    m.weight.zero_()
                    m.weight[(...,) + (1,) * ndim] = 4 * centre
    manifest = {"name": "test-tiny", "architecture": cfg.to_dict(), "labels": TABLE.to_dict()["labels"],
                "preprocessing": {"voxel_size_mm": [1.0, 1.0, 1.0], "percentiles": [1, 99]},
                "inference": {"mode": mode, "planes": list(planes), "patch_size": patch, "overlap": 0.5,
                              "blending": blending, "flip_lr": flip_lr}}
    return save_model_package(path, model, manifest), model


def oblique_affine(zooms=(1.0, 1.0, 1.0), perm=(0, 1, 2), flips=(1, 1, 1)):
    """Voxel->world affine with permuted/flipped axes, rotated ~20 degrees about two axes."""
    a, b = np.deg2rad(20), np.deg2rad(12)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    base = np.eye(3)[:, list(perm)] * np.array(flips)
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ base @ np.diag(zooms)
    aff[:3, 3] = [-7.3, 12.1, 3.9]
    return aff


def blob_image(shape, affine, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.uniform(10, 100, size=shape).astype(np.float32)
    return nib.Nifti1Image(data, affine)


def check_result(res, img):
    assert res.dseg.shape == img.shape[:3] and res.dseg.dtype == np.int16
    assert res.posteriors.shape == img.shape[:3] + (len(TABLE),) and res.posteriors.dtype == np.float32
    assert np.array_equal(res.affine, img.affine)
    np.testing.assert_allclose(res.posteriors.sum(-1), 1.0, atol=1e-5)
    values = np.array(TABLE.values)
    assert np.array_equal(res.dseg, values[res.posteriors.argmax(-1)])


@pytest.mark.parametrize("mode,ndim,planes", [("2d", 2, ["axial"]), ("2.5d", 2, ["axial", "coronal", "sagittal"]),
                                              ("3d", 3, [])])
def test_anisotropic_oblique_native_grid(tmp_path, mode, ndim, planes):
    pkg, _ = make_package(tmp_path / "pkg", ndim=ndim, mode=mode, planes=planes, patch=[16, 16, 16])
    img = blob_image((14, 12, 4), oblique_affine(zooms=(1.0, 1.0, 7.0), perm=(0, 2, 1), flips=(-1, 1, -1)))
    seg = Segmenter.from_package(pkg, device="cpu")
    res = seg.segment(img)
    check_result(res, img)
    assert set(res.timings_s) >= {"preprocess", "predict", "to_native", "total"}
    out = tmp_path / "dseg.nii.gz"
    nib.save(res.dseg_image(), out)
    back = nib.load(out)
    assert np.array_equal(np.asarray(back.dataobj), res.dseg)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
    assert back.get_data_dtype() == np.int16 and res.probseg_image().shape == res.posteriors.shape


def test_native_posteriors_are_pointwise_predictions(tmp_path):
    """Reorientation + identity resampling + inverse mapping must give back, at every native
    voxel, the network's output for that voxel (pointwise net, 1 mm oblique LIA-like input)."""
    pkg, model = make_package(tmp_path / "pkg", pointwise=True)
    img = blob_image((9, 11, 7), oblique_affine(perm=(0, 2, 1), flips=(-1, -1, 1)))
    res = Segmenter.from_package(pkg, device="cpu").segment(img)
    x = normalise_intensity(torch.from_numpy(img.get_fdata(dtype=np.float32)), (1, 99))
    with torch.no_grad():
        expected = torch.softmax(model(x[:, None]), dim=1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(res.posteriors, expected, atol=1e-5)


@pytest.mark.parametrize("ndim,mode", [(2, "2.5d"), (3, "3d")])
def test_flip_lr_averages_with_the_mirrored_prediction_labels_swapped(tmp_path, ndim, mode):
    """``inference.flip_lr``: with a pointwise net the mirrored volume gives, at the mirrored
    voxel, the same output, so the result is the mean of p and p with left/right channels
    swapped (e.g. Left-Hippocampus <-> Right-Hippocampus), at every voxel of an oblique input."""
    kw = {"planes": ["axial", "coronal"]} if ndim == 2 else {"patch": [8, 8, 8]}
    plain_pkg, model = make_package(tmp_path / "a", ndim=ndim, mode=mode, pointwise=True, **kw)
    flip_pkg, _ = make_package(tmp_path / "b", ndim=ndim, mode=mode, pointwise=True, flip_lr=True, **kw)
    img = blob_image((9, 11, 7), oblique_affine(perm=(0, 2, 1), flips=(-1, -1, 1)))
    plain = Segmenter.from_package(plain_pkg, device="cpu").segment(img)
    flipped = Segmenter.from_package(flip_pkg, device="cpu").segment(img)
    perm = TABLE.channel_flip_lut().tolist()
    assert perm[TABLE.values.index(17)] == TABLE.values.index(53)  # hippocampus L -> R
    np.testing.assert_allclose(flipped.posteriors, 0.5 * (plain.posteriors + plain.posteriors[..., perm]),
                               atol=1e-5)
    assert not np.allclose(flipped.posteriors, plain.posteriors, atol=1e-3)  # the flip did something


def test_planes_and_sliding_window_agree_for_pointwise_nets(tmp_path):
    img = blob_image((20, 17, 15), np.diag([1.0, 1.0, 1.0, 1.0]))
    one = Segmenter.from_package(make_package(tmp_path / "a", pointwise=True)[0], device="cpu").segment(img)
    fused = Segmenter.from_package(make_package(tmp_path / "b", pointwise=True, mode="2.5d",
                                                planes=["axial", "coronal", "sagittal"])[0], device="cpu").segment(img)
    np.testing.assert_allclose(fused.posteriors, one.posteriors, atol=1e-5)
    whole = Segmenter.from_package(make_package(tmp_path / "c", ndim=3, mode="3d", pointwise=True,
                                                patch=[64, 64, 64])[0], device="cpu").segment(img)
    for blending in ("gaussian", "constant"):
        slid = Segmenter.from_package(make_package(tmp_path / blending, ndim=3, mode="3d", pointwise=True,
                                                   patch=[8, 6, 8], blending=blending)[0], device="cpu").segment(img)
        np.testing.assert_allclose(slid.posteriors, whole.posteriors, atol=1e-5)


def test_float16_buffer_close_to_float32(tmp_path):
    pkg, _ = make_package(tmp_path / "pkg")
    img = blob_image((16, 12, 10), oblique_affine(zooms=(1.2, 1.2, 2.0)))
    full = Segmenter.from_package(pkg, device="cpu").segment(img)
    half = Segmenter.from_package(pkg, device="cpu", max_buffer_bytes=1).segment(img)
    np.testing.assert_allclose(half.posteriors, full.posteriors, atol=2e-3)


def test_native_slabs_interpolate_linear_fields_exactly():
    """Trilinear sampling reproduces a linear field; slabs and sub-boxes must not shift it."""
    shape = (12, 10, 9)
    idx = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij"))
    field = (0.02 * idx[0] + 0.03 * idx[1] + 0.01 * idx[2] + 0.1).float()
    post = torch.stack([1 - field, field])
    model_affine = oblique_affine()
    native_affine = model_affine @ np.array([[0, 1.5, 0, 1.2], [1.3, 0, 0, 0.7], [0, 0, 2, 0.4], [0, 0, 0, 1]])
    native_shape = (6, 5, 4)
    out = np.zeros(native_shape)
    for x0, x1, p in native_slabs(post, model_affine, native_shape, native_affine, max_slab_bytes=2 * 5 * 4 * 4):
        assert x1 - x0 == 1
        out[x0:x1] = p[1].numpy()
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in native_shape), indexing="ij"), -1)
    m = np.linalg.inv(model_affine) @ native_affine
    c = ijk @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(out, 0.02 * c[..., 0] + 0.03 * c[..., 1] + 0.01 * c[..., 2] + 0.1, atol=1e-5)


def test_bad_inputs_raise_input_error_naming_file(tmp_path):
    pkg, _ = make_package(tmp_path / "pkg")
    seg = Segmenter.from_package(pkg, device="cpu")
    aff = np.eye(4)
    good = np.random.default_rng(0).uniform(1, 2, (6, 6, 6)).astype(np.float32)
    nan, inf = good.copy(), good.copy()
    nan[1, 1, 1], inf[2, 2, 2] = np.nan, np.inf
    cases = {"NaN": nan, "infinite": inf, "all zero": np.zeros_like(good), "constant": np.full_like(good, 3),
             "one volume": np.stack([good, good], -1)}
    for message, data in cases.items():
        with pytest.raises(InputError, match=message) as exc:
            seg.segment(nib.Nifti1Image(data, aff), source_name="sub-01_T1w.nii.gz")
        assert "sub-01_T1w.nii.gz" in str(exc.value)
    res = seg.segment(nib.Nifti1Image(good[..., None], aff))  # 4D with a single volume is fine
    assert res.dseg.shape == (6, 6, 6)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="cuda:99"):
        resolve_device("cuda:99")
    with pytest.raises(InputError):
        resolve_device("tpu")


def test_windows_cover_and_weights():
    for size, patch in ((10, 4), (7, 7), (5, 8), (33, 16)):
        starts = window_starts(size, patch, 0.5)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + min(patch, size)] = True
        assert covered.all() and starts[-1] + min(patch, size) == size
    w = window_weight((9, 8, 7))
    assert w.max() == 1 and w.min() > 0 and w[4, 3, 3] >= w[0, 0, 0]
    assert torch.equal(window_weight((3, 3), "constant"), torch.ones(3, 3))


def test_blended_model_space_posteriors_are_normalised_before_renormalisation(tmp_path):
    """The stitched model-space output itself (not only after the native renormalisation) must
    equal the whole-volume softmax: wrong blending weights would scale it."""
    from l2s_pipelines.inference.sliding_window import predict_planes, predict_sliding_window
    vol = torch.rand(13, 11, 9)
    _, net3 = make_package(tmp_path / "p3", ndim=3, mode="3d", pointwise=True)
    _, net2 = make_package(tmp_path / "p2", pointwise=True)
    with torch.no_grad():
        whole = torch.softmax(net3(vol[None, None]), 1)[0]
        out = torch.empty_like(whole)
        predict_sliding_window(net3, vol, out, patch_size=(6, 5, 4), overlap=0.5, blending="gaussian")
        torch.testing.assert_close(out, whole, atol=1e-5, rtol=0)
        predict_planes(net2, vol, out, ["axial", "sagittal"], activation_budget_bytes=1)  # batch of 1
        torch.testing.assert_close(out.sum(0), torch.ones(vol.shape), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [0, 4])
def test_exact_copy_path_equals_interpolation(shift):
    """Permuted/flipped grids (shift=4: partly outside the model grid, clamped) give the same
    values through the copy path as through grid_sample."""
    from l2s_pipelines.inference.resample import signed_permutation
    post = torch.softmax(torch.randn(3, 7, 6, 5), 0)
    model_affine = oblique_affine()
    to_model = np.array([[0, 0, -1, 4 + shift], [1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1.0]])
    native_affine = model_affine @ to_model
    assert signed_permutation(np.linalg.inv(model_affine) @ native_affine) is not None
    shape = (6, 5, 5)
    fast = torch.cat([p for _, _, p in native_slabs(post, model_affine, shape, native_affine, max_slab_bytes=200)], 1)
    slow = torch.cat([p for _, _, p in native_slabs(post, model_affine, shape, native_affine, exact=False)], 1)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    # native voxel (0, 0, 0) -> model voxel (4 + shift, 0, 1), clamped to the grid's last index 6
    torch.testing.assert_close(fast[:, 0, 0, 0], post[:, min(4 + shift, 6), 0, 1])


@pytest.mark.parametrize("affine_kind", ["copy", "oblique"])
def test_box_buffer_equals_full_grid_with_one_hot_background(affine_kind):
    """Posteriors over a box of the model grid give what a full-grid buffer holding one-hot
    background outside the box gives, also where the native grid extends past the model grid."""
    model_shape, origin, k = (9, 8, 7), (2, 1, 3), 4
    box = torch.softmax(torch.randn(k, 5, 6, 3, generator=torch.Generator().manual_seed(0)), 0)
    full = torch.zeros(k, *model_shape)
    full[0] = 1
    full[:, 2:7, 1:7, 3:6] = box
    model_affine = oblique_affine()
    if affine_kind == "copy":
        to_model = np.array([[0, 0, -1, 9], [1, 0, 0, -2], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    else:
        to_model = np.array([[0, 0.7, 0.1, -1.3], [0.8, 0, 0, -0.6], [0.05, 0.1, 0.75, 0.2], [0, 0, 0, 1.0]])
    native_affine = model_affine @ to_model
    shape = (11, 12, 10)
    kw = dict(max_slab_bytes=k * 12 * 10 * 4 * 3)
    got = torch.cat([p for _, _, p in native_slabs(box, model_affine, shape, native_affine, box_origin=origin,
                                                   model_shape=model_shape, **kw)], 1)
    want = torch.cat([p for _, _, p in native_slabs(full, model_affine, shape, native_affine, **kw)], 1)
    assert got.shape == (k, *shape)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got[0] == 1).any() and (got[0] < 0.99).any()  # both outside and inside the box were sampled


def head_image(shape, zooms, seed=0):
    """Smooth ellipsoidal 'head' on a zero background (so the crop box is smaller than the grid)."""
    g = np.stack(np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij"))
    r = np.sqrt((g[0] / 0.7) ** 2 + (g[1] / 0.8) ** 2 + (g[2] / 0.75) ** 2)
    noise = np.random.default_rng(seed).uniform(0, 5, shape).astype(np.float32)
    data = np.where(r < 1, 50 + 40 * (r < 0.6) + 30 * g[0] + noise, 0).astype(np.float32)
    return nib.Nifti1Image(data, oblique_affine(zooms=zooms, perm=(1, 0, 2), flips=(1, -1, 1)))


@pytest.mark.parametrize("zooms", [(1.0, 1.0, 1.0), (0.7, 0.8, 1.3)])
def test_slab_path_equals_full_posteriors(tmp_path, zooms):
    """Small slabs and a small budget without posteriors give the labels of the default full
    path, and soft sums / confidence equal those computed from its full posterior array."""
    from l2s_pipelines import metrics
    pkg, _ = make_package(tmp_path / "pkg")
    img = head_image((36, 30, 24), zooms)
    full = Segmenter.from_package(pkg, device="cpu", crop_margin_vox=1).segment(img)
    seg = Segmenter.from_package(pkg, device="cpu", memory_budget_bytes=64 << 20, crop_margin_vox=1,
                                 max_slab_bytes=33 * 30 * 24 * 4 * 3)
    assert seg.max_buffer_bytes == 16 << 20  # float32 buffer kept: the comparison below is exact
    slab = seg.segment(img, return_posteriors=False)
    assert slab.posteriors is None and slab.dseg.dtype == np.int16
    assert np.array_equal(slab.dseg, full.dseg)
    assert (full.dseg == 0).any() and (full.dseg != 0).any()
    sums = metrics.soft_sums_of(full.posteriors)
    np.testing.assert_allclose(slab.soft_sums, sums, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(full.soft_sums, sums, rtol=1e-4, atol=1e-3)
    conf = metrics.mean_max_posterior(full.posteriors, full.dseg != 0)
    assert slab.mean_max_posterior == pytest.approx(conf, rel=1e-5)
    vol_full = metrics.label_volumes(full.dseg, full.posteriors, img.affine, TABLE)
    vol_slab = metrics.label_volumes(slab.dseg, None, img.affine, TABLE, soft_sums=slab.soft_sums)
    assert vol_slab["tiv_mm3"] == pytest.approx(vol_full["tiv_mm3"], rel=1e-4)
    assert vol_slab["tiv_method"] == vol_full["tiv_method"]
    flags = {f["name"]: f for f in metrics.qc_flags(slab.dseg, None, vol_slab, TABLE,
                                                     mean_confidence=slab.mean_max_posterior)}
    assert flags["low_confidence"]["value"] == pytest.approx(conf, rel=1e-5)


def test_uint8_probseg_reads_back_within_one_step(tmp_path):
    pkg, _ = make_package(tmp_path / "pkg")
    img = head_image((20, 18, 16), (1.0, 1.0, 1.2))
    seg = Segmenter.from_package(pkg, device="cpu")
    ref = seg.segment(img)
    q = seg.segment(img, posteriors_dtype="uint8")
    assert q.posteriors.dtype == np.uint8 and q.posteriors.shape == ref.posteriors.shape
    assert np.array_equal(q.dseg, ref.dseg)
    np.testing.assert_allclose(q.soft_sums, ref.soft_sums, rtol=1e-6)  # sums taken before quantisation
    nib.save(q.probseg_image(), tmp_path / "probseg.nii.gz")
    back = nib.load(tmp_path / "probseg.nii.gz")
    assert back.get_data_dtype() == np.uint8 and back.shape == ref.posteriors.shape
    np.testing.assert_allclose(back.get_fdata(), ref.posteriors, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
    auto = Segmenter.from_package(pkg, device="cpu", memory_budget_bytes=4 * 20 * 18 * 16 * 33 * 4 - 4)
    assert auto.segment(img, posteriors_dtype="auto").posteriors.dtype == np.uint8
    assert seg.segment(img, posteriors_dtype="auto").posteriors.dtype == np.float32
    with pytest.raises(ValueError, match="float16"):
        seg.segment(img, posteriors_dtype="float16")
