"""SynthSeg-style generator: labels preserved, flips swap sides, seeding, switches, shapes."""

from pathlib import Path

import pytest
import torch

from l2s_pipelines.io.nifti import load_label_map
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.synth import SynthConfig, SynthGenerator, corrupt_noise
from l2s_pipelines.synth.sampling import resolution_matrix, smooth_upsample
from l2s_pipelines.synth.intensity import sample_resolution

MAP = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "label_maps" / "training_seg_01.nii.gz")
GEN_TSV = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "label_maps" / "generation_labels.tsv")


@pytest.fixture(scope="module")
def label_map_3d():
    """A real whole-head label map at 4 mm (64^3), (1, 1, X, Y, Z) long."""
    lab, _ = load_label_map(MAP, voxel_size=4.0)
    return lab[None]


@pytest.fixture(scope="module")
def slices_2d(label_map_3d):
    """Four axial slices (4, 1, 64, 64)."""
    vol = label_map_3d[0, 0]
    return torch.stack([vol[:, :, z] for z in (20, 28, 36, 44)])[:, None]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def class_image(gen, label_maps, params):
    """Image made only of the class means (what every step switched off must give)."""
    src = gen.deform_labels(label_maps, params)
    cls_lut, _, _ = gen._tables(int(label_maps.max()), label_maps.device)
    return params.intensity["means"].gather(1, cls_lut[src].reshape(src.shape[0], -1)).reshape(src.shape)


def test_deformation_creates_no_new_labels(label_map_3d):
    gen = SynthGenerator(SynthConfig(max_elastic=0.08, patch_size=(48, 56, 40)))
    params = gen.sample(label_map_3d.repeat(2, 1, 1, 1, 1), _gen(1))
    deformed = gen.deform_labels(label_map_3d.repeat(2, 1, 1, 1, 1), params)
    assert deformed.shape == (2, 1, 48, 56, 40)
    assert set(deformed.unique().tolist()) <= set(label_map_3d.unique().tolist())
    assert not torch.equal(deformed[0], deformed[1])  # per-element deformations
    _, target = gen.apply(label_map_3d.repeat(2, 1, 1, 1, 1), params)
    allowed = set(LabelTable.default().source_to_target(label_map_3d).unique().tolist())
    assert set(target.unique().tolist()) <= allowed


def test_flip_swaps_left_and_right_labels():
    table = LabelTable.default()
    lm = torch.full((1, 1, 32, 24), 16)  # brainstem (midline) everywhere
    lm[..., 2:10, 5:15] = 2  # Left-Cerebral-White-Matter on the left (low RAS x)
    gen = SynthGenerator(SynthConfig.all_off(flip=True, flip_probability=1.0), table)
    image, target = gen(lm, _gen(0))
    left, right = table.index_of(2), table.index_of(41)
    assert not (target == left).any()
    assert (target[0, 22:30, 5:15] == right).all()  # mirrored x = 31 - x
    assert (target[0, :22] == table.index_of(16)).all()
    # the image is flipped with the target
    wm_value = image[0, 0, 22:30, 5:15].unique()
    assert wm_value.numel() == 1 and not (image[0, 0, 2:10, 5:15] == wm_value).any()


@pytest.mark.parametrize("ndim", [2, 3])
def test_shapes_dtypes_and_range(ndim, label_map_3d, slices_2d):
    lm = slices_2d if ndim == 2 else label_map_3d.repeat(2, 1, 1, 1, 1)
    patch = (40, 48) if ndim == 2 else (40, 32, 48)
    gen = SynthGenerator(SynthConfig(patch_size=patch))
    image, target = gen(lm, _gen(3))
    assert image.shape == (lm.shape[0], 1, *patch) and image.dtype == torch.float32
    assert target.shape == (lm.shape[0], *patch) and target.dtype == torch.long
    assert image.min() >= 0 and image.max() <= 1
    flat = image.reshape(lm.shape[0], -1)
    assert (flat.quantile(0.01, dim=1) < 0.02).all() and (flat.quantile(0.99, dim=1) > 0.98).all()
    assert target.min() >= 0 and target.max() < 33


def test_same_seed_same_batch_different_seed_different(slices_2d):
    gen = SynthGenerator(SynthConfig())
    a, ta = gen(slices_2d, _gen(7))
    b, tb = gen(slices_2d, _gen(7))
    c, _ = gen(slices_2d, _gen(8))
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, c)


def test_apply_is_deterministic_given_params(slices_2d):
    gen = SynthGenerator(SynthConfig())
    params = gen.sample(slices_2d, _gen(2))
    a, _ = gen.apply(slices_2d, params)
    b, _ = gen.apply(slices_2d, params)
    assert torch.equal(a, b)


def test_all_off_gives_class_intensity_image(slices_2d):
    gen = SynthGenerator(SynthConfig.all_off())
    params = gen.sample(slices_2d, _gen(4))
    image, target = gen.apply(slices_2d, params)
    assert torch.equal(image, class_image(gen, slices_2d, params))
    assert torch.equal(target, LabelTable.default().source_to_target(slices_2d[:, 0]))


STEPS = {
    "texture": dict(texture=True, max_intensity_sd=0.05), "intensity_sd": dict(max_intensity_sd=0.05),
    "bias": dict(bias=True), "gamma": dict(gamma=True), "blur": dict(blur=True, untouched_probability=0.0),
    "lowres": dict(lowres=True, untouched_probability=0.0), "noise": dict(noise=True),
    "rescale": dict(rescale=True),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_intensity_step_switches(step, slices_2d):
    gen = SynthGenerator(SynthConfig.all_off(**STEPS[step]))
    params = gen.sample(slices_2d, _gen(5))
    image, _ = gen.apply(slices_2d, params)
    assert not torch.allclose(image, class_image(gen, slices_2d, params), atol=1e-4)


@pytest.mark.parametrize("step", ["affine", "elastic", "flip"])
def test_each_spatial_step_switches(step, slices_2d):
    kw = {step: True, "flip_probability": 1.0}
    gen = SynthGenerator(SynthConfig.all_off(**kw))
    _, target = gen(slices_2d, _gen(6))
    ref = LabelTable.default().source_to_target(slices_2d[:, 0])
    assert target.shape == ref.shape and not torch.equal(target, ref)


@pytest.mark.parametrize("crop", [False, True])
def test_crop_is_a_window_of_the_input(crop, slices_2d):
    gen = SynthGenerator(SynthConfig.all_off(crop=crop, patch_size=(40, 36)))
    params = gen.sample(slices_2d, _gen(6))
    _, target = gen.apply(slices_2d, params)
    ref = LabelTable.default().source_to_target(slices_2d[:, 0])
    starts = params.offset.long().tolist()
    for b, (x0, y0) in enumerate(starts):
        assert torch.equal(target[b], ref[b, x0:x0 + 40, y0:y0 + 36])
    centred = [[12, 14]] * len(starts)
    assert (starts == centred) != crop


def test_generation_classes_share_intensity():
    lm = torch.tensor([[17, 18, 53, 54]]).reshape(1, 1, 2, 2).repeat(1, 1, 4, 4)
    gen = SynthGenerator(SynthConfig.all_off(), generation=GEN_TSV)
    image, _ = gen(lm, _gen(0))
    v = image[0, 0, :2, :2]
    assert v[0, 0] == v[0, 1] and v[1, 0] == v[1, 1] and v[0, 0] != v[1, 0]


def test_source_255_stays_ignored_under_flip():
    lm = torch.full((2, 1, 8, 8), 2)
    lm[:, :, :, :2] = 255
    gen = SynthGenerator(SynthConfig.all_off(flip=True, flip_probability=0.5))
    _, target = gen(lm, _gen(1))
    assert (target[:, :, :2] == -100).all() and (target[:, :, 2:] >= 0).all()


def test_corrupt_noise_per_element_sigma():
    x = torch.zeros(3, 1, 64, 64)
    y = corrupt_noise(x, torch.tensor([0.0, 0.05, 0.2]), _gen(0))
    assert torch.equal(y[0], x[0])
    sd = y.reshape(3, -1).std(1)
    assert abs(sd[1] - 0.05) < 0.005 and abs(sd[2] - 0.2) < 0.02
    assert torch.equal(corrupt_noise(x, 0.1, _gen(3)), corrupt_noise(x, 0.1, _gen(3)))


def test_resolution_operator_identity_and_rows():
    m = resolution_matrix(20, torch.tensor([0.0, 2.0, 0.0]), torch.tensor([1.0, 1.0, 4.0]))
    assert torch.allclose(m[0], torch.eye(20), atol=1e-6)
    assert torch.allclose(m.sum(-1), torch.ones(3, 20), atol=1e-5)
    ramp = torch.arange(20.0)  # linear signals survive low resolution away from the end
    assert torch.allclose((m[2] @ ramp)[5:14], ramp[5:14], atol=0.05)


def test_smooth_upsample_constant_field():
    coarse = torch.full((2, 1, 4, 4, 4), 1.5)
    assert torch.allclose(smooth_upsample(coarse, (9, 7, 5)), torch.full((2, 1, 9, 7, 5), 1.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu_parameters(slices_2d):
    gen = SynthGenerator(SynthConfig(patch_size=(48, 48)))
    cpu, tc = gen(slices_2d, _gen(9))
    gpu, tg = gen(slices_2d.cuda(), _gen(9))
    assert gpu.device.type == "cuda" and tg.shape == tc.shape
    assert (tg.cpu() == tc).float().mean() > 0.99


def test_resolution_priors_are_in_mm():
    """The same mm priors give half the voxel factor on a 2 mm grid as on a 1 mm grid, never
    beyond max_thick_slice_mm / voxel, and isotropic samples are coarse along every axis."""
    for vox in (1.0, 2.0):
        cfg = SynthConfig(voxel_size_mm=vox)
        res = sample_resolution(4000, 3, cfg, _gen(11))
        f = res["factor"]
        assert float(f.max()) <= cfg.max_thick_slice_mm / vox + 1e-5 and float(f.min()) >= 1.0
        assert torch.all(res["fwhm"] == 0)  # the acquisition operator carries the slice profile
        coarse_axes = (f > 1).sum(1)
        iso_share = float((coarse_axes == 3).float().mean())
        thick_share = float((coarse_axes == 1).float().mean())
        assert abs(iso_share - cfg.iso_probability) < 0.03
        assert abs(thick_share - (1 - cfg.iso_probability - cfg.untouched_probability)) < 0.03
    f2 = sample_resolution(2000, 2, SynthConfig(voxel_size_mm=2.0), _gen(12))["factor"]
    assert float(f2.max()) <= 4.0 + 1e-5
    # in 2D a third of the thick-slice samples are thick through the plane: slice untouched
    assert float(((f2 > 1).sum(1) == 0).float().mean()) > 0.25


def test_skull_stripped_samples_have_no_extracerebral_signal(slices_2d):
    """With skull stripping on, every voxel whose target is background (extracerebral labels
    included) holds the background class's intensity; without it, extracerebral labels differ."""
    table = LabelTable.default()
    extra = [v for v in torch.unique(slices_2d).tolist() if v != 0 and v not in table.values]
    assert extra, "fixture must hold extracerebral labels"
    base = dict(background_zero_probability=1.0)
    gen = SynthGenerator(SynthConfig.all_off(skull_strip_probability=1.0, **base))
    image, target = gen(slices_2d, _gen(13))
    assert torch.all(image[:, 0][target == 0] == 0)
    gen = SynthGenerator(SynthConfig.all_off(**base))
    image, target = gen(slices_2d, _gen(13))
    assert torch.any(image[:, 0][target == 0] != 0)


def test_old_voxel_based_settings_are_refused_clearly():
    with pytest.raises(ValueError, match="max_lowres_factor"):
        SynthConfig.from_dict({"max_lowres_factor": 8.0})
