import pytest
import torch

from l2s_pipelines.augment import NonparametricAugmenter, ParametricAugmenter, build_augmenter


@pytest.mark.parametrize("ndim", [2, 3])
def test_parametric_start_values_and_shapes(ndim):
    aug = ParametricAugmenter(ndim, sigma_init=0.07, bias_init=0.2, bias_max=0.5)
    log = aug.parameters_log()
    assert log["noise_sigma"] == pytest.approx(0.07, rel=1e-5)
    assert [log[f"bias_exponent_{j}"] for j in range(3)] == pytest.approx([0.2] * 3, rel=1e-5)
    x = torch.rand((3, 1) + (12,) * ndim)
    draws = aug.sample(x, torch.Generator().manual_seed(0))
    y = aug.apply(x, draws)
    assert y.shape == x.shape
    assert torch.equal(y, aug.apply(x, draws))  # deterministic given the draws
    # fields are drawn per batch element
    assert not torch.allclose(draws["field0"][0], draws["field0"][1])


def test_parametric_is_noise_only_map_without_bias():
    aug = ParametricAugmenter(2, bias=False, sigma_init=0.1)
    x = torch.rand(2, 1, 8, 8)
    draws = aug.sample(x, torch.Generator().manual_seed(0))
    # the full map: x + sigma * eps, the input added exactly once
    torch.testing.assert_close(aug.apply(x, draws), x + 0.1 * draws["eps"], rtol=1e-5, atol=1e-6)


def test_parametric_respects_bounds():
    aug = ParametricAugmenter(2, sigma_range=True, bias_max=0.4)
    with torch.no_grad():
        aug.sigma_raw.fill_(-50.0)
        aug.width_raw.fill_(3.0)
        aug.bias_raw.copy_(torch.tensor([1e3, -1e3, 0.0]))
    with torch.no_grad():
        lo, hi = aug.sigma_bounds()
        e = aug.bias_exponents()
    assert float(lo) >= 0 and float(hi) >= float(lo)
    assert float(e.max()) <= 0.4 + 1e-7 and float(e.min()) >= 0
    log = aug.parameters_log()
    assert log["noise_sigma_lo"] <= log["noise_sigma"] <= log["noise_sigma_hi"]


def test_parametric_sigma_range_per_element():
    aug = ParametricAugmenter(2, bias=False, sigma_range=True, sigma_init=0.02, range_init=0.2)
    x = torch.zeros(64, 1, 16, 16)
    with torch.no_grad():
        y = aug(x, torch.Generator().manual_seed(3))
    stds = y.flatten(1).std(1)
    assert float(stds.min()) > 0.015 and float(stds.max()) < 0.23
    assert float(stds.max() - stds.min()) > 0.1


@pytest.mark.parametrize("ndim", [2, 3])
def test_nonparametric_identity_at_init_and_bounded(ndim):
    aug = NonparametricAugmenter(ndim, widths=(4, 8), bound=0.3)
    x = torch.rand((2, 1) + (10,) * ndim)
    torch.testing.assert_close(aug(x, torch.Generator().manual_seed(0)), x)
    with torch.no_grad():
        aug.net.head.bias.fill_(100.0)
    y = aug(x, torch.Generator().manual_seed(0))
    assert float((y - x).abs().max()) <= 0.3 + 1e-6
    assert float((y - x).abs().min()) > 0.29
    assert set(aug.parameters_log()) == {"residual_rms", "head_weight_norm"}


def test_build_augmenter_rejects_unknown():
    assert isinstance(build_augmenter("nonparametric", 2, {"widths": [4, 4]}), NonparametricAugmenter)
    with pytest.raises(ValueError):
        build_augmenter("magic", 2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gamma_and_blur_parts(ndim):
    """Gamma and blur: identity at zero draws, learnable, logged, the blur keeps a constant image
    and spreads a point with the variance it claims."""
    from l2s_pipelines.augment import gaussian_blur

    aug = ParametricAugmenter(ndim, noise=False, bias=False, gamma=True, gamma_init=0.2, blur=True,
                              blur_init=1.0, blur_max=2.0)
    x = torch.rand((2, 1) + (12,) * ndim, generator=torch.Generator().manual_seed(0)) + 0.1
    draws = aug.sample(x, torch.Generator().manual_seed(1))
    assert draws["z_gamma"].shape == (2,) and draws["v_blur"].shape == (2,)
    still = {"z_gamma": torch.zeros(2), "v_blur": torch.zeros(2)}
    assert torch.allclose(aug.apply(x, still), x, atol=1e-6)
    y = aug.apply(x, draws)
    assert y.shape == x.shape and not torch.allclose(y, x)
    y.pow(2).mean().backward()
    assert aug.gamma_raw.grad.abs() > 0 and aug.blur_raw.grad.abs() > 0
    log = aug.parameters_log()
    assert log["gamma_spread"] == pytest.approx(0.2) and log["blur_max_vox"] == pytest.approx(1.0)

    const = torch.full((2, 1) + (9,) * ndim, 0.7)
    assert torch.allclose(gaussian_blur(const, torch.tensor([0.5, 1.5])), const, atol=1e-6)
    point = torch.zeros((1, 1) + (31,) * ndim)
    point[(0, 0) + (15,) * ndim] = 1.0
    spread = gaussian_blur(point, torch.tensor([1.5]))[0, 0]
    profile = spread.sum(dim=tuple(range(1, ndim)))
    offsets = torch.arange(31.0) - 15
    assert float((profile * offsets ** 2).sum()) == pytest.approx(1.5 ** 2, rel=1e-3)


def test_gamma_and_blur_refuse_bad_start_values():
    with pytest.raises(ValueError, match="blur_init"):
        ParametricAugmenter(2, blur=True, blur_init=3.0, blur_max=2.0)
    with pytest.raises(ValueError, match="gamma_init"):
        ParametricAugmenter(2, gamma=True, gamma_init=0.0)
