"""Left/right-merged labels for sagittal slices: encoding, loss, generator, sampler, inference."""

import pytest
import torch

from l2s_pipelines.labels import IGNORE_INDEX, LabelTable
from l2s_pipelines.lr_merge import canonical_lut, decode_for_dice, encode_merged, pool_merged, split_merged
from l2s_pipelines.nn.losses import get_loss
from l2s_pipelines.synth import SynthConfig, SynthGenerator

TABLE = LabelTable.default()
FLIP = TABLE.channel_flip_lut()
K = len(TABLE)
HIPPO_L, HIPPO_R, BRAINSTEM = TABLE.index_of(17), TABLE.index_of(53), TABLE.index_of(16)


def test_encoding_marks_every_valid_voxel_with_its_pair():
    t = torch.tensor([0, HIPPO_L, HIPPO_R, BRAINSTEM, IGNORE_INDEX])
    low = min(HIPPO_L, HIPPO_R)
    assert encode_merged(t, FLIP).tolist() == [K, K + low, K + low, K + BRAINSTEM, IGNORE_INDEX]
    assert bool((canonical_lut(FLIP)[FLIP] == canonical_lut(FLIP)).all())  # partners share it


def test_merged_loss_scores_the_pair_and_ignores_the_side():
    """At merged voxels the loss is that of p_left + p_right: swapping the left and right logits
    leaves it unchanged, while the same swap changes the loss of an unmerged target."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 6, 5, generator=g, requires_grad=True)
    target = torch.randint(0, K, (2, 6, 5), generator=g)
    merged = encode_merged(target, FLIP)
    swapped = logits[:, FLIP]
    for name in ("dice", "ce", "dice+ce"):
        loss = get_loss(name, FLIP)
        assert torch.allclose(loss(logits, merged), loss(swapped, merged), atol=1e-6)
        assert not torch.allclose(loss(logits, target), loss(swapped, target), atol=1e-4)
        assert torch.equal(loss(logits, target), get_loss(name)(logits, target))  # unmerged: plain loss
    # cross-entropy is exactly -log(p_c + p_partner) averaged over voxels
    p = logits.softmax(1)
    pair = p + p[:, FLIP] * (FLIP != torch.arange(K)).view(1, K, 1, 1)
    want = -pair.gather(1, target[:, None]).log().mean()
    torch.testing.assert_close(get_loss("ce", FLIP)(logits, merged), want, atol=1e-5, rtol=0)
    grad, = torch.autograd.grad(get_loss("dice+ce", FLIP)(logits, merged), logits)
    assert torch.isfinite(grad).all()
    logp, t = pool_merged(logits, merged, FLIP)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(2, 6, 5), atol=1e-5, rtol=0)
    assert int(t.max()) < K


def test_dice_decoding_counts_either_side():
    target = encode_merged(torch.tensor([HIPPO_L, HIPPO_R, BRAINSTEM]), FLIP)
    pred, ref = decode_for_dice(torch.tensor([HIPPO_R, HIPPO_L, BRAINSTEM]), target, FLIP)
    assert torch.equal(pred, ref)
    plain = torch.tensor([HIPPO_R, 0])
    assert decode_for_dice(plain, torch.tensor([HIPPO_L, 0]), FLIP)[0].tolist() == plain.tolist()


def test_split_follows_the_reference_planes_and_keeps_sums():
    g = torch.Generator().manual_seed(1)
    prob = torch.rand(3, K, 4, 4, generator=g).softmax(1)
    ref = torch.rand(3, K, 4, 4, generator=g) * 2
    out = split_merged(prob, ref, FLIP)
    torch.testing.assert_close(out.sum(1), prob.sum(1))
    torch.testing.assert_close(out[:, HIPPO_L] + out[:, HIPPO_R], prob[:, HIPPO_L] + prob[:, HIPPO_R])
    torch.testing.assert_close(out[:, HIPPO_L] / out[:, HIPPO_R], ref[:, HIPPO_L] / ref[:, HIPPO_R])
    torch.testing.assert_close(out[:, BRAINSTEM], prob[:, BRAINSTEM])
    half = split_merged(prob, torch.zeros_like(ref), FLIP)  # no reference mass: half each
    torch.testing.assert_close(half[:, HIPPO_L], half[:, HIPPO_R])


def test_generator_never_flips_merged_elements_and_encodes_their_targets():
    lm = torch.full((2, 1, 32, 24), 16)
    lm[..., 2:10, 5:15] = 17  # left hippocampus, low x
    gen = SynthGenerator(SynthConfig.all_off(flip=True, flip_probability=1.0), TABLE)
    merge = torch.tensor([True, False])
    image, target = gen(lm, torch.Generator().manual_seed(0), merge)
    plain_image, plain_target = SynthGenerator(SynthConfig.all_off(), TABLE)(lm, torch.Generator().manual_seed(0))
    assert torch.equal(target[0], encode_merged(plain_target[0], FLIP))  # not flipped, merged
    assert torch.equal(image[0], plain_image[0])
    assert (target[1, 22:30, 5:15] == HIPPO_R).all()  # the other element flipped as before
    assert int(target[1].max()) < K


class _FakePlane:
    def __init__(self, plane, value):
        self.plane, self.value = plane, value

    def __len__(self):
        return 1

    def sample_batch(self, n, generator, patch_size=None):
        maps = torch.full((n, 1, 4, 4), self.value)
        return maps if self.value < 100 else (maps.float(), torch.full((n, 4, 4), HIPPO_L))


@pytest.mark.parametrize("pairs", [False, True])
def test_multi_plane_sampler_marks_sagittal_elements(pairs):
    from l2s_pipelines.workflows.training import MultiPlaneSampler
    v = 100 if pairs else 1
    sampler = MultiPlaneSampler([_FakePlane("axial", v), _FakePlane("sagittal", v + 1)], ["sagittal"], FLIP)
    out = sampler.sample_batch(64, torch.Generator().manual_seed(0), (4, 4))
    first, second = out
    if pairs:  # targets of sagittal elements encoded, others as they were
        sag = first[:, 0, 0, 0] == v + 1
        assert (second[sag] == K + min(HIPPO_L, HIPPO_R)).all() and (second[~sag] == HIPPO_L).all()
    else:  # label maps come with the mask the generator takes
        assert torch.equal(second, first[:, 0, 0, 0] == v + 1) and 0 < int(second.sum()) < 64


def test_merged_sagittal_plane_at_inference(tmp_path):
    """With a pointwise net every plane sees the same voxel, so splitting the sagittal plane's
    pairs by the other planes' shares gives exactly the plain three-plane result; a package
    whose only plane is merged is refused."""
    from tests.test_inference import blob_image, make_package
    from l2s_pipelines.inference import Segmenter
    import numpy as np

    planes = ["axial", "coronal", "sagittal"]
    img = blob_image((12, 10, 9), np.eye(4))
    pkg, model = make_package(tmp_path / "a", mode="2.5d", planes=planes, pointwise=True)
    plain = Segmenter.from_package(pkg, device="cpu").segment(img)
    seg = Segmenter.from_package(pkg, device="cpu")
    seg.lr_merged_planes = ["sagittal"]
    merged = seg.segment(img)
    np.testing.assert_allclose(merged.posteriors, plain.posteriors, atol=1e-5)
    from l2s_pipelines.inference.sliding_window import predict_planes
    vol = torch.rand(5, 4, 3)
    with pytest.raises(ValueError, match="at least one plane"):
        predict_planes(model, vol, torch.empty(K, 5, 4, 3), ["sagittal"], merged_planes=["sagittal"], flip_lut=FLIP)
