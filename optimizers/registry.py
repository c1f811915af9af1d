"""Optimizer registry: one name → one factory, for the benchmark pipeline and the contract tests.

    >>> import torch.nn as nn
    >>> from optimizers.registry import available, make
    >>> "partitioned_newton" in available()
    True
    >>> model = nn.Linear(3, 2)
    >>> opt = make("sgd", model, {"lr": 0.05})          # momentum 0.9 by default
    >>> opt.lr
    0.05

``make(name, model, hyperparameters, criterion=F.cross_entropy)`` returns a
:class:`~optimizers.baselines.TrainingOptimizer`: ``step(batch, curvature_batch)`` returns the
detached loss of ``batch`` before the update; ``lr`` (get/set) is the global learning rate (λ1
for ours); ``state_dict``/``load_state_dict`` round-trip; ``diagnostics()`` gives flat scalars
(``eta/<subset>`` for ours, ``{}`` for the baselines). Hyperparameters are the spec's
``defaults`` overridden by the given mapping; a key not in ``defaults`` is a ValueError naming
it and the optimizer, as is a negative or non-finite ``lr``.

Entries (METHOD.md §4 and §7):

=============================== ==================================================================
sgd                             torch.optim.SGD, momentum 0.9
adam                            torch.optim.Adam
kfac                            ASDL's KfacGradientMaker + SGD momentum 0.9 (damping grid too)
adahessian                      pytorch_optimizer.AdaHessian (Hutchinson diag(∇²L), 1 probe)
shampoo                         pytorch_optimizer.Shampoo (plain Shampoo, no grafting)
partitioned_newton              ours: per-tensor subsets, order-3 cubic step (λ_int = 1)
partitioned_newton_diag         ours with diag(H̄) only (no cross-subset terms)
partitioned_newton_order2       ours with λ_int = 0: the paper's order-2 step H̄⁻¹ḡ, then the clip
cauchy                          ours with S = 1 (partition "single") and λ_int = 0
partitioned_newton_saddle_free  ours with λ_int = 0 and the saddle-free step |H̄|⁻¹ḡ
=============================== ==================================================================

Without the cubic term H̄ is indefinite at almost every recomputation on tanh/ELU nets
(METHOD.md §4): ``partitioned_newton_order2`` solves H̄η = ḡ whatever its inertia (the
PartitionedNewton default ``indefinite="solve"``, as the paper's reference implementation
does) and ``partitioned_newton_saddle_free`` takes |H̄|⁻¹ḡ (``indefinite="saddle_free"``);
both in scale-covariant variables, so they keep METHOD.md §6.

``cauchy`` is the Cauchy step: with one subset, η = ḡ/H̄ is the exact minimiser of the
quadratic model along the proposed direction u. It keeps the *same* proposal as
``partitioned_newton`` (heavy-ball momentum by default, METHOD.md §4), so it differs from
``partitioned_newton_order2`` only in the partition; with ``proposal="gradient"`` it is
Cauchy's steepest-descent step in the textbook sense.

The tune stage sweeps the spec's ``grid``: a mapping hyperparameter → list of values whose
Cartesian product is tried (``{"lr": lr_grid}`` unless more axes are given; kfac also sweeps
``damping``). ``lr_grid`` is ``grid["lr"]``. The built-in entries' grids are data, in the
package file ``optimizers/search_spaces.json`` (``load_search_spaces()`` reads it).

kfac needs ASDL and adahessian/shampoo need pytorch-optimizer, both in the ``baselines`` extra
(``pip install 'hobench[baselines]'``); without them every other entry works, and ``make`` of
one of these three raises ``optimizers.baselines.MissingDependencyError`` (an ImportError)
saying what to install.

Benchmarking your own optimizer: register a factory ``factory(model, hyperparameters,
criterion) -> TrainingOptimizer`` under a new name, then name it in params.yaml::

    import torch
    from optimizers.registry import TrainingOptimizer, register_optimizer

    def make_rmsprop(model, hyperparameters, criterion):
        optimizer = torch.optim.RMSprop(model.parameters(), **hyperparameters)
        return TrainingOptimizer("rmsprop", model, optimizer, criterion)

    register_optimizer(
        "rmsprop", make_rmsprop, defaults={"lr": 1e-3, "alpha": 0.99},
        lr_grid=[1e-4, 1e-3, 1e-2], description="torch.optim.RMSprop",
    )

For a ``torch.optim``-style class the shortcut ``register_torch_optimizer("rmsprop",
"torch.optim.RMSprop", defaults=..., lr_grid=..., description=...)`` does the same from data
alone (the class may be given by its dotted path), e.g. from an entry in params.yaml.
Registering an existing name raises ValueError unless ``replace=True``.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .baselines import (
    PARTITIONED_NEWTON_DEFAULTS,
    Criterion,
    HutchinsonOptimizer,
    KfacOptimizer,
    PartitionedNewtonOptimizer,
    TrainingOptimizer,
    optional_import,
)

__all__ = [
    "OptimizerSpec",
    "TrainingOptimizer",
    "available",
    "get_spec",
    "load_search_spaces",
    "make",
    "register_optimizer",
    "register_torch_optimizer",
]

Factory = Callable[[nn.Module, dict[str, Any], Criterion], TrainingOptimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer.

    Attributes:
        name: the registry name (params.yaml, results paths).
        factory: ``factory(model, hyperparameters, criterion) -> TrainingOptimizer``; receives
            the full hyperparameter dict (defaults overridden by the user's values).
        defaults: every accepted hyperparameter with its default value (must contain ``lr``).
        grid: hyperparameter → values swept by the tune stage (Cartesian product); has ``lr``.
        description: one line for reports.
    """

    name: str
    factory: Factory
    defaults: Mapping[str, Any]
    grid: Mapping[str, tuple[Any, ...]]
    description: str
    builtin: bool = field(default=False, compare=False)

    @property
    def lr_grid(self) -> list[float]:
        return list(self.grid["lr"])


_REGISTRY: dict[str, OptimizerSpec] = {}


def register_optimizer(
    name: str,
    factory: Factory | str,
    *,
    defaults: Mapping[str, Any],
    lr_grid: Sequence[float],
    description: str,
    grid: Mapping[str, Sequence[Any]] | None = None,
    replace: bool = False,
    builtin: bool = False,
) -> OptimizerSpec:
    """Register ``factory`` under ``name`` and return its spec.

    ``factory`` may be a dotted path (``"pkg.mod:make"`` or ``"pkg.mod.make"``), imported here.

    ``grid`` adds tuning axes besides ``lr`` (each a key of ``defaults``). Raises ValueError for
    an existing name (unless ``replace=True``), a ``defaults`` without ``lr``, an empty or
    negative ``lr_grid``, or a grid axis that is not a hyperparameter.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"optimizer name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"optimizer {name!r} is already registered (pass replace=True)")
    if isinstance(factory, str):
        factory = _resolve(factory)
    if not callable(factory):
        raise ValueError(f"{name}: factory must be callable, got {factory!r}")
    defaults = dict(defaults)
    if "lr" not in defaults:
        raise ValueError(f"{name}: defaults must contain 'lr', got keys {sorted(defaults)}")
    _check_lr(name, defaults["lr"])
    lr_values = tuple(float(v) for v in lr_grid)
    if not lr_values:
        raise ValueError(f"{name}: lr_grid is empty")
    for value in lr_values:
        _check_lr(name, value)
    axes = {"lr": lr_values}
    for key, values in (grid or {}).items():
        if key == "lr":
            raise ValueError(f"{name}: give the learning rates as lr_grid, not grid['lr']")
        if key not in defaults:
            raise ValueError(f"{name}: grid axis {key!r} is not a hyperparameter of {name}")
        if isinstance(values, str) or not list(values):
            raise ValueError(f"{name}: grid axis {key!r} must be a non-empty list, got {values!r}")
        axes[key] = tuple(values)
    spec = OptimizerSpec(
        name=name,
        factory=factory,
        defaults=MappingProxyType(defaults),
        grid=MappingProxyType(axes),
        description=str(description),
        builtin=builtin,
    )
    _REGISTRY[name] = spec
    return spec


def register_torch_optimizer(
    name: str,
    optimizer_class: type[torch.optim.Optimizer] | str,
    *,
    defaults: Mapping[str, Any],
    lr_grid: Sequence[float],
    description: str,
    grid: Mapping[str, Sequence[Any]] | None = None,
    replace: bool = False,
) -> OptimizerSpec:
    """Register ``optimizer_class(model.parameters(), **hyperparameters)`` under ``name``.

    ``optimizer_class`` may be a dotted path (``"torch.optim.RMSprop"``, ``"pkg.mod:Class"``).
    """
    cls = _resolve(optimizer_class) if isinstance(optimizer_class, str) else optimizer_class
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"{name}: {optimizer_class!r} is not a torch.optim.Optimizer subclass")

    def factory(model, hyperparameters, criterion):
        return TrainingOptimizer(name, model, cls(model.parameters(), **hyperparameters), criterion)

    return register_optimizer(
        name,
        factory,
        defaults=defaults,
        lr_grid=lr_grid,
        description=description,
        grid=grid,
        replace=replace,
    )


def available() -> list[str]:
    """Registered names, built-ins first in registration order, then user entries."""
    return list(_REGISTRY)


def get_spec(name: str) -> OptimizerSpec:
    """The spec registered under ``name``; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(available())}") from None


def make(
    name: str,
    model: nn.Module,
    hyperparameters: Mapping[str, Any] | None = None,
    *,
    criterion: Criterion = F.cross_entropy,
) -> TrainingOptimizer:
    """Build the optimizer ``name`` for ``model`` (see the module docstring)."""
    spec = get_spec(name)
    given = dict(hyperparameters or {})
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter {unknown[0]!r} for optimizer {name!r}; "
            f"known: {sorted(spec.defaults)}"
        )
    merged = {**spec.defaults, **given}
    _check_lr(name, merged["lr"])
    return spec.factory(model, merged, criterion)


def _check_lr(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: lr must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: lr must be a finite number >= 0, got {value!r}")


def _resolve(path: str) -> Any:
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import {path!r}: {error}") from None


# -- built-in entries -----------------------------------------------------------------------

SEARCH_SPACES_FILE = "search_spaces.json"  # package data of ``optimizers`` (pyproject.toml)


def load_search_spaces() -> dict[str, dict[str, list[Any]]]:
    """The built-in entries' tuning grids: name → {hyperparameter: values, in order}, read from
    the package data file ``optimizers/search_spaces.json`` (``lr`` is the entry's lr_grid)."""
    resource = importlib.resources.files(__package__).joinpath(SEARCH_SPACES_FILE)
    return json.loads(resource.read_text(encoding="utf-8"))["search_spaces"]


_SEARCH_SPACES = load_search_spaces()


def _register_builtin(
    name: str, factory: Factory, *, defaults: Mapping[str, Any], description: str
) -> OptimizerSpec:
    """``register_optimizer`` for a built-in entry, its tuning grid read from search_spaces.json
    (``lr`` is its lr_grid, any other axis goes to ``grid``)."""
    if name not in _SEARCH_SPACES or "lr" not in _SEARCH_SPACES[name]:
        raise ValueError(f"{SEARCH_SPACES_FILE} has no 'lr' grid for the built-in {name!r}")
    axes = dict(_SEARCH_SPACES[name])
    return register_optimizer(
        name,
        factory,
        defaults=defaults,
        lr_grid=axes.pop("lr"),
        grid=axes,
        description=description,
        builtin=True,
    )


def _make_sgd(model, hp, criterion):
    return TrainingOptimizer("sgd", model, torch.optim.SGD(model.parameters(), **hp), criterion)


_register_builtin(
    "sgd",
    _make_sgd,
    defaults={
        "lr": 0.01,
        "momentum": 0.9,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
    },
    description="SGD with heavy-ball momentum 0.9 (torch.optim.SGD)",
)


def _make_adam(model, hp, criterion):
    hp = {**hp, "betas": tuple(hp["betas"])}
    return TrainingOptimizer("adam", model, torch.optim.Adam(model.parameters(), **hp), criterion)


_register_builtin(
    "adam",
    _make_adam,
    defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    description="Adam (torch.optim.Adam)",
)


def _make_kfac(model, hp, criterion):
    return KfacOptimizer("kfac", model, criterion, **hp)


_register_builtin(
    "kfac",
    _make_kfac,
    defaults={
        "lr": 0.03,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "damping": 0.1,
        "curvature_update_every": 10,
        "inverse_update_every": 100,
        "statistics_decay": 0.05,
        "seed": None,
    },
    description="K-FAC (ASDL KfacGradientMaker, MC Fisher) + SGD momentum 0.9",
)


def _pytorch_optimizer(needed_by: str) -> ModuleType:
    return optional_import("pytorch_optimizer", package="pytorch-optimizer", needed_by=needed_by)


def _make_adahessian(model, hp, criterion):
    AdaHessian = _pytorch_optimizer("adahessian").AdaHessian
    hp = dict(hp)
    seed = hp.pop("seed")
    optimizer = AdaHessian(model.parameters(), betas=tuple(hp.pop("betas")), **hp)
    return HutchinsonOptimizer("adahessian", model, optimizer, criterion, seed=seed)


# The library's defaults but eps 1e-8 instead of 1e-16 (a zero Hutchinson estimate would
# otherwise blow the step up); no spatial averaging of conv kernels (the library has none).
_register_builtin(
    "adahessian",
    _make_adahessian,
    defaults={
        "lr": 0.1,
        "betas": (0.9, 0.999),
        "weight_decay": 0.0,
        "hessian_power": 1.0,
        "update_period": 1,
        "num_samples": 1,
        "eps": 1e-8,
        "seed": None,
    },
    description="AdaHessian (pytorch_optimizer.AdaHessian, Hutchinson diagonal, Rademacher probes)",
)


def _make_shampoo(model, hp, criterion):
    Shampoo = _pytorch_optimizer("shampoo").Shampoo
    return TrainingOptimizer("shampoo", model, Shampoo(model.parameters(), **hp), criterion)


# Plain Shampoo (Gupta et al. 2018, pytorch_optimizer.Shampoo, preconditioners recomputed every
# step by SVD); momentum 0 by default because the library's momentum mixes the raw gradient
# with the previous *preconditioned* step.
_register_builtin(
    "shampoo",
    _make_shampoo,
    defaults={
        "lr": 1e-2,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "preconditioning_compute_steps": 1,
        "matrix_eps": 1e-6,
    },
    description="Shampoo (pytorch_optimizer.Shampoo: plain, per-dimension (Σ G Gᵀ)^(-1/2k))",
)


def _partitioned_newton_entry(name: str, **fixed: Any) -> Factory:
    """Factory of a partitioned Newton entry; ``fixed`` values define the entry (an override
    with another value is a ValueError: e.g. cauchy with partition 'per_tensor' is not Cauchy)."""

    def factory(model, hp, criterion):
        for key, value in fixed.items():
            if hp[key] != value:
                raise ValueError(f"{name} fixes {key}={value!r}; got {hp[key]!r}")
        return PartitionedNewtonOptimizer(name, model, hp, criterion)

    return factory


# Ours and its variants: name → the hyperparameters the entry fixes (its defaults, which an
# override may not change) and its description.
_PARTITIONED_NEWTON_ENTRIES: dict[str, tuple[dict[str, Any], str]] = {
    "partitioned_newton": (
        {},
        "Partitioned Newton, order-3 cubic regularisation, one subset per tensor (ours)",
    ),
    "partitioned_newton_diag": (
        {"curvature": "diagonal"},
        "Partitioned Newton with diag(H̄) only: no cross-subset terms (ablation)",
    ),
    "partitioned_newton_order2": (
        {"lambda_int": 0.0},
        "Partitioned Newton without the cubic term (λ_int = 0: η = H̄⁻¹ḡ whatever H̄'s inertia, "
        "then negative η_s clipped, as the paper; ablation)",
    ),
    "cauchy": (
        {"partition": "single", "lambda_int": 0.0},
        "Cauchy step: S = 1, λ_int = 0, same direction as partitioned_newton (baseline)",
    ),
    "partitioned_newton_saddle_free": (
        {"lambda_int": 0.0, "indefinite": "saddle_free"},
        "Partitioned Newton without the cubic term, saddle-free step η = |H̄|⁻¹ḡ (λ_int = 0, "
        "H̄'s eigenvalues by their moduli in scale-covariant variables; ablation)",
    ),
}
for _name, (_fixed, _description) in _PARTITIONED_NEWTON_ENTRIES.items():
    _register_builtin(
        _name,
        _partitioned_newton_entry(_name, **_fixed),
        defaults={**PARTITIONED_NEWTON_DEFAULTS, **_fixed},
        description=_description,
    )
