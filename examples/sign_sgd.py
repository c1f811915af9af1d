"""Sign-SGD with momentum (signum): the example of "your own optimizer" in the ci profile.

``profiles/ci.yaml`` registers it from params alone::

    optimizers:
      sign_sgd:
        register: {torch_optimizer: examples.sign_sgd.SignSGD, defaults: {lr: 0.001, momentum: 0.9}}

The pipeline tracks this file as a dependency of the ``sign_sgd`` cells (bench/pipeline.py):
editing it makes exactly those cells (and the studies that run every optimizer) stale.
"""

from __future__ import annotations

import torch


class SignSGD(torch.optim.Optimizer):
    """θ ← θ − lr · sign(m), m ← momentum · m + (1 − momentum) · ∇L (m = ∇L when momentum is 0)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum" not in state:
                    state["momentum"] = param.grad.clone()
                else:
                    state["momentum"].lerp_(param.grad, 1 - group["momentum"])
                param.add_(state["momentum"].sign(), alpha=-group["lr"])
        return loss
