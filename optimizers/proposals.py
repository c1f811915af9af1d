"""Direction rules: the first-order proposals u of the partitioned Newton step (METHOD.md §4).

Each rule maps the current gradients (one tensor per parameter, same shapes as θ) and its own
buffers to the direction u, a list of tensors of the same shapes. The optimizer then moves
*against* u with one step size per subset: θ_s ← θ_s − λ1 η_s u_s. Only the direction of each
u_s matters to the solved step (η_s absorbs its scale), except between recomputations, where η
is reused with the current u.

Rules (names as accepted by ``PartitionedNewton(proposal=...)``):

==========  =====================================================================
gradient    u = g
momentum    buf ← β buf + (1 − τ) g,  u = buf   (β = ``momentum``, τ = ``dampening``;
            buf starts at 0, so u_1 = (1 − τ) g: METHOD.md's recursion from zero)
adam        m ← β1 m + (1 − β1) g,  v ← β2 v + (1 − β2) g²,
            u = (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)   (t = number of applied updates)
==========  =====================================================================

Skipping without a host synchronisation: every rule takes an optional ``keep``, a 0-d tensor
equal to 1 (apply the update) or 0 (leave every buffer unchanged). When ``keep`` is 0 the caller
must have replaced the gradients by zeros (they may have been non-finite); the rules then only
multiply their buffers by 1. The buffers are updated in place and, for ``momentum``, returned
as u (u aliases the buffers).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PROPOSALS", "adam_direction", "gradient_direction", "momentum_direction"]

PROPOSALS = ("gradient", "momentum", "adam")


def _kept(factor: float, keep: Tensor | None) -> float | Tensor:
    """``factor`` when the update is applied (keep = 1), 1 when it is skipped (keep = 0).

    Written keep·factor + (1 − keep) so that both cases are exact in floating point."""
    if keep is None:
        return factor
    return keep * factor + (1.0 - keep)


def gradient_direction(grads: list[Tensor]) -> list[Tensor]:
    """u = g (the gradient itself; no buffers)."""
    return grads


def momentum_direction(
    grads: list[Tensor],
    buffers: list[Tensor],
    momentum: float,
    dampening: float,
    keep: Tensor | None = None,
) -> list[Tensor]:
    """Heavy ball: buf ← β buf + (1 − τ) g in place, u = buf (β = ``momentum``, τ = ``dampening``).

    ``grads`` and ``buffers`` are lists of tensors of matching shapes; ``buffers`` start at zero.
    """
    torch._foreach_mul_(buffers, _kept(momentum, keep))
    torch._foreach_add_(buffers, grads, alpha=1.0 - dampening)
    return buffers


def adam_direction(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    count: Tensor,
    betas: tuple[float, float],
    eps: float,
    keep: Tensor | None = None,
) -> list[Tensor]:
    """Adam's direction u = m̂ / (√v̂ + ε), the step of ``torch.optim.Adam`` divided by its lr.

    ``count`` is a 0-d tensor counting the applied updates (t); it is incremented in place by
    ``keep`` (by 1 without ``keep``), so skipped steps do not advance the bias correction.
    Returns new tensors (u does not alias m or v).
    """
    beta1, beta2 = betas
    count.add_(1 if keep is None else keep)
    t = count.clamp(min=1)  # t = 0 only if every step so far was skipped; then m = v = 0
    bias1 = 1.0 - torch.pow(beta1, t)
    bias2 = 1.0 - torch.pow(beta2, t)
    torch._foreach_mul_(exp_avgs, _kept(beta1, keep))
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, _kept(beta2, keep))
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    directions = []
    for m, v in zip(exp_avgs, exp_avg_sqs, strict=True):
        denominator = (v / bias2).sqrt_().add_(eps)
        directions.append((m / bias1).div_(denominator))
    return directions
