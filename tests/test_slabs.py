"""Neighbouring slices as input channels of 2D networks: datasets, the 3D slab generator,
inference with neighbours, widening a one-slice package, and the command line."""

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from l2s_pipelines.io.nifti import LabelMapDataset, RealPairDataset
from l2s_pipelines.labels import LabelTable
from l2s_pipelines.synth import SynthConfig, SynthGenerator
from l2s_pipelines.synth.slab import SlabGenerator, slab_depth

TABLE = LabelTable.default()


Z_LABELS = [2, 3, 4, 5, 7, 8, 10, 11, 12]  # one label per axial slice z = 0..8


@pytest.fixture()
def volumes(tmp_path):
    """A label map and an image (12, 10, 9) at 1 mm whose values tell each voxel's z index."""
    z = np.broadcast_to(np.arange(9), (12, 10, 9))
    labels = np.asarray(Z_LABELS, np.int16)[z]
    labels[:2] = 0
    image = (z + 1.0).astype(np.float32) * (labels > 0)
    paths = {}
    for name, data in (("lab", labels), ("img", image)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), np.eye(4)), paths[name])
    return paths


def test_label_blocks_hold_the_slice_and_its_neighbours(volumes):
    plain = LabelMapDataset([volumes["lab"]], ndim=2, plane="axial", min_fraction=0)
    block = LabelMapDataset([volumes["lab"]], ndim=2, plane="axial", min_fraction=0, slab_depth=5)
    a = plain.sample_batch(12, torch.Generator().manual_seed(0), (8, 8))
    b = block.sample_batch(12, torch.Generator().manual_seed(0), (8, 8))
    assert b.shape == (12, 1, 8, 8, 5)
    assert torch.equal(b[..., 2], a)  # the middle slice is the one drawn
    for i in range(12):  # neighbours in increasing order, zeros beyond the volume
        s = Z_LABELS.index(int(a[i].max()))
        for j, z in enumerate(range(s - 2, s + 3)):
            assert int(b[i, 0, ..., j].max()) == (Z_LABELS[z] if 0 <= z < 9 else 0)


def test_real_pairs_give_neighbouring_slices_as_channels(volumes):
    one = RealPairDataset([volumes["img"]], [volumes["lab"]], TABLE, ndim=2, plane="axial", min_fraction=0)
    three = RealPairDataset([volumes["img"]], [volumes["lab"]], TABLE, ndim=2, plane="axial", min_fraction=0,
                            slices=3)
    x1, y1 = one.sample_batch(5, torch.Generator().manual_seed(2), (12, 10))
    x3, y3 = three.sample_batch(5, torch.Generator().manual_seed(2), (12, 10))
    assert x3.shape == (5, 3, 12, 10) and torch.equal(y3, y1) and torch.equal(x3[:, 1:2], x1)
    vol = three.images[0][0]
    for i in range(5):
        s = int(np.argmin([float((vol[..., z] - x1[i, 0]).abs().max()) for z in range(9)]))
        for c, z in enumerate((s - 1, s, s + 1)):
            want = vol[..., z] if 0 <= z < 9 else torch.zeros_like(vol[..., 0])
            assert torch.equal(x3[i, c], want)
    with pytest.raises(ValueError, match="odd"):
        RealPairDataset([volumes["img"]], [volumes["lab"]], TABLE, ndim=2, slices=2)


def test_slab_generator_gives_the_middle_slices_and_the_middle_target():
    block = torch.zeros(2, 1, 16, 12, 7, dtype=torch.long)
    for z in range(7):
        block[..., 2:14, 2:10, z] = 2 if z % 2 == 0 else 41
    config = SynthConfig.all_off(patch_size=(16, 12, 3))
    gen = SlabGenerator(SynthGenerator(config, TABLE))
    image, target = gen(block, torch.Generator().manual_seed(0))
    assert image.shape == (2, 3, 16, 12) and target.shape == (2, 16, 12)
    full, full_target = SynthGenerator(SynthConfig.all_off(), TABLE)(block, torch.Generator().manual_seed(0))
    assert torch.equal(image, full[:, 0, ..., 2:5].movedim(-1, 1))  # slices 2, 3, 4 of 0..6
    assert torch.equal(target, full_target[..., 3])
    assert slab_depth(3, 128, 15.0) == 61 and slab_depth(5, 64, 0.0) == 5
    with pytest.raises(ValueError, match="k odd"):
        SlabGenerator(SynthGenerator(SynthConfig.all_off(patch_size=(16, 12, 2)), TABLE))


class _Probe(nn.Module):
    """A fake 2D network with ``k`` input channels whose logits are its input channels."""

    def __init__(self, k):
        super().__init__()
        self.config = SimpleNamespace(widths=(4,), in_channels=k, out_channels=k)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return 4 * x + self.dummy


def test_inference_feeds_each_slice_with_its_neighbours():
    from l2s_pipelines.inference.sliding_window import predict_planes
    vol = torch.rand(5, 4, 6)
    out = torch.empty(3, 5, 4, 6)
    predict_planes(_Probe(3), vol, out, ["axial"], activation_budget_bytes=1)
    padded = torch.nn.functional.pad(vol, (1, 1))  # zeros beyond the first and last axial slice
    want = torch.softmax(4 * torch.stack([padded[..., :-2], padded[..., 1:-1], padded[..., 2:]]), 0)
    torch.testing.assert_close(out, want)


def test_a_widened_one_slice_network_computes_the_same(tmp_path):
    from l2s_pipelines.inference.sliding_window import predict_planes
    from l2s_pipelines.nn.unet import UNet, UNetConfig
    from l2s_pipelines.train.trainer import _widen
    torch.manual_seed(0)
    one = UNet(UNetConfig(ndim=2, out_channels=4, widths=(4, 8), convs_per_level=1)).eval()
    three = UNet(UNetConfig(ndim=2, in_channels=3, out_channels=4, widths=(4, 8), convs_per_level=1)).eval()
    three.load_state_dict({k: _widen(v, three.state_dict()[k].shape) for k, v in one.state_dict().items()})
    vol = torch.rand(9, 8, 7)
    a, b = torch.empty(4, 9, 8, 7), torch.empty(4, 9, 8, 7)
    with torch.no_grad():
        predict_planes(one, vol, a, ["axial", "coronal"])
        predict_planes(three, vol, b, ["axial", "coronal"])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
