"""Pieces of work the cost studies time: random batches, one gradient, the projected derivatives.

A study builds its model with :mod:`bench.models`, draws its inputs here, and hands the
zero-argument callables to :func:`bench.studies.timer.interleaved`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["closure", "derivatives_work", "gradient_work", "random_batch"]


def random_batch(
    shape: tuple[int, ...], batch_size: int, generator: torch.Generator, num_classes: int = 10
) -> tuple[Tensor, Tensor]:
    """Inputs ``[batch_size, *shape]`` ~ N(0, 1) and labels uniform in ``[0, num_classes)``,
    drawn from ``generator`` in that order."""
    x = torch.randn(batch_size, *shape, generator=generator)
    y = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return x, y


def gradient_work(
    model: nn.Module, x: Tensor, y: Tensor, criterion: Callable[..., Tensor] = F.cross_entropy
) -> Callable[[], None]:
    """One plain gradient (forward + backward of ``criterion``, by default the cross-entropy of
    logits [B, C]; a problem's own for a language model's [B, T, V]): the studies' cost unit."""

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()

    return gradient


def closure(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Callable[[], Tensor]:
    """The closure of a ``torch.optim`` step: zero the gradients, cross-entropy forward and
    backward on ``(x, y)``, return the loss."""

    def step_closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return step_closure


def derivatives_work(
    loss_fn: Callable,
    params: dict[str, Tensor],
    groups: list[list[str]],
    direction: dict[str, Tensor],
    order: int,
    *,
    diagonal: bool = False,
) -> Callable[[], object]:
    """One :func:`optimizers.projected_derivatives` call with these arguments."""
    from optimizers import projected_derivatives

    def derivatives() -> object:
        return projected_derivatives(loss_fn, params, groups, direction, order, diagonal=diagonal)

    return derivatives
