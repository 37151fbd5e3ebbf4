import math

import pytest
import torch

from l2s_pipelines.labels import IGNORE_INDEX
from l2s_pipelines.nn.losses import (cross_entropy_loss, dice_per_label, get_loss, logit_mse_loss,
                                     mean_dice, soft_dice_loss)


def _perfect_logits(target, k, scale=50.0):
    return torch.nn.functional.one_hot(target.clamp_min(0), k).movedim(-1, 1).double() * scale


def test_losses_small_for_perfect_and_large_for_wrong():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    good = _perfect_logits(target, 4)
    bad = _perfect_logits((target + 1) % 4, 4)
    for name in ("dice", "ce", "dice+ce"):
        fn = get_loss(name)
        assert float(fn(good, target)) < 0.5 * float(fn(bad, target)), name
    assert float(soft_dice_loss(good, target)) < 1e-6
    assert float(soft_dice_loss(bad, target)) > 0.99
    good5, bad5 = _perfect_logits(target, 4, scale=5.0), _perfect_logits((target + 1) % 4, 4, scale=5.0)
    assert float(get_loss("logit_mse")(good5, target)) < 1e-12
    assert float(logit_mse_loss(bad5, target)) > 1.0


def test_ignored_voxels_do_not_count():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (1, 6, 6), generator=g)
    logits = _perfect_logits(target, 3)
    wrong = logits.clone()
    wrong[..., :2] = _perfect_logits((target[..., :2] + 1) % 3, 3)
    masked = target.clone()
    masked[..., :2] = IGNORE_INDEX
    for fn in (soft_dice_loss, cross_entropy_loss, logit_mse_loss):
        assert float(fn(wrong, masked)) == pytest.approx(float(fn(logits, masked)), abs=1e-9)
        assert float(fn(wrong, target)) > float(fn(logits, target)) + 1e-3


def test_loss_shape_mismatch_raises():
    with pytest.raises(ValueError):
        soft_dice_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))


def test_dice_per_label_hand_computed():
    ref = torch.tensor([[0, 1, 1, 2], [2, 2, 0, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 2, 2], [2, 0, 0, 1]])
    d = dice_per_label(pred, ref, 4)
    # label 1: pred {1}, ref {1,2}: 2*1/(1+2); label 2: pred 3 voxels, ref 3, overlap 2
    assert d[1].item() == pytest.approx(2 / 3)
    assert d[2].item() == pytest.approx(2 * 2 / 6)
    assert math.isnan(d[3].item())  # absent from both
    assert mean_dice(pred, ref, 4) == pytest.approx((2 / 3 + 2 / 3) / 2)  # background excluded
