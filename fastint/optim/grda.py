"""GRDA: generalized regularized dual averaging (Chao & Cheng, 2019), the optimizer AutoFIS and AIM
use for their architecture parameters (the gates alpha, the dimension gates beta), because it
drives unneeded entries to exact zeros."""
from __future__ import annotations

import torch


class GRDA(torch.optim.Optimizer):
    """Generalized regularized dual averaging.

    For each parameter ``w`` with initial value ``w0`` and gradient ``g_t`` at its step
    ``t = 0, 1, ...``::

        acc_t = w0 - lr * sum_{s <= t} g_s                           (dual average)
        l1_t  = c * lr^(1/2 + mu) * (t + 1)^mu                       (growing soft threshold)
        w     = sign(acc_t) * max(|acc_t| - l1_t, 0)

    i.e. ``acc += [t == 0] w0 - lr g`` and ``l1 += c lr^(1/2+mu) ((t+1)^mu - t^mu)`` per step:
    entries whose accumulated gradient stays below the threshold become exactly 0 and stay there
    until the accumulated gradient outgrows it. The authors of AutoFIS/AIM use ``lr = 0.1`` with
    ``c = 0.005, mu = 0.9`` (Criteo, stage 1), ``mu = 0.51`` (stage 2), ``c = 0.05, mu = 0.6``
    (Avazu).

    Args:
        params: the parameters (or parameter groups) to optimise; dense gradients only.
        lr: learning rate (> 0).
        c: strength of the L1 threshold (>= 0).
        mu: growth exponent of the threshold, in [0, 1) (> 0.5 sparsifies).
    """

    def __init__(self, params, lr: float = 0.1, c: float = 0.005, mu: float = 0.9):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not c >= 0:
            raise ValueError(f"c must be >= 0, got {c}")
        if not 0 <= mu < 1:
            raise ValueError(f"mu must be in [0, 1), got {mu}")
        super().__init__(params, dict(lr=lr, c=c, mu=mu))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, c, mu = group["lr"], group["c"], group["mu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GRDA does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"], state["l1"] = 0, 0.0
                    state["accumulator"] = p.detach().clone(memory_format=torch.preserve_format)
                t = state["step"]
                acc = state["accumulator"]
                acc.add_(p.grad, alpha=-lr)
                state["l1"] += c * lr ** (0.5 + mu) * ((t + 1) ** mu - t ** mu)
                p.copy_(acc.sign() * (acc.abs() - state["l1"]).clamp_min(0))
                state["step"] = t + 1
        return loss
