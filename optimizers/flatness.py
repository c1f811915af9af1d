r"""Which subsets the loss does not numerically depend on (METHOD.md §4, "a constant subset").

A subset T_s along which L is constant (a bias in front of a BatchNorm, a parameter the loss
never reads, a direction u_s = 0) has ḡ_s, H̄_s· and D^3_sss equal to zero in exact arithmetic;
computed, they are rounding noise, and a solve on them returns an arbitrarily large η_s. The
noise is not small in absolute terms, nor relative to the subset's own gradient (‖∇L|T_s‖‖u_s‖
is noise times noise), so the test compares the gradient with the magnitude of the terms it is
the rounding residue of.

**The flatness ratio** of subset s. Let z be the output of an operator that reads a tensor T of
T_s (the *consumer*: ``conv2d``, ``linear``, ``batch_norm``, …; through operators that keep T's
shape, such as the a·θ̃ + b of METHOD.md §6, the consumer is the first one that does not), δ_z
= ∂L/∂z its adjoint, and J_T = ∂z/∂T. Then ∇_T L = Σ_z J_Tᵀ δ_z, a sum whose terms cancel for a
flat T (∇_b L = Σ_{n,h,w} δ_{n,c,h,w} = 0 for a conv bias before a BatchNorm: the adjoint of
a BatchNorm input sums to zero over the batch). The magnitude of T's gradient is

    M_T = Σ_z |J_Tᵀ |δ_z||  (elementwise),   a lower bound of the terms' Σ |J_T| |δ_z|,

and

    ρ_s = min(1, Σ_{T∈T_s} ‖∇_T L‖₁ / Σ_{T∈T_s} ‖M_T‖₁),

with ρ_s = 0 when u_s = 0 (φ does not depend on η_s at all) or when L does not read T_s
(∇ = M = 0), and ρ_s = 1 when M = 0 but ∇ ≠ 0. A rounding-level gradient has ρ_s ~ eps of the
dtype (measured 0.03–0.3 eps for the conv biases before BatchNorms of small CNNs and of a
residual CNN, float32 and float64); a genuine one is far above (measured ≥ 5·10⁴ eps, i.e.
≥ 6·10⁻³ in float32, on the same CNNs, a character transformer and the digits MLP). The subset
is **flat** when ρ_s ≤ FLAT_TOLERANCE · eps (64 eps: two decades above the noise measured,
three below the smallest genuine ratio). Because M_T is a lower bound of the true magnitude,
an error in it only makes the test more conservative (fewer subsets declared flat). Two
approximations: an operator that keeps T's shape is taken as elementwise (a square matmul
W @ W is not; the magnitude is then taken at the next consumer: conservative), and the local
pass of a consumer whose input also depends on T (a tied embedding read again by the output
layer) includes that path too, a gradient-sized term that cannot make a genuine gradient look
like rounding (that would take ~1/(64 eps) of cancellation in it).

Why this test: it is invariant under METHOD.md §6. With θ_s = a_s θ̃_s + b_s the forward values
and every δ_z are unchanged, ∇_θ̃ L = a_s ∇_θ L and M̃ = |a_s| M, so ρ_s is unchanged (up to
rounding). It is a first-order test of the whole tensor (every coordinate of ∇_{T_s} L at
rounding level, not only ⟨∇L, u_s⟩): a parameter whose entire gradient cancels to rounding at a
generic θ is one the loss does not depend on (a symmetry), along which every projected
derivative vanishes; magnitudes of H̄_s· and D^3_sss would need nested passes over the
consumers' double backward, at a cost of order S passes more.

Cost: one extra reverse pass through the forward graph (for δ_z and ∇_T L) and one local
reverse pass per consumer (the operator alone); nothing read back to the host.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .derivatives import LossFn, projected_derivatives

__all__ = [
    "FLAT_TOLERANCE",
    "ConsumerTracker",
    "flat_subsets",
    "flatness_ratios",
    "projected_derivatives_with_flatness",
]

FLAT_TOLERANCE = 64.0
"""Subset s is flat when ρ_s ≤ FLAT_TOLERANCE · eps of the parameters' dtype (flat_subsets)."""


def _tensors(value: Any) -> Iterator[Tensor]:
    """The tensors inside an argument (nested lists, tuples and dicts)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class ConsumerTracker(TorchFunctionMode):
    """Records the consumers of the tracked tensors while a loss is evaluated.

    ``tracked`` maps a parameter name to the tensor the loss reads for it. A torch call reading
    a tracked tensor whose single output has that tensor's shape propagates the tracking to its
    output (an elementwise map such as a·θ̃ + b); any other call is a consumer, and each of its
    outputs that carries a graph is recorded in ``consumers`` as (output, names read).
    """

    def __init__(self, tracked: Mapping[str, Tensor]):
        super().__init__()
        self._names: dict[int, set[str]] = {}
        self._alive: list[Tensor] = []  # keeps the ids of ``_names`` valid
        for name, tensor in tracked.items():
            self._track(tensor, {name})
        self.consumers: list[tuple[Tensor, frozenset[str]]] = []

    def _track(self, tensor: Tensor, names: set[str]) -> None:
        self._names.setdefault(id(tensor), set()).update(names)
        self._alive.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        read = [t for t in _tensors((args, kwargs)) if id(t) in self._names]
        if not read:
            return out
        outputs = [o for o in _tensors(out) if o.grad_fn is not None]
        names = set().union(*(self._names[id(t)] for t in read))
        if isinstance(out, Tensor) and out.grad_fn is not None and out.shape == read[0].shape:
            self._track(out, names)
        else:
            self.consumers.extend((o, frozenset(names)) for o in outputs)
        return out


def flatness_ratios(
    loss: Tensor,
    tracked: Mapping[str, Tensor],
    groups: Sequence[Sequence[str]],
    direction: Mapping[str, Tensor],
    consumers: Sequence[tuple[Tensor, frozenset[str]]],
) -> Tensor:
    """ρ [S] of the module docstring, in the dtype and on the device of the loss.

    Args:
        loss: the scalar loss, with its graph (retained: the caller's passes follow).
        tracked: name → the tensor the loss read for that parameter (θ + η_s u_s).
        groups: the subsets T_1..T_S (lists of names).
        direction: u, name → tensor.
        consumers: ``ConsumerTracker.consumers`` of the evaluation that produced ``loss``.
    """
    names = [name for group in groups for name in group]
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    gradient_l1 = dict.fromkeys(names, zero)
    magnitude_l1 = dict.fromkeys(names, zero)
    live = [(z, read) for z, read in consumers if z.requires_grad]
    if loss.requires_grad:
        inputs = [tracked[name] for name in names] + [z for z, _ in live]
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        for name, grad in zip(names, grads[: len(names)], strict=True):
            if grad is not None:
                gradient_l1[name] = grad.abs().sum()
        for (z, read), delta in zip(live, grads[len(names) :], strict=True):
            if delta is None:
                continue
            wanted = [name for name in names if name in read]
            local = torch.autograd.grad(
                z, [tracked[n] for n in wanted], delta.abs(), retain_graph=True, allow_unused=True
            )
            for name, value in zip(wanted, local, strict=True):
                if value is not None:
                    magnitude_l1[name] = magnitude_l1[name] + value.abs().sum()
    ratios = []
    for group in groups:
        gradient = torch.stack([gradient_l1[n] for n in group]).sum()
        magnitude = torch.stack([magnitude_l1[n] for n in group]).sum()
        moving = torch.stack([direction[n].detach().abs().sum() for n in group]).sum() > 0
        fallback = (gradient > 0).to(loss.dtype)  # M = 0: 0 if ∇ = 0 too, else 1 (not flat)
        safe = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
        ratio = torch.where(magnitude > 0, gradient / safe, fallback)
        ratios.append(torch.where(moving, ratio.clamp(max=1.0), zero))
    return torch.stack(ratios).detach()


def flat_subsets(ratios: Tensor, dtype: torch.dtype) -> Tensor:
    """The mask ρ_s ≤ FLAT_TOLERANCE · eps(dtype) [S] (bool), ``dtype`` that of the parameters
    the ratios were computed in."""
    return ratios <= FLAT_TOLERANCE * torch.finfo(dtype).eps


def projected_derivatives_with_flatness(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    groups: Sequence[Sequence[str]],
    direction: Mapping[str, Tensor],
    order: int = 3,
    **options: Any,
) -> tuple[tuple[Tensor, ...], Tensor]:
    """``(projected_derivatives(...), ρ)``: the derivatives and the flatness ratios ρ [S] of the
    module docstring, from the same single evaluation of ``loss_fn``.

    The arguments are those of :func:`optimizers.derivatives.projected_derivatives`, its
    keyword options (``diagonal``, ``module``, …) passed on as they are. ``loss_fn``
    is evaluated under a :class:`ConsumerTracker`, and ρ costs one more reverse pass through
    its graph plus one local pass per consumer; the derivatives are computed by the very same
    operations as without it (the tracker only records: same values, to the bit).
    """
    names = [name for group in groups for name in group]
    found: dict[str, Tensor] = {}

    def tracked_loss(shifted: dict[str, Tensor]) -> Tensor:
        tracker = ConsumerTracker({name: shifted[name] for name in names if name in shifted})
        with tracker:
            loss = loss_fn(shifted)
        if isinstance(loss, Tensor) and loss.numel() == 1:  # else projected_derivatives raises
            found["ratios"] = flatness_ratios(
                loss.reshape(()), shifted, groups, direction, tracker.consumers
            )
        return loss

    derivatives = projected_derivatives(tracked_loss, params, groups, direction, order, **options)
    return derivatives, found["ratios"]
