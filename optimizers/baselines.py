"""The uniform training-step wrapper and the optimizers behind it (baselines: METHOD.md §7).

:class:`TrainingOptimizer` is the object the training loop drives, whatever the algorithm:
``step(batch, curvature_batch)`` builds the closure (zero the gradients, forward, criterion,
backward), runs one update and returns the detached loss of ``batch`` at the weights *before*
the update. The subclasses here adapt each optimizer of the registry:

- :class:`TrainingOptimizer` itself wraps any ``torch.optim.Optimizer`` whose ``step(closure)``
  needs a plain gradient (SGD, Adam, pytorch-optimizer's Shampoo, a user's RMSprop, ...).
- :class:`HutchinsonOptimizer` wraps optimizers that read a gradient built with
  ``create_graph=True`` and draw Rademacher probes z for Hutchinson's estimate diag(∇²L) ≈
  z ⊙ (∇²L z) (pytorch-optimizer's AdaHessian). The probes come from a private random stream
  kept in the state dict, so a resumed run draws the same probes as an uninterrupted one.
- :class:`KfacOptimizer` wraps ASDL's ``KfacGradientMaker`` (K-FAC: the gradient of each
  Linear/Conv2d/Embedding layer is preconditioned by (A ⊗ B + damping)⁻¹, A = E[a aᵀ] over layer
  inputs, B = E[g gᵀ] over output gradients with targets sampled from the model (Monte-Carlo
  Fisher); BatchNorm and LayerNorm unit-wise) followed by ``torch.optim.SGD`` with momentum;
  :class:`KfacCoverage` says which parameters it preconditions on a given model.
- :class:`PartitionedNewtonOptimizer` wraps ours (``optimizers.PartitionedNewton``) and feeds
  it the curvature batch.

Optional packages: ASDL (distribution ``asdfghjkl``, for kfac) and pytorch-optimizer (adahessian,
shampoo) are imported when such an optimizer is first built, through :func:`optional_import`;
when one is missing, building it raises :class:`MissingDependencyError` (an ``ImportError``)
naming the package and the extra that installs it (``pip install 'hobench[baselines]'``). The
rest of the library needs torch, numpy and scipy only.

Random streams: the Hutchinson probes and K-FAC's sampled targets come from a private CPU
generator state seeded by the ``seed`` hyperparameter, or, when it is ``None``, by one draw
from the global torch generator at construction (so a run seeded by the training loop is
reproducible). The model's own forward randomness (dropout) during those steps also draws
from the private stream. On CUDA the probes are drawn from the device's global generator,
which the private stream does not capture: there a resumed run is not bitwise identical.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import partition as partitions
from .derivatives import functional_loss
from .partitioned_newton import PartitionedNewton

Criterion = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]

__all__ = [
    "BASELINES_EXTRA",
    "PARTITIONED_NEWTON_DEFAULTS",
    "Batch",
    "Criterion",
    "HutchinsonOptimizer",
    "KfacCoverage",
    "KfacOptimizer",
    "MissingDependencyError",
    "PartitionedNewtonOptimizer",
    "TrainingOptimizer",
    "optional_import",
]

BASELINES_EXTRA = "hobench[baselines]"  # the extra (pyproject.toml) with the optional packages


class MissingDependencyError(ImportError):
    """An optional package an optimizer needs is not installed (the message says what to do)."""


def optional_import(module: str, *, package: str, needed_by: str) -> types.ModuleType:
    """``importlib.import_module(module)``; if the package itself is missing, a
    :class:`MissingDependencyError` naming ``package`` (what pip installs), ``needed_by`` and
    the extra that pulls it. Other import errors (a broken installation) propagate as they are.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        root = module.partition(".")[0]
        if error.name is None or error.name.partition(".")[0] != root:
            raise
        raise MissingDependencyError(
            f"{needed_by} needs the package {package!r} (imported as {root!r}), which is not "
            f"installed; install the baselines extra: pip install '{BASELINES_EXTRA}'",
            name=error.name,
        ) from error


class TrainingOptimizer:
    """One optimizer behind the training loop's uniform interface.

    Args:
        name: registry name (``"sgd"``, ``"adam"``, ...), recorded in results.
        model: the model whose ``parameters()`` ``optimizer`` updates.
        optimizer: a ``torch.optim.Optimizer`` whose ``step(closure)`` takes one step.
        criterion: ``criterion(model(inputs), targets) -> scalar loss`` (mean over the batch).

    ``lr`` is the global learning rate: the first parameter group's ``lr`` over its ratio to
    the global value at construction; setting it rescales every group by the same factor (the
    training loop halves it on a plateau). ``state_dict()`` holds the optimizer's state dict
    under ``"optimizer"``; subclasses add their own entries.
    """

    needs_curvature_batch: bool = False

    def __init__(
        self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Criterion
    ):
        self.name = name
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion
        groups = optimizer.param_groups
        base = float(groups[0]["lr"])
        self._lr_ratios = [float(g["lr"]) / base if base != 0 else 1.0 for g in groups]

    # -- learning rate -------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) / self._lr_ratios[0]

    @lr.setter
    def lr(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{self.name}: lr must be a finite number >= 0, got {value!r}")
        for group, ratio in zip(self.optimizer.param_groups, self._lr_ratios, strict=True):
            group["lr"] = ratio * value

    # -- one step ------------------------------------------------------------------------
    def loss(self, batch: Batch) -> Tensor:
        """criterion(model(inputs), targets) with the graph (no backward)."""
        inputs, targets = _unpack(batch, "batch")
        return self.criterion(self.model(inputs), targets)

    def closure(self, batch: Batch) -> Callable[[], Tensor]:
        """The closure ``step`` hands to the optimizer: zero_grad, forward, loss, backward."""

        def closure() -> Tensor:
            self.optimizer.zero_grad()
            loss = self.loss(batch)
            loss.backward()
            return loss

        return closure

    def step(self, batch: Batch, curvature_batch: Batch | None = None) -> Tensor:
        """One update on ``batch``; returns its detached loss before the update.

        ``curvature_batch`` is ignored by optimizers with ``needs_curvature_batch = False``.
        """
        loss = self.optimizer.step(self.closure(batch))
        return _detached_scalar(loss, self.name)

    # -- state and diagnostics ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def diagnostics(self) -> dict[str, float]:
        """Flat scalars for the training history; none for the baselines."""
        return {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, optimizer={type(self.optimizer).__name__})"
        )


class _PrivateStream:
    """A CPU random stream apart from the global one, saved and restored with the optimizer.

    ``with stream:`` swaps the global CPU generator's state for the private one for the
    duration of the block (``torch.random.fork_rng``), so code that draws from the global
    generator (library internals) draws from this stream and leaves the global one untouched.
    """

    def __init__(self, seed: int | None):
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())  # one draw from the global stream
        generator = torch.Generator()
        generator.manual_seed(int(seed))
        self.state = generator.get_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.state)
            try:
                yield
            finally:
                self.state = torch.get_rng_state()


class HutchinsonOptimizer(TrainingOptimizer):
    """For optimizers reading ``p.grad`` built with ``create_graph=True`` (AdaHessian).

    The closure sets ``p.grad = ∂L/∂p`` *with* its graph, so the optimizer can form Hessian-
    vector products ∇²L z for its Hutchinson probes z; the probes are drawn from the private
    stream (``state_dict()["rng_state"]``). After the step the gradients are set to ``None``,
    which frees the graph they hold. Cost per step: one backward with graph plus one
    double-backward per probe (about 2-3x an SGD step).
    """

    def __init__(self, name, model, optimizer, criterion, *, seed: int | None = None):
        super().__init__(name, model, optimizer, criterion)
        self._stream = _PrivateStream(seed)

    def closure(self, batch: Batch) -> Callable[[], Tensor]:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]

        def closure() -> Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(batch)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            return loss

        return closure

    def step(self, batch: Batch, curvature_batch: Batch | None = None) -> Tensor:
        with self._stream.active():
            loss = self.optimizer.step(self.closure(batch))
        self.optimizer.zero_grad(set_to_none=True)
        return _detached_scalar(loss, self.name)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "rng_state": self._stream.state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self._stream.state = state["rng_state"].clone()


@dataclass(frozen=True)
class KfacCoverage:
    """Which trainable parameters K-FAC preconditions (:attr:`KfacOptimizer.coverage`).

    ASDL preconditions the weight and bias of the leaf modules of the classes it supports
    (``KfacGradientMaker``: Linear, Conv2d and Embedding by Kronecker factors B⁻¹ G A⁻¹;
    BatchNorm1d/2d and LayerNorm unit-wise, one damped 2×2 Fisher block per channel over its
    (weight, bias) pair). Every other trainable parameter takes a plain momentum-SGD step on
    its gradient: a module of another class (Conv1d, GroupNorm, PReLU, ...) and a parameter
    owned directly by a module that has children (a bare ``nn.Parameter`` of a model class).

    Fields are parameter names as ``model.named_parameters()`` gives them, in that order.
    """

    kronecker: tuple[str, ...]  # preconditioned by Kronecker factors (A ⊗ B + damping)⁻¹
    unit_wise: tuple[str, ...]  # preconditioned by a 2×2 block per unit (BatchNorm, LayerNorm)
    plain: tuple[str, ...]  # plain momentum-SGD steps (not preconditioned)
    module_types: Mapping[str, str]  # every trainable parameter → its module's class name
    sizes: Mapping[str, int]  # every trainable parameter → its number of entries

    @property
    def preconditioned(self) -> tuple[str, ...]:
        """The preconditioned parameters (Kronecker or unit-wise), in model order."""
        chosen = set(self.kronecker) | set(self.unit_wise)
        return tuple(name for name in self.module_types if name in chosen)

    def types_of(self, names: tuple[str, ...]) -> list[str]:
        """The distinct module class names of ``names``, in order of first appearance."""
        return list(dict.fromkeys(self.module_types[name] for name in names))


class KfacOptimizer(TrainingOptimizer):
    """K-FAC from ASDL (``asdl.KfacGradientMaker``) followed by SGD with momentum.

    Every step t (counted from 0):
        if t % curvature_update_every == 0:  A_l, B_l ← (1−ρ) A_l + ρ Â_l,  (1−ρ) B_l + ρ B̂_l
        if t % inverse_update_every == 0:    A_l⁻¹, B_l⁻¹ ← (A_l + π_l √δ I)⁻¹, (B_l + √δ/π_l I)⁻¹
        grad_l ← B_l⁻¹ grad_l A_l⁻¹          (Linear, Conv2d, Embedding; LayerNorm/BatchNorm:
                                              unit-wise; any other parameter: not at all)
        SGD step with momentum and weight decay on the preconditioned gradient
    where Â_l, B̂_l are the batch estimates (B̂ from one target sampled from the model's
    predictive distribution: the Monte-Carlo Fisher), ρ = ``statistics_decay``, δ = ``damping``
    and π_l = sqrt(mean eig A_l / mean eig B_l) (ASDL's factored Tikhonov damping).

    Deviations from ASDL's defaults, all documented workarounds:
    - The first estimate is taken whole (ρ = 1 at the first curvature update), not ρ·Â: ASDL's
      running average starts from zero, which would shrink the first factors by ρ.
    - ``torch.cuda.nvtx`` raises on CPU builds of torch; ASDL calls it around every inverse.
      On such builds the ``nvtx`` name inside ASDL's modules is replaced by a no-op (the
      replaced function could only raise).
    - ASDL registers legacy module backward hooks; torch warns that they miss ``grad_input``.
      ASDL reads only ``grad_output`` (the gradient w.r.t. the layer output, which the legacy
      hook gives correctly: tests/test_kfac.py checks the factors against a reference), so the
      warning is silenced inside ``step``.
    - ASDL computes an ``nn.Embedding``'s input factor in float32 whatever the model's dtype;
      it is cast to the weight's dtype (a no-op in float32), so K-FAC runs in float64 too.
    - ASDL keeps its factors as attributes of the layers; ``state_dict`` copies them out
      (``"curvature"``: tensors keyed ``<layer>/<part>.<field>``) and ``load_state_dict`` puts
      them back, so a resumed run continues bitwise on CPU.
    The gradient is rescaled by nothing else (no KL clipping). Weight decay is added after
    preconditioning (by SGD). Cost: a curvature step runs one extra backward for the sampled
    targets; an inverse step inverts two matrices per layer (fan_in+1 and fan_out wide).
    :attr:`coverage` lists the parameters preconditioned and those left to plain momentum SGD.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        criterion: Criterion,
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
        damping: float,
        curvature_update_every: int,
        inverse_update_every: int,
        statistics_decay: float,
        seed: int | None = None,
    ):
        asdl = _import_asdl()
        for key, value in [
            ("curvature_update_every", curvature_update_every),
            ("inverse_update_every", inverse_update_every),
        ]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: {key} must be an integer >= 1, got {value!r}")
        if not damping > 0:
            raise ValueError(f"{name}: damping must be > 0, got {damping!r}")
        if not 0 < statistics_decay <= 1:
            raise ValueError(
                f"{name}: statistics_decay must be in (0, 1], got {statistics_decay!r}"
            )
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        super().__init__(name, model, optimizer, criterion)
        self.statistics_decay = float(statistics_decay)
        config = asdl.PreconditioningConfig(
            data_size=1,  # set to the batch size at every step
            damping=float(damping),
            curvature_upd_interval=curvature_update_every,
            preconditioner_upd_interval=inverse_update_every,
            ema_decay=self.statistics_decay,
        )
        with _quiet_asdl():
            self.grad_maker = asdl.KfacGradientMaker(
                model, config, fisher_type="fisher_mc", loss_type=_asdl_loss_type(criterion)
            )
        self._stream = _PrivateStream(seed)

    def step(self, batch: Batch, curvature_batch: Batch | None = None) -> Tensor:
        inputs, targets = _unpack(batch, "batch")
        maker = self.grad_maker
        # ASDL sums the loss over every target and divides by data_size: the number of targets
        # (B for a classifier's labels [B], B·T for a language model's next tokens [B, T]).
        maker.config.data_size = int(targets.numel())
        first = not self._has_curvature()
        maker.config.ema_decay = 1.0 if first else self.statistics_decay
        self.optimizer.zero_grad()
        outputs = maker.setup_model_call(self.model, inputs)
        maker.setup_loss_call(self.criterion, outputs, targets)
        with self._stream.active(), _quiet_asdl():
            try:
                _, loss = maker.forward_and_backward()
            except ValueError:
                # At a curvature update ASDL samples targets from the model's output
                # distribution (fisher_mc), which torch.distributions validates: outputs made
                # non-finite by a diverged run fail there, before any loss is returned. Report
                # that run's loss, as every other optimizer does, and take no step.
                diverged = self._nonfinite_loss(inputs, targets)
                if diverged is None:
                    raise
                maker.config.ema_decay = self.statistics_decay
                self.optimizer.zero_grad()
                return diverged
        maker.config.ema_decay = self.statistics_decay
        self.optimizer.step()
        return _detached_scalar(loss, self.name)

    def _nonfinite_loss(self, inputs: Tensor, targets: Tensor) -> Tensor | None:
        """The batch loss when it is not finite (NaN or ±inf), else None."""
        with torch.no_grad():
            loss = _detached_scalar(self.criterion(self.model(inputs), targets), self.name)
        return None if bool(torch.isfinite(loss)) else loss

    def _layers(self) -> list[tuple[str, nn.Module]]:
        return [(n.replace("/", "."), m) for n, m in self.grad_maker.named_modules_for_curvature]

    @property
    def coverage(self) -> KfacCoverage:
        """Which trainable parameters ASDL preconditions and which take plain momentum-SGD steps
        (:class:`KfacCoverage`), read from ASDL's own assignment of a Fisher shape to each
        module (``named_modules_for_curvature``, ``shape_for``); reads, never changes, a thing."""
        maker = self.grad_maker
        shape_of: dict[int, str] = {}  # id(parameter) → ASDL's shape name of its module
        for _, module in maker.named_modules_for_curvature:
            for tensor in (getattr(module, "weight", None), getattr(module, "bias", None)):
                if isinstance(tensor, Tensor) and tensor.requires_grad:
                    shape_of[id(tensor)] = str(maker.shape_for[module])
        owner: dict[int, str] = {}
        for module in self.model.modules():
            for tensor in module.parameters(recurse=False):
                owner.setdefault(id(tensor), type(module).__name__)
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        unit = [shape_of.get(id(p)) == "unit_wise" for _, p in trainable]
        return KfacCoverage(
            kronecker=tuple(
                n for (n, p), u in zip(trainable, unit, strict=True) if id(p) in shape_of and not u
            ),
            unit_wise=tuple(n for (n, _), u in zip(trainable, unit, strict=True) if u),
            plain=tuple(n for n, p in trainable if id(p) not in shape_of),
            module_types={n: owner[id(p)] for n, p in trainable},
            sizes={n: p.numel() for n, p in trainable},
        )

    def _has_curvature(self) -> bool:
        attr = self.grad_maker.fisher_maker.config.fisher_attr
        return any(getattr(m, attr, None) is not None for _, m in self._layers())

    def state_dict(self) -> dict[str, Any]:
        attr = self.grad_maker.fisher_maker.config.fisher_attr
        curvature: dict[str, Tensor] = {}
        for layer, module in self._layers():
            fisher = getattr(module, attr, None)
            for part, fields in _ASDL_FIELDS.items():
                holder = getattr(fisher, part, None) if fisher is not None else None
                for field in fields:
                    tensor = getattr(holder, field, None) if holder is not None else None
                    if tensor is not None:
                        curvature[f"{layer}/{part}.{field}"] = tensor.detach().clone()
        return {
            "optimizer": self.optimizer.state_dict(),
            "asdl_step": int(self.grad_maker.state["step"]),
            "curvature": curvature,
            "rng_state": self._stream.state.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        asdl = _import_asdl()
        self.optimizer.load_state_dict(state["optimizer"])
        self.grad_maker.load_state_dict({"step": int(state["asdl_step"])})
        self._stream.state = state["rng_state"].clone()
        attr = self.grad_maker.fisher_maker.config.fisher_attr
        layers = dict(self._layers())
        by_layer: dict[str, dict[str, Tensor]] = {}
        for key, tensor in state["curvature"].items():
            layer, _, field = key.rpartition("/")
            if layer not in layers:
                raise ValueError(f"{self.name}: saved curvature for unknown layer {layer!r}")
            by_layer.setdefault(layer, {})[field.replace(".", "_")] = tensor.clone()
        for layer, module in layers.items():
            fields = by_layer.get(layer)
            setattr(module, attr, None if fields is None else asdl.SymMatrix(**fields))


def _keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The parameters of ``function`` that have a default, with it, in signature order."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


_NEWTON_KEYWORDS = _keyword_defaults(PartitionedNewton.__init__)
# Defaults of the partitioned Newton entries: PartitionedNewton's own keyword defaults (written
# once, in its __init__; METHOD.md §4, §5: λ1 = 0.1, λ_int = 1, curvature every T = 10 steps
# averaged over the last K = 4 estimates, W = 3 warm-up recomputations, heavy-ball direction
# buf ← 0.9 buf + (1 − τ) grad with τ = 0) plus the entry's own keys choosing the subsets (one
# per tensor). "lr" is written first to keep the key order lr, partition, num_blocks, ...: the
# later **-unpacking keeps that position and sets the same value.
PARTITIONED_NEWTON_DEFAULTS: dict[str, Any] = {
    "lr": _NEWTON_KEYWORDS["lr"],
    "partition": "per_tensor",
    "num_blocks": None,
    **_NEWTON_KEYWORDS,
}


class PartitionedNewtonOptimizer(TrainingOptimizer):
    """Ours: ``optimizers.PartitionedNewton`` (METHOD.md §4-§5) behind the uniform interface.

    Each step: u from the proposal rule on ``batch``; when the optimizer asks for curvature
    (``needs_curvature``: every ``update_every`` steps), ḡ [S], H̄ [S, S] and the order-3
    diagonal D^3_sss [S] are computed on ``curvature_batch`` through
    ``functional_loss(model, criterion, *curvature_batch)``; then θ_s ← θ_s − λ1 η_s u_s.

    ``hyperparameters`` are those of ``PartitionedNewton.from_model`` plus ``partition``: a
    name in ``optimizers.partition.PARTITIONS`` (``"blocks"`` takes ``num_blocks``), a mapping
    parameter name → subset label, or a list of lists of parameter names.
    ``diagnostics()``: ``eta/<subset>`` (η_s of the last solve; a subset is named by its
    parameter name, or its names joined by ``+``), ``solver_status`` (code), ``condition_number``
    (of H̄), then ``usable_solves`` and ``failed_solves`` (the optimizer's cumulative counters).
    """

    needs_curvature_batch = True

    def __init__(self, name: str, model: nn.Module, hyperparameters: dict, criterion: Criterion):
        hp = dict(hyperparameters)
        groups = _resolve_partition(name, model, hp.pop("partition"), hp.pop("num_blocks"))
        hp["betas"] = tuple(hp["betas"])
        optimizer = PartitionedNewton.from_model(model, partition=groups, **hp)
        super().__init__(name, model, optimizer, criterion)

    def step(self, batch: Batch, curvature_batch: Batch | None = None) -> Tensor:
        curvature_loss = None
        if self.optimizer.needs_curvature:
            if curvature_batch is None:
                raise ValueError(
                    f"{self.name}: this step recomputes curvature: pass curvature_batch"
                )
            inputs, targets = _unpack(curvature_batch, "curvature_batch")
            curvature_loss = functional_loss(self.model, self.criterion, inputs, targets)
        loss = self.optimizer.step(self.closure(batch), curvature_loss=curvature_loss)
        return _detached_scalar(loss, self.name)

    def diagnostics(self) -> dict[str, float]:
        record = self.optimizer.last_diagnostics or {}
        out: dict[str, float] = {}
        eta = record.get("eta")
        if eta is not None:
            for subset, value in zip(self.optimizer.subset_names, _floats(eta), strict=True):
                out[f"eta/{subset}"] = value
        for key in ("solver_status", "condition_number"):
            if record.get(key) is not None:
                out[key] = float(record[key])
        # cumulative: recomputations that gave a step, and those that did not
        out["usable_solves"] = float(self.optimizer.usable_solves)
        out["failed_solves"] = float(self.optimizer.failed_solves)
        flat = record.get("flat_subsets")
        if flat is not None:  # subsets dropped as numerically flat at the last recomputation
            out["flat_subsets"] = float(len(flat))
        return out


def _floats(values: Any) -> list[float]:
    if isinstance(values, Tensor):
        return [float(v) for v in values.detach().reshape(-1).tolist()]
    return [float(v) for v in values]


def _resolve_partition(name: str, model: nn.Module, partition: Any, num_blocks: Any):
    if isinstance(partition, str):
        function = partitions.get_partition(partition)
        if partition == "blocks":
            if num_blocks is None:
                raise ValueError(f"{name}: partition 'blocks' needs num_blocks")
            return function(model, int(num_blocks))
        if num_blocks is not None:
            raise ValueError(
                f"{name}: num_blocks={num_blocks!r} is only used by partition 'blocks'"
            )
        return function(model)
    if num_blocks is not None:
        raise ValueError(f"{name}: num_blocks={num_blocks!r} is only used by partition 'blocks'")
    if isinstance(partition, Mapping):
        return partitions.from_mapping(model, partition)
    return partitions.validate_groups(partition, partitions.trainable_names(model))


# SymMatrix parts K-FAC fills, and their tensors (SymMatrix(kron_A=..., unit_data=...) rebuilds).
_ASDL_FIELDS = {"kron": ("A", "B", "A_inv", "B_inv"), "unit": ("data", "inv")}


def _import_asdl() -> types.ModuleType:
    with _quiet_asdl():
        asdl = _require_asdl("asdl")
        _require_asdl("asdl.operations.operation")
        _require_asdl("asdl.precondition.natural_gradient")
    if not _nvtx_works():
        null = types.SimpleNamespace(range=lambda *args, **kwargs: contextlib.nullcontext())
        for module in (asdl.operations.operation, asdl.precondition.natural_gradient, asdl.utils):
            module.nvtx = null
    _embedding_factor_in_weight_dtype(asdl)
    return asdl


def _embedding_factor_in_weight_dtype(asdl: types.ModuleType) -> None:
    """ASDL's ``Embedding.cov_kron_A`` returns the token counts' Gram matrix in float32 whatever
    the weights' dtype (``counts.float()``), so a float64 model with an ``nn.Embedding`` fails
    in the matrix product with its float64 factors. The factor is cast to the weight's dtype:
    for a float32 model ``.to`` returns the same tensor (the same numbers as ASDL's)."""
    embedding = asdl.operations.Embedding
    if getattr(embedding, "_hobench_weight_dtype", False):
        return
    original = embedding.cov_kron_A

    def cov_kron_A(module: nn.Module, in_data: Tensor) -> Tensor:
        return original(module, in_data).to(module.weight.dtype)

    embedding.cov_kron_A = staticmethod(cov_kron_A)
    embedding._hobench_weight_dtype = True


def _require_asdl(module: str) -> types.ModuleType:
    return optional_import(module, package="asdfghjkl", needed_by="kfac (K-FAC from ASDL)")


def _nvtx_works() -> bool:
    try:
        torch.cuda.nvtx.range_push("hobench")
        torch.cuda.nvtx.range_pop()
    except (RuntimeError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def _quiet_asdl() -> Iterator[None]:
    """Silence the deprecation warnings torch 2.13 raises on ASDL's legacy calls (see above)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-full backward hook.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated.*")
        warnings.filterwarnings("ignore", message=".*functorch.*", category=UserWarning)
        yield


def _asdl_loss_type(criterion: Criterion) -> str:
    """ASDL's name for the Fisher of ``criterion`` (its predictive distribution)."""
    if criterion is F.cross_entropy or isinstance(criterion, nn.CrossEntropyLoss):
        return "cross_entropy"
    if criterion is F.mse_loss or isinstance(criterion, nn.MSELoss):
        return "mse"
    raise ValueError(
        f"kfac: ASDL's Fisher supports cross-entropy and MSE criteria only, got {criterion!r}"
    )


def _unpack(batch: Batch, what: str) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ValueError(f"{what} must be a pair (inputs, targets), got {type(batch).__name__}")
    return batch[0], batch[1]


def _detached_scalar(loss: Tensor | None, name: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"{name}: the criterion must return a scalar tensor, got {loss!r}")
    return loss.detach().reshape(())
