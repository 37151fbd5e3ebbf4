"""Hypergradient of Learn2Synth against central finite differences (float64, fixed draws)."""

import copy

import pytest
import torch
from torch.func import functional_call

from l2s_pipelines.augment import ParametricAugmenter
from l2s_pipelines.nn.losses import combined_loss
from l2s_pipelines.nn.unet import UNet, UNetConfig
from l2s_pipelines.train.functional_optim import FunctionalAdam, FunctionalSGD, step_module
from l2s_pipelines.train.hypergrad import detached_params, l2s_iteration


def _problem(seed=0, k=3, **parts):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = UNet(UNetConfig(ndim=2, in_channels=1, out_channels=k, widths=(4, 6), convs_per_level=1)).double()
    y_s = torch.randint(0, k, (2, 8, 8), generator=g)
    y_r = torch.randint(0, k, (2, 8, 8), generator=g)
    means = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_s = means[y_s].unsqueeze(1)
    x_r = means[y_r].unsqueeze(1) + 0.1 * torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    aug = ParametricAugmenter(2, sigma_init=0.05, bias_init=0.2, bias_grids=(2, 3, 4), **parts).double()
    draws = aug.sample(x_s, g)
    return net, aug, x_s, y_s, x_r, y_r, draws


def _real_loss_after_step(net, aug, opt, x_s, y_s, x_r, y_r, draws):
    """F(theta) = L(S(phi'(theta); x_r), y_r), evaluated without touching the inputs' state."""
    opt = copy.deepcopy(opt)
    params = detached_params(net)
    l_s = combined_loss(functional_call(net, params, (aug.apply(x_s, draws),)), y_s)
    grads = torch.autograd.grad(l_s, list(params.values()))
    new = opt.step(params, dict(zip(params, grads)))
    with torch.no_grad():
        return float(combined_loss(functional_call(net, new, (x_r,)), y_r))


def _warm_up(net, opt, x_s, y_s, steps):
    for _ in range(steps):
        params = detached_params(net)
        loss = combined_loss(functional_call(net, params, (x_s,)), y_s)
        step_module(net, opt, dict(zip(params, torch.autograd.grad(loss, list(params.values())))))


@pytest.mark.parametrize("kind, parts", [("sgd", {}), ("adam", {}),
                                         ("adam", {"gamma": True, "gamma_init": 0.3, "blur": True, "blur_init": 1.0})])
def test_hypergradient_matches_finite_differences(kind, parts):
    net, aug, x_s, y_s, x_r, y_r, draws = _problem(**parts)
    opt = FunctionalSGD(lr=0.5) if kind == "sgd" else FunctionalAdam(lr=0.01)
    if kind == "adam":
        _warm_up(net, opt, x_s, y_s, steps=5)
    opt_before, net_before = copy.deepcopy(opt), copy.deepcopy(net)
    res = l2s_iteration(copy.deepcopy(net), aug, copy.deepcopy(opt), x_s, y_s, x_r, y_r,
                        loss_fn=combined_loss, alpha=1.0, draws=draws)
    analytic = torch.cat([p.grad.flatten() for p in aug.parameters()])
    assert res.real_loss == pytest.approx(_real_loss_after_step(net, aug, opt, x_s, y_s, x_r, y_r, draws))

    h = 1e-5
    numeric = []
    for p in aug.parameters():
        for i in range(p.numel()):
            vals = []
            for sign in (1, -1):
                with torch.no_grad():
                    p.view(-1)[i] += sign * h
                vals.append(_real_loss_after_step(net_before, aug, opt_before, x_s, y_s, x_r, y_r, draws))
                with torch.no_grad():
                    p.view(-1)[i] -= sign * h
            numeric.append((vals[0] - vals[1]) / (2 * h))
    numeric = torch.tensor(numeric, dtype=torch.float64)
    assert float(numeric.abs().max()) > 1e-6  # the test is not vacuous
    rel = float((analytic - numeric).norm() / numeric.norm())
    print(kind, "relative error", rel)
    assert rel < 1e-3, (analytic, numeric)


def test_alpha_scales_hypergradient_and_segmenter_is_updated():
    net, aug, x_s, y_s, x_r, y_r, draws = _problem(seed=1)
    grads = []
    for alpha in (1.0, 3.0):
        n = copy.deepcopy(net)
        before = [p.clone() for p in n.parameters()]
        l2s_iteration(n, aug, FunctionalSGD(0.1), x_s, y_s, x_r, y_r, loss_fn=combined_loss,
                      alpha=alpha, draws=draws)
        assert any(not torch.equal(a, b) for a, b in zip(before, n.parameters()))
        grads.append(torch.cat([p.grad.flatten() for p in aug.parameters()]))
    torch.testing.assert_close(grads[1], 3 * grads[0])


def test_real_batch_gives_no_gradient_to_segmenter():
    net, aug, x_s, y_s, x_r, y_r, draws = _problem(seed=2)
    res_a = l2s_iteration(copy.deepcopy(net), aug, FunctionalSGD(0.1), x_s, y_s, x_r, y_r,
                          loss_fn=combined_loss, draws=draws)
    # a different real batch changes theta's gradient but not the segmenter update
    g_a = torch.cat([p.grad.flatten() for p in aug.parameters()])
    res_b = l2s_iteration(copy.deepcopy(net), aug, FunctionalSGD(0.1), x_s, y_s, 1 - x_r, y_r,
                          loss_fn=combined_loss, draws=draws)
    g_b = torch.cat([p.grad.flatten() for p in aug.parameters()])
    for k in res_a.params:
        torch.testing.assert_close(res_a.params[k], res_b.params[k])
    assert not torch.allclose(g_a, g_b)
