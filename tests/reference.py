"""Independent slow references and a zoo of small models for the derivative tests.

The reference builds φ(η) = L(θ + Σ_s η_s u_s) explicitly and differentiates it with
``torch.autograd.functional`` (jacobian / hessian, nested jacobians for orders 3–4). It shares
nothing with the engine but torch's operator derivatives, which are therefore confirmed
separately by central finite differences of the order below (test_derivatives.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.functional import hessian, jacobian

from optimizers import partition
from optimizers.derivatives import functional_loss
from optimizers.exact_ops import exact_higher_order

DT = torch.float64


def fresh_seed() -> int:
    """A new seed every run, or HOBENCH_SEED to replay a failure."""
    return int(os.environ.get("HOBENCH_SEED", int.from_bytes(os.urandom(4), "little")))


def phi(loss_fn, params, groups, direction) -> Callable[[Tensor], Tensor]:
    """η ↦ L(θ + Σ_s η_s u_s), built without the engine."""

    def function(eta: Tensor) -> Tensor:
        moved = dict(params)
        for s, group in enumerate(groups):
            for name in group:
                moved[name] = params[name] + eta[s] * direction[name]
        return loss_fn(moved)

    return function


def reference_derivatives(loss_fn, params, groups, direction, order: int) -> list[Tensor]:
    """(D^1, …, D^order) by torch.autograd.functional on φ, inside exact_higher_order so that
    the operators with wrong native third derivatives use their exact decompositions."""
    f = phi(loss_fn, params, groups, direction)
    eta = torch.zeros(len(groups), dtype=next(iter(params.values())).dtype)
    with exact_higher_order():
        out = [jacobian(f, eta), hessian(f, eta)]
        if order >= 3:
            out.append(jacobian(lambda e: hessian(f, e, create_graph=True), eta))
        if order >= 4:
            third = lambda e: jacobian(
                lambda e2: hessian(f, e2, create_graph=True), e, create_graph=True
            )
            out.append(jacobian(third, eta))
    return out[:order]


def directional_derivative(loss_fn, params, direction, order: int) -> Tensor:
    """L^{(order)}(θ)[u, …, u] by nested forward mode (torch.func.jvp), another route."""

    def along(t: Tensor) -> Tensor:
        return loss_fn(
            {n: p + t * direction.get(n, torch.zeros_like(p)) for n, p in params.items()}
        )

    f = along
    for _ in range(order):
        f = (lambda g: lambda t: torch.func.jvp(g, (t,), (torch.ones_like(t),))[1])(f)
    with exact_higher_order():
        return f(torch.zeros((), dtype=DT))


def relative_error(a: Tensor, b: Tensor) -> float:
    scale = max(b.norm().item(), 1e-300)
    return ((a - b).norm() / scale).item()


# ----------------------------------------------------------------------------- model zoo
class Residual(nn.Module):
    """x + f(x): a residual connection."""

    def __init__(self, width: int):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, x):
        return x + self.inner(x)


@dataclass(frozen=True)
class Case:
    """A declarative test case: model, inputs, targets, loss."""

    name: str
    build: Callable[[torch.Generator], tuple[nn.Module, tuple[Tensor, ...], Tensor]]
    criterion: Callable[[Tensor, Tensor], Tensor]
    smooth: bool  # no kinks (finite differences are reliable)


def _classification(model, shape, classes, gen, batch=4):
    x = torch.randn(batch, *shape, dtype=DT, generator=gen)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return model.to(DT), (x,), y


def _regression(model, shape, outputs, gen, batch=4):
    x = torch.randn(batch, *shape, dtype=DT, generator=gen)
    y = torch.randn(batch, outputs, dtype=DT, generator=gen)
    return model.to(DT), (x,), y


def _randomise(model: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7 + (0.5 if p.dim() == 1 else 0.0))
    return model


CASES = [
    Case(
        "tanh_mlp",
        lambda g: _classification(
            _randomise(
                nn.Sequential(
                    nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)
                ),
                g,
            ),
            (5,),
            3,
            g,
        ),
        F.cross_entropy,
        True,
    ),
    Case(
        "elu_mlp_mse",
        lambda g: _regression(
            _randomise(nn.Sequential(nn.Linear(4, 6), nn.ELU(), nn.Linear(6, 2)), g), (4,), 2, g
        ),
        F.mse_loss,
        False,
    ),
    Case(
        "conv_maxpool",
        lambda g: _classification(
            _randomise(
                nn.Sequential(
                    nn.Conv2d(2, 3, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)
                ),
                g,
            ),
            (2, 6, 6),
            3,
            g,
        ),
        F.cross_entropy,
        False,
    ),
    Case(
        "layernorm",
        lambda g: _classification(
            _randomise(
                nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)), g
            ),
            (5,),
            3,
            g,
        ),
        F.cross_entropy,
        True,
    ),
    Case(
        "batchnorm_train",
        lambda g: _classification(
            _randomise(
                nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)), g
            ).train(),
            (5,),
            3,
            g,
        ),
        F.cross_entropy,
        True,
    ),
    Case(
        "residual_softplus_mse",
        lambda g: _regression(
            _randomise(
                nn.Sequential(nn.Linear(3, 4), nn.Softplus(), Residual(4), nn.Linear(4, 2)), g
            ),
            (3,),
            2,
            g,
        ),
        F.mse_loss,
        True,
    ),
]
CASES_BY_NAME = {case.name: case for case in CASES}


def partitions_for(model: nn.Module, gen: torch.Generator) -> dict[str, list[list[str]]]:
    """Every partition kind on this model, including a random user mapping."""
    names = partition.trainable_names(model)
    labels = torch.randint(0, 3, (len(names),), generator=gen).tolist()
    mapping = dict(zip(names, labels, strict=True))
    return {
        "per_tensor": partition.per_tensor(model),
        "per_module": partition.per_module(model),
        "single": partition.single(model),
        "weights_biases": partition.weights_biases(model),
        "blocks2": partition.blocks(model, 2),
        "mapping": partition.from_mapping(model, mapping),
    }


def setup(case: Case, seed: int):
    """(model, loss_fn, params, direction) of a case at a seed."""
    gen = torch.Generator().manual_seed(seed)
    model, inputs, targets = case.build(gen)
    loss_fn = functional_loss(model, case.criterion, inputs, targets)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    direction = {n: torch.randn(p.shape, dtype=DT, generator=gen) for n, p in params.items()}
    return model, loss_fn, params, direction, gen
