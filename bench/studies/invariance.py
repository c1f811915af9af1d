"""The invariance study: per-tensor affine reparameterization θ_s = a_s θ̃_s + b_s (METHOD.md §6).

Run by the DVC stage ``python -m bench.invariance --problem digits_mlp [--params params.yaml]``
(:mod:`bench.invariance`). For one problem: draw a_s log-uniform in [1/scale_range, scale_range]
and b_s ~ N(0, shift_std²) per tensor (seeded), build the twin model whose parameters are θ̃
(same names, layers ``nn.Linear``/``nn.Conv2d`` that map θ̃ → θ in their forward), and train the
model and its twin with every optimizer of ``invariance.optimizers`` on identical batches and
curvature batches. After each step the twin's parameters are mapped back and compared:

    parameters[t] = ‖θ − (a θ̃ + b)‖ / ‖θ‖ (all tensors as one vector),   loss[t] = |L − L̃| / |L|.

Expected (written next to the report's figure): ``partitioned_newton``, ``_diag`` and ``_order2``
with the gradient or momentum proposal stay at rounding level; ``cauchy`` (S = 1, coarser than
the maps), the Adam proposal, SGD, Adam and K-FAC drift. The stage also checks the scaling laws
ḡ̃_s = a_s² ḡ_s, H̄̃_st = a_s² a_t² H̄_st, d̃_s = a_s² d_s and η̃_s = η_s / a_s² at the starting
point, with u the gradient. Writes ``results/<profile>/invariance/<problem>.json`` atomically.
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
    "weights); cauchy (S = 1, coarser than the per-tensor maps), the Adam proposal, SGD, Adam "
    "and K-FAC drift (METHOD.md §6)."
)
DTYPES = {"float64": torch.float64, "float32": torch.float32}


# ------------------------------------------------------------------ the reparameterized twin
def _mapped(module: nn.Module, name: str) -> Tensor | None:
    """θ = scale_<name> · θ̃ + shift_<name> of one parameter of a twin layer."""
    value = getattr(module, name)
    if value is None:
        return None
    return getattr(module, f"scale_{name}") * value + getattr(module, f"shift_{name}")


def _linear_forward(self: nn.Linear, x: Tensor) -> Tensor:
    return F.linear(x, _mapped(self, "weight"), _mapped(self, "bias"))


def _conv_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    return self._conv_forward(x, _mapped(self, "weight"), _mapped(self, "bias"))


_FORWARDS = {nn.Linear: _linear_forward, nn.Conv2d: _conv_forward}


def reparameterize(model: nn.Module, scales: dict[str, float], shifts: dict[str, Tensor]) -> None:
    """Turn ``model`` in place into its twin: parameter ``n`` holds θ̃_n = (θ_n − b_n) / a_n.

    Parameter names, layer classes (still ``nn.Linear``/``nn.Conv2d``: only their ``forward`` is
    replaced on the instance, so K-FAC recognises its layers) and outputs are unchanged. Other
    layers with parameters are refused.
    """
    for module_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        forward = _FORWARDS.get(type(module))
        if forward is None:
            raise ValueError(
                f"layer {module_name!r} ({type(module).__name__}) has parameters; the invariance "
                "stage reparameterizes nn.Linear and nn.Conv2d layers only"
            )
        module.forward = types.MethodType(forward, module)
        for name, parameter in own:
            full = f"{module_name}.{name}" if module_name else name
            scale = torch.tensor(scales[full], dtype=parameter.dtype, device=parameter.device)
            module.register_buffer(f"scale_{name}", scale)
            module.register_buffer(f"shift_{name}", shifts[full].to(parameter))
            with torch.no_grad():
                parameter.copy_((parameter - shifts[full]) / scale)


def mapped_parameters(twin: nn.Module) -> dict[str, Tensor]:
    """θ = a θ̃ + b of every parameter of a twin, by name."""
    out = {}
    for module_name, module in twin.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            out[full] = _mapped(module, name).detach()
    return out


def draw_maps(model: nn.Module, seed: int, scale_range: float, shift_std: float):
    """a_s log-uniform in [1/scale_range, scale_range], b_s ~ N(0, shift_std²), per tensor."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    scales, shifts = {}, {}
    for name, p in model.named_parameters():
        scales[name] = float(scale_range ** rng.uniform(-1.0, 1.0))
        shifts[name] = torch.randn(p.shape, generator=gen, dtype=torch.float64) * shift_std
    return scales, shifts


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
    model, twin, scales, batch, lambda_int: float = 1.0, criterion=F.cross_entropy
) -> dict[str, float]:
    """Max relative errors of ḡ̃ = a²ḡ, H̄̃ = a_s²a_t²H̄, d̃ = a²d, η̃ = η/a² (u = the gradient)."""
    from optimizers import functional_loss, partition, projected_derivatives
    from optimizers.subspace import subspace_step

    def derivatives(net):
        loss_fn = functional_loss(net, criterion, *batch)
        live = dict(net.named_parameters())
        grads = torch.autograd.grad(loss_fn(live), list(live.values()))
        params = {n: p.detach() for n, p in live.items()}
        direction = dict(zip(params, grads, strict=True))
        g, h, d3 = projected_derivatives(
            loss_fn, params, partition.per_tensor(net), direction, 3, diagonal=True
        )
        d = d3.abs().double() ** (1.0 / 3.0)
        return g.double(), h.double(), d, subspace_step(g, h, d, lambda_int)

    g, h, d, step = derivatives(model)
    g2, h2, d2, step2 = derivatives(twin)
    a2 = torch.tensor([scales[group[0]] ** 2 for group in _groups(model)], dtype=torch.float64)
    laws = {
        "g": _relative(g2, a2 * g),
        "H": _relative(h2, a2[:, None] * a2[None, :] * h),
        "d": _relative(d2, a2 * d),
        "eta": _relative(step2.eta, step.eta / a2) if step.ok and step2.ok else None,
        "solver_status": str(step.status.value),
    }
    return laws


def _groups(model: nn.Module) -> list[list[str]]:
    from optimizers import partition

    return partition.per_tensor(model)


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
) -> dict[str, Any]:
    """Train model and twin with every optimizer; deviations per step (pure, no I/O)."""
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
    scales, shifts = draw_maps(template, seed + 1, scale_range, shift_std)
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
        model, twin, scales, batch(0, offset=count // 2), criterion=criterion
    )
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
    optimizers = {name: invariance_hyperparameters(config, name) for name in names}
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
