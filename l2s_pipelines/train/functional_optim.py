"""Functional SGD and Adam on a dict of parameters, optionally differentiable.

``step(params, grads) -> new_params`` never modifies its inputs. Gradients may carry a graph
(``torch.autograd.grad(..., create_graph=True)``): the returned parameters are then differentiable
functions of them, which is what Learn2Synth's hypergradient flows through. Optimiser state (Adam's
moments) is always stored detached, so the previous moments enter an update as constants.
Not ``torch.optim.*(differentiable=True)``, which fails on ordinary leaf parameters.
"""

from __future__ import annotations

import torch

Params = dict[str, torch.Tensor]


class FunctionalSGD:
    """Plain SGD ``p' = p - lr * g`` (stateless)."""

    kind = "sgd"

    def __init__(self, lr: float = 1e-3):
        self.lr = float(lr)
        self.step_count = 0

    def step(self, params: Params, grads: Params) -> Params:
        """Return the updated parameters (differentiable if ``grads`` are)."""
        self.step_count += 1
        return {k: p - self.lr * grads[k] for k, p in params.items()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def state_meta(self) -> dict:
        return {"kind": self.kind, "lr": self.lr, "step_count": self.step_count}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.step_count = int(meta["step_count"])


class FunctionalAdam:
    """Adam with bias correction and ``sqrt(v_hat + tiny)`` (finite derivative at ``v = 0``).

    ``m' = b1 m + (1 - b1) g``; ``v' = b2 v + (1 - b2) g^2``;
    ``p' = p - lr * m'/(1 - b1^t) / (sqrt(v'/(1 - b2^t) + tiny) + eps)``.
    ``m`` and ``v`` are kept detached between steps.
    """

    kind = "adam"

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 tiny: float = 1e-20):
        self.lr, self.betas, self.eps, self.tiny = float(lr), tuple(betas), float(eps), float(tiny)
        self.step_count = 0
        self.m: Params = {}
        self.v: Params = {}

    def step(self, params: Params, grads: Params) -> Params:
        """Return the updated parameters; store the new moments detached."""
        b1, b2 = self.betas
        t = self.step_count + 1
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        out: Params = {}
        for k, p in params.items():
            g = grads[k]
            m_prev = self.m.get(k)
            v_prev = self.v.get(k)
            m = (1 - b1) * g if m_prev is None else b1 * m_prev + (1 - b1) * g
            v = (1 - b2) * g * g if v_prev is None else b2 * v_prev + (1 - b2) * g * g
            out[k] = p - self.lr * (m / c1) / (torch.sqrt(v / c2 + self.tiny) + self.eps)
            self.m[k], self.v[k] = m.detach(), v.detach()
        self.step_count = t
        return out

    @torch.no_grad()
    def step_(self, params: Params, grads: Params) -> None:
        """The same update as :meth:`step`, in place on ``params`` (not differentiable), with
        ``torch._foreach_*`` kernels: the fast path of plain (non-Learn2Synth) steps."""
        b1, b2 = self.betas
        t = self.step_count + 1
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        keys = list(params)
        for k in keys:
            if k not in self.m:
                self.m[k] = torch.zeros_like(params[k])
                self.v[k] = torch.zeros_like(params[k])
        p = [params[k] for k in keys]
        g = [grads[k].to(params[k].dtype) for k in keys]
        m = [self.m[k] for k in keys]
        v = [self.v[k] for k in keys]
        torch._foreach_lerp_(m, g, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, value=1 - b2)
        denom = torch._foreach_div(v, c2)
        torch._foreach_add_(denom, self.tiny)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(p, m, denom, value=-self.lr / c1)
        self.step_count = t

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Moments as a flat dict ``m.<name>``, ``v.<name>`` (for safetensors)."""
        return {**{f"m.{k}": t for k, t in self.m.items()}, **{f"v.{k}": t for k, t in self.v.items()}}

    def state_meta(self) -> dict:
        return {"kind": self.kind, "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "tiny": self.tiny, "step_count": self.step_count}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.step_count = int(meta["step_count"])
        self.m = {k[2:]: t.clone() for k, t in tensors.items() if k.startswith("m.")}
        self.v = {k[2:]: t.clone() for k, t in tensors.items() if k.startswith("v.")}


def make_optimizer(kind: str, lr: float):
    """``sgd`` or ``adam`` functional optimiser."""
    if kind == "sgd":
        return FunctionalSGD(lr)
    if kind == "adam":
        return FunctionalAdam(lr)
    raise ValueError(f"unknown optimiser {kind!r}; choose sgd or adam")


@torch.no_grad()
def step_module_(module: torch.nn.Module, optimizer, grads: Params) -> None:
    """In-place step of ``module``'s parameters named in ``grads``: the optimiser's foreach
    ``step_`` when it has one (Adam), else :func:`step_module`."""
    if not hasattr(optimizer, "step_"):
        return step_module(module, optimizer, grads)
    optimizer.step_({k: p for k, p in module.named_parameters() if k in grads}, grads)


@torch.no_grad()
def step_module(module: torch.nn.Module, optimizer, grads: Params) -> None:
    """Ordinary (non-differentiable) in-place step of ``module``'s parameters named in ``grads``."""
    params = {k: p for k, p in module.named_parameters() if k in grads}
    new = optimizer.step({k: p.detach() for k, p in params.items()}, grads)
    for k, p in params.items():
        p.copy_(new[k])
