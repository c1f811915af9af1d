"""The invariance study: affine reparameterization θ_s = a_s θ̃_s + b_s per subset (METHOD.md §6).

Run by the DVC stage ``python -m bench.invariance --problem digits_mlp [--params params.yaml]``
(:mod:`bench.invariance`). For one problem: draw a_s log-uniform in [1/scale_range, scale_range],
one per subset of the problem's partition (params ``problem_settings.<problem>.partition``, else
the problem's own; per tensor when it has none, per module for the char transformer), and b ~
N(0, shift_std²) per entry (seeded); build the twin model whose parameters are θ̃ (same names,
same module classes, every module with parameters computing its own forward on θ = a θ̃ + b:
Linear, Conv2d, BatchNorm, LayerNorm, Embedding, bare ``nn.Parameter``s; :func:`reparameterize`),
and train the model and its twin with every optimizer of ``invariance.optimizers`` (with the
problem's partition, as the train cells give it) on identical batches and curvature batches.
After each step the twin's parameters are mapped back and compared:

    parameters[t] = ‖θ − (a θ̃ + b)‖ / ‖θ‖ (all tensors as one vector),   loss[t] = |L − L̃| / |L|.

Expected (written next to the report's figure): ``partitioned_newton``, ``_diag`` and ``_order2``
with the gradient or momentum proposal stay at rounding level; ``cauchy`` (S = 1, coarser than
the maps), the Adam proposal, SGD, Adam and K-FAC drift. The stage also checks the scaling laws
ḡ̃_s = a_s² ḡ_s, H̄̃_st = a_s² a_t² H̄_st, d̃_s = a_s² d_s and η̃_s = η_s / a_s² at the starting
point, with u the gradient, over the subsets that the flatness test keeps (a conv bias before a
BatchNorm is dropped by it, for the model and the twin alike: ``scaling_laws.flat``). Writes
``results/<profile>/invariance/<problem>.json`` atomically.
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import layout
from bench.config import Config
from bench.errors import ConfigError, UsageError
from bench.io import write_json_atomic
from bench.provenance import provenance
from bench.studies.options import prepared_splits

INVARIANT = (
    "partitioned_newton", "partitioned_newton_diag", "partitioned_newton_order2",
    "partitioned_newton_saddle_free",
)  # fmt: skip
EXPECTATION = (
    "partitioned_newton, partitioned_newton_diag, partitioned_newton_order2 and "
    "partitioned_newton_saddle_free with the gradient or momentum proposal stay at rounding level "
    "(an order-2 run that blows up amplifies rounding chaotically: its deviation grows with its "
    "weights); cauchy (S = 1, coarser than the maps, one per subset of the problem's partition), "
    "the Adam proposal, SGD, Adam and K-FAC drift (METHOD.md §6)."
)
DTYPES = {"float64": torch.float64, "float32": torch.float32}


# ------------------------------------------------------------------ the reparameterized twin
def _mapped(module: nn.Module, name: str) -> Tensor | None:
    """θ = scale_<name> · θ̃ + shift_<name> of one parameter of a twin layer (θ̃: the value the
    module holds now, i.e. the one ``torch.func.functional_call`` substituted, if any)."""
    value = module._parameters[name]
    if value is None:
        return None
    return getattr(module, f"scale_{name}") * value + getattr(module, f"shift_{name}")


def _own_mapped(module: nn.Module) -> list[str]:
    return [name for name, p in module._parameters.items() if p is not None]


def _twin_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The module's own forward, with every parameter of its subtree read as a·θ̃ + b.

    For the duration of the call, each mapped value is put in the instance ``__dict__`` of its
    module, where attribute lookup finds it before ``nn.Module.__getattr__`` reaches
    ``_parameters``; the parameters themselves (names, ``named_parameters``, the optimizers'
    view) are untouched. A parameter already mapped by an enclosing call is left alone, so the
    outermost call maps the whole model once and inner calls are pass-throughs."""
    installed: list[tuple[nn.Module, str]] = []
    try:
        for module in self._twin_subtree:
            for name in module._twin_names:
                if name not in module.__dict__:
                    module.__dict__[name] = _mapped(module, name)
                    installed.append((module, name))
        return self._twin_original_forward(*args, **kwargs)
    finally:
        for module, name in installed:
            del module.__dict__[name]


def reparameterize(model: nn.Module, scales: dict[str, float], shifts: dict[str, Tensor]) -> None:
    """Turn ``model`` in place into its twin: parameter ``n`` holds θ̃_n = (θ_n − b_n) / a_n.

    Parameter names, module classes and outputs are unchanged, for every module with
    parameters (``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.LayerNorm``,
    ``nn.Embedding``, a custom module holding an ``nn.Parameter`` itself, ...). Each module's
    ``forward`` is wrapped on the instance (the class stays, so K-FAC through ASDL recognises
    its Linear, Conv2d, BatchNorm, LayerNorm and Embedding layers): the class's own forward runs
    with every parameter read as a·θ̃ + b (buffers ``scale_<name>``, ``shift_<name>``), and
    gradients flow to θ̃. Why this generic mechanism rather than one forward per layer type:

    - it needs no knowledge of a layer's computation, so any layer type is covered and nothing
      can diverge from the class's own forward;
    - the outermost call maps the whole model for the duration of the call (each mapped tensor
      computed once), so code outside a layer's own forward that reads its parameters during
      the forward sees θ as well: the forward hooks of inner layers (ASDL's among them) and a
      parent module reading a child's weight;
    - ``nn.Linear``/``nn.Conv2d`` compute exactly the float operations of the former
      hand-written twins (``F.linear``/``_conv_forward`` on ``scale · θ̃ + shift``), so results
      of the Linear/Conv2d models do not move.

    Outside a forward the parameters read as θ̃: ``state_dict``, the optimizers (which is the
    point), hooks of the outermost module, and hooks that run in the backward pass. ASDL's
    K-FAC restores the normalised input of a BatchNorm/LayerNorm as (out − β)/γ in its backward
    hook, so in the twin those unit-wise factors are computed from θ̃ (its Kronecker factors of
    Linear/Conv2d layers, functions of the layers' inputs and output gradients, are the
    model's): one more way in which K-FAC is not invariant, on the models with normalisation
    layers. A parameter shared by two modules (tied weights) is refused: its map would apply
    twice.
    """
    owners: dict[int, str] = {}
    for module_name, module in model.named_modules():
        for name in _own_mapped(module):
            full = f"{module_name}.{name}" if module_name else name
            key = id(module._parameters[name])
            if key in owners:
                raise ValueError(
                    f"reparameterize: parameter {full!r} is the tensor {owners[key]!r} (tied "
                    "weights): the invariance stage reparameterizes untied parameters only"
                )
            owners[key] = full
            if full not in scales or full not in shifts:
                raise ValueError(f"reparameterize: no map (scale and shift) for parameter {full!r}")
            if hasattr(module, "_twin_names"):
                raise ValueError(f"reparameterize: {full!r} is already a twin's parameter")
    for module_name, module in model.named_modules():
        names = _own_mapped(module)
        module._twin_names = tuple(names)
        for name in names:
            parameter = module._parameters[name]
            full = f"{module_name}.{name}" if module_name else name
            scale = torch.tensor(scales[full], dtype=parameter.dtype, device=parameter.device)
            module.register_buffer(f"scale_{name}", scale)
            module.register_buffer(f"shift_{name}", shifts[full].to(parameter))
            with torch.no_grad():
                parameter.copy_((parameter - shifts[full]) / scale)
    for module in model.modules():
        subtree = tuple(m for m in module.modules() if m._twin_names)
        if subtree:
            module._twin_subtree = subtree
            module._twin_original_forward = module.forward
            module.forward = types.MethodType(_twin_forward, module)


def mapped_parameters(twin: nn.Module) -> dict[str, Tensor]:
    """θ = a θ̃ + b of every parameter of a twin, by name."""
    out = {}
    for module_name, module in twin.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            out[full] = _mapped(module, name).detach()
    return out


def draw_maps(
    model: nn.Module,
    seed: int,
    scale_range: float,
    shift_std: float,
    groups: list[list[str]] | None = None,
):
    """a_s log-uniform in [1/scale_range, scale_range], one per subset of ``groups`` (default:
    one per tensor, in ``named_parameters`` order), and b ~ N(0, shift_std²) per entry.

    The scale must be constant on each subset of the partition the optimizer uses (METHOD.md
    §6); the shift may vary entry by entry (it never enters the step). One uniform draw per
    subset, in the order of ``groups``: per-tensor groups draw exactly what per tensor does."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    names = [name for name, _ in model.named_parameters()]
    groups = [[name] for name in names] if groups is None else groups
    scales: dict[str, float] = {}
    for group in groups:
        scale = float(scale_range ** rng.uniform(-1.0, 1.0))
        scales.update(dict.fromkeys(group, scale))
    missing = [name for name in names if name not in scales]
    if missing:
        raise ValueError(f"draw_maps: groups leave parameters without a scale: {missing}")
    shifts = {}
    for name, p in model.named_parameters():
        shifts[name] = torch.randn(p.shape, generator=gen, dtype=torch.float64) * shift_std
    return scales, shifts


def map_groups(model: nn.Module, partition: str | None) -> list[list[str]]:
    """The subsets on which the maps are constant: those of ``partition`` (a name of
    ``optimizers.partition.PARTITIONS``, or ``blocks<k>``; None: one per tensor)."""
    from optimizers import partition as partitions

    if partition is None:
        return partitions.per_tensor(model)
    suffix = partition[len("blocks") :]
    if partition.startswith("blocks") and suffix.isdigit():
        return partitions.blocks(model, int(suffix))
    return partitions.get_partition(partition)(model)


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny))


def _flat(tensors) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def deviation(model: nn.Module, twin: nn.Module) -> float:
    """‖θ − (a θ̃ + b)‖ / ‖θ‖ over all parameters (one vector: a bias at 0 has no scale)."""
    mapped = mapped_parameters(twin)
    names = [n for n, _ in model.named_parameters()]
    return _relative(_flat(mapped[n] for n in names), _flat(p for _, p in model.named_parameters()))


# ------------------------------------------------------------------------- the study
def scaling_laws(
    model, twin, scales, batch, lambda_int: float = 1.0, criterion=F.cross_entropy, groups=None
) -> dict[str, Any]:
    """Max relative errors of ḡ̃ = a²ḡ, H̄̃ = a_s²a_t²H̄, d̃ = a²d, η̃ = η/a² (u = the gradient),
    over the subsets ``groups`` (default: one per tensor; ``scales`` constant on each).

    The step is solved as the optimizer solves it, without the subsets the flatness test drops
    (``optimizers.flatness``: a conv bias before a BatchNorm; their ḡ_s, H̄_s·, d_s are
    rounding noise, which no scaling law holds for). That test is invariant itself: the record
    lists the subsets dropped for the model and for the twin (``flat``, ``flat_twin``), the
    same ones when it holds."""
    from optimizers import functional_loss
    from optimizers.flatness import flat_subsets, projected_derivatives_with_flatness
    from optimizers.subspace import subspace_step

    groups = map_groups(model, None) if groups is None else groups

    def derivatives(net):
        loss_fn = functional_loss(net, criterion, *batch)
        live = dict(net.named_parameters())
        grads = torch.autograd.grad(loss_fn(live), list(live.values()))
        params = {n: p.detach() for n, p in live.items()}
        direction = dict(zip(params, grads, strict=True))
        (g, h, d3), ratios = projected_derivatives_with_flatness(
            loss_fn, params, groups, direction, 3, diagonal=True
        )
        flat = flat_subsets(ratios, next(iter(params.values())).dtype)
        d = d3.abs().double() ** (1.0 / 3.0)
        return g.double(), h.double(), d, flat, subspace_step(g, h, d, lambda_int, flat=flat)

    g, h, d, flat, step = derivatives(model)
    g2, h2, d2, flat2, step2 = derivatives(twin)
    a2 = torch.tensor([scales[group[0]] ** 2 for group in groups], dtype=torch.float64)
    keep = ~(flat | flat2)  # the laws on the subsets whose entries are not rounding noise
    laws = {
        "g": _relative(g2[keep], (a2 * g)[keep]),
        "H": _relative(h2[keep][:, keep], (a2[:, None] * a2[None, :] * h)[keep][:, keep]),
        "d": _relative(d2[keep], (a2 * d)[keep]),
        "eta": _relative(step2.eta, step.eta / a2) if step.ok and step2.ok else None,
        "solver_status": str(step.status.value),
        "flat": [",".join(group) for group, f in zip(groups, flat.tolist(), strict=True) if f],
        "flat_twin": [
            ",".join(group) for group, f in zip(groups, flat2.tolist(), strict=True) if f
        ],
    }
    return laws


def _model_and_twin(problem: Any, seed: int, dtype: torch.dtype, scales, shifts):
    """The problem's model and its reparameterized twin (the same function), both from ``seed``."""
    model = problem.make_model(seed, dtype=dtype)
    twin = problem.make_model(seed, dtype=dtype)
    reparameterize(twin, scales, shifts)
    return model, twin


def _train_pair(
    model, twin, name, hyperparameters, *, steps, seed, batch, curvature_offset,
    criterion=F.cross_entropy,
):  # fmt: skip
    """Train ``model`` and ``twin`` with optimizer ``name`` on the same batches (and curvature
    batches); the per-step parameter and loss deviations."""
    from optimizers.registry import make

    torch.manual_seed(seed)
    ours = make(name, model, hyperparameters, criterion=criterion)
    torch.manual_seed(seed)
    theirs = make(name, twin, hyperparameters, criterion=criterion)
    params_dev, loss_dev = [], []
    for t in range(steps):
        curvature = batch(t, offset=curvature_offset) if ours.needs_curvature_batch else None
        loss = float(ours.step(batch(t), curvature))
        loss_twin = float(theirs.step(batch(t), curvature))
        loss_dev.append(abs(loss - loss_twin) / max(abs(loss), 1e-300))
        params_dev.append(deviation(model, twin))
    return params_dev, loss_dev


def study(
    problem: Any,
    splits: Any,
    optimizers: dict[str, dict[str, Any]],
    *,
    steps: int,
    batch_size: int,
    seed: int,
    dtype: torch.dtype,
    scale_range: float,
    shift_std: float,
    min_movement: float,
    partition: str | None = None,
) -> dict[str, Any]:
    """Train model and twin with every optimizer; deviations per step (pure, no I/O).

    The scales are constant on the subsets of ``partition`` (:func:`map_groups`; None: per
    tensor), the partition the invariant optimizers are given in ``optimizers``."""
    from bench.training.runs import problem_criterion

    floating = torch.as_tensor(splits.x_train[:0]).is_floating_point()
    x = torch.as_tensor(splits.x_train, dtype=dtype if floating else torch.long)  # token ids
    y = torch.as_tensor(splits.y_train, dtype=torch.long)
    criterion = problem_criterion(problem)  # a language model's loss is per token
    count = len(x)

    def batch(index: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        rows = (torch.arange(batch_size) + offset + index * batch_size) % count
        return x[rows], y[rows]

    template = problem.make_model(seed, dtype=dtype)
    groups = map_groups(template, partition)
    scales, shifts = draw_maps(template, seed + 1, scale_range, shift_std, groups)
    result: dict[str, Any] = {"per_step": {}, "moved": {}, "max_relative_deviation": {}}
    result["max_loss_deviation"] = {}
    for name, hyperparameters in optimizers.items():
        model, twin = _model_and_twin(problem, seed, dtype, scales, shifts)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        params_dev, loss_dev = _train_pair(
            model, twin, name, hyperparameters,
            steps=steps, seed=seed, batch=batch, curvature_offset=count // 2, criterion=criterion,
        )  # fmt: skip
        moved = _relative(_flat(p for _, p in model.named_parameters()), _flat(start.values()))
        finite = all(math.isfinite(v) for v in params_dev + loss_dev)
        result["moved"][name] = moved
        result["per_step"][name] = {"parameters": params_dev, "loss": loss_dev}
        exercised = moved >= min_movement and finite
        result["max_relative_deviation"][name] = max(params_dev) if exercised else None
        result["max_loss_deviation"][name] = max(loss_dev) if exercised else None
    if result["max_relative_deviation"].get("partitioned_newton", 0.0) is None:
        raise ConfigError(
            f"invariance.steps={steps}: partitioned_newton moved its weights by "
            f"{result['moved']['partitioned_newton']:.2e} < invariance.min_movement="
            f"{min_movement}: raise invariance.steps so that several curvature recomputations "
            "follow the warm-up"
        )
    model, twin = _model_and_twin(problem, seed, dtype, scales, shifts)
    result["scaling_laws"] = scaling_laws(
        model, twin, scales, batch(0, offset=count // 2), criterion=criterion, groups=groups
    )
    result["map_partition"] = partition or "per_tensor"
    result["scales"] = scales
    return result


def invariance_hyperparameters(config: Config, name: str) -> dict[str, Any]:
    """The optimizer's params section, plus the stage's overrides where the optimizer has them
    (``update_every``, ``warmup``, ``average``: the weights move from the first steps)."""
    from optimizers.registry import get_spec

    defaults = get_spec(name).defaults
    section = config.optimizers[name].hyperparameters if name in config.optimizers else {}
    chosen = dict(section)
    for key, value in config.invariance.overrides.items():
        if key in defaults:
            chosen[key] = value
    return chosen


def invariance_cell(config: Config, problem_name: str, results: Path = Path("results")) -> Path:
    """Run the study on one problem of ``config`` and write its record; return the path."""
    from bench.problems import get_problem
    from bench.training.cells import cell_hyperparameters

    settings = config.invariance
    if problem_name not in config.problems:
        raise UsageError(
            f"--problem {problem_name!r}: not one of the params' problems "
            f"({', '.join(config.problems)})"
        )
    problem = get_problem(problem_name)
    splits = prepared_splits(config, problem.dataset, results)
    torch.set_num_threads(config.train.threads)
    names = settings.optimizers or tuple(config.optimizers)
    # the problem's partition (params' problem_settings, else its own), as the train cells do
    partition = config.settings_of(problem_name).partition or problem.partition
    optimizers = {
        name: cell_hyperparameters(config, problem, name, invariance_hyperparameters(config, name))
        for name in names
    }
    outcome = study(
        problem,
        splits,
        optimizers,
        steps=settings.steps,
        batch_size=settings.batch_size,
        seed=settings.seed,
        dtype=DTYPES[settings.dtype],
        scale_range=settings.scale_range,
        shift_std=settings.shift_std,
        min_movement=settings.min_movement,
        partition=partition,
    )
    record = {
        "problem": problem_name,
        "steps": settings.steps,
        "dtype": settings.dtype,
        "expected": EXPECTATION,
        "expected_invariant": [n for n in names if n in INVARIANT],
        "hyperparameters": optimizers,
        **outcome,
        "command": f"dvc repro invariance@{problem_name}",
        "provenance": provenance(
            seed=settings.seed,
            device="cpu",
            threads=config.train.threads,
            params={"invariance": dict(config.raw.get("invariance", {}))},
            cwd=config.root,
        ),
    }
    path = layout.invariance_path(config.profile, problem_name, results)
    write_json_atomic(path, record, allow_nan=True)  # a diverged twin's deviations stay as-is
    return path
