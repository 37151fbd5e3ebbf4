"""One Learn2Synth iteration (hypergradient of the real loss with respect to the augmenter).

Steps (docs/learn2synth.md, "One training iteration"):

1. ``x_a = A_theta(x_s)`` with fixed random draws; ``l_s = L(S(phi; x_a), y_s)``.
2. ``g = grad(l_s, phi, create_graph=True)``; ``phi' = update(phi, g)`` (functional SGD/Adam).
3. ``l_r = L(S(phi'; x_r), y_r)``; ``theta.grad = grad(alpha * l_r, theta)``.
4. The caller copies the detached ``phi'`` into the segmenter and steps theta.

Work sharing: the synthetic forward/backward of step 1-2 *is* the segmenter's ordinary training
step (``phi'`` becomes the new weights), so no separate SynthSeg pass is made. The real pass in
step 3 runs on detached copies of ``phi'`` (a plain forward/backward giving ``v = dl_r/dphi'``);
the hypergradient is then one vector-Jacobian product ``v^T dphi'/dtheta`` through the kept
synthetic graph. This is exact (same value as differentiating ``l_r(phi'(theta))`` end to end) but
frees the real pass's activations before the double backward runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]


@dataclass
class L2SStepResult:
    """Outcome of :func:`l2s_iteration`: losses (floats) and the detached updated parameters."""

    synthetic_loss: float
    real_loss: float
    params: Params


def detached_params(module: nn.Module) -> Params:
    """Trainable parameters of ``module`` as detached leaves that require grad."""
    return {k: p.detach().requires_grad_(True) for k, p in module.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_params(module: nn.Module, params: Params) -> None:
    """Copy ``params`` (by name) into ``module``'s parameters in place."""
    own = dict(module.named_parameters())
    for k, v in params.items():
        own[k].copy_(v)


def l2s_iteration(segmenter: nn.Module, augmenter: nn.Module, optimizer, x_s: torch.Tensor,
                  y_s: torch.Tensor, x_r: torch.Tensor, y_r: torch.Tensor, *,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], alpha: float = 1.0,
                  draws: dict | None = None, generator: torch.Generator | None = None,
                  params: Params | None = None, update_segmenter: bool = True) -> L2SStepResult:
    """Run one Learn2Synth iteration and set ``.grad`` of every trainable augmenter parameter.

    Parameters
    ----------
    segmenter: network S, called as ``functional_call(segmenter, params, (x,))``.
    augmenter: A_theta with ``sample(x, generator)`` and ``apply(x, draws)``.
    optimizer: functional optimiser (:mod:`.functional_optim`); its state advances by one step.
    x_s, y_s: synthetic images ``(B, 1, *sp)`` and targets ``(B, *sp)`` (channel indices).
    x_r, y_r: real images ``(B', 1, *sp')`` and targets ``(B', *sp')`` (IGNORE_INDEX allowed).
    loss_fn: ``loss_fn(logits, target) -> scalar``.
    alpha: weight of the real loss in theta's gradient.
    draws: fixed random draws of the augmenter (sampled with ``generator`` when None).
    params: segmenter parameters phi (default: the module's current ones, detached).
    update_segmenter: copy ``phi'`` into ``segmenter`` before returning.
    """
    if params is None:
        params = detached_params(segmenter)
    theta = [p for p in augmenter.parameters() if p.requires_grad]
    if draws is None:
        draws = augmenter.sample(x_s, generator)
    x_a = augmenter.apply(x_s, draws)
    l_s = loss_fn(functional_call(segmenter, params, (x_a,)), y_s)
    names = list(params)
    grads = torch.autograd.grad(l_s, [params[k] for k in names], create_graph=True)
    new = optimizer.step(params, dict(zip(names, grads)))

    real_params = {k: new[k].detach().requires_grad_(True) for k in names}
    l_r = loss_fn(functional_call(segmenter, real_params, (x_r,)), y_r)
    v = torch.autograd.grad(l_r, [real_params[k] for k in names])
    hyper = torch.autograd.grad([new[k] for k in names], theta, grad_outputs=[alpha * t for t in v],
                                allow_unused=True)
    for p, h in zip(theta, hyper):
        p.grad = torch.zeros_like(p) if h is None else h.detach()

    out = {k: new[k].detach() for k in names}
    if update_segmenter:
        load_params(segmenter, out)
    return L2SStepResult(float(l_s.detach()), float(l_r.detach()), out)
