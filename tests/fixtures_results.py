"""Synthetic results trees shaped like the run record of bench/schema.py, and params files.

``write_results_tree(root, seed=...)`` writes
``root/<profile>/runs/<problem>/<optimizer>/<seed>/{history.csv, metrics.json[, probe.csv]}`` with
made-up but contract-shaped content: exponentially decaying training losses (one rate per
optimizer), cumulative wall-clock, test accuracy as a fraction, ``diag/eta/<subset>`` columns for
our optimizers, diverged runs whose final values are the values at divergence (NaN or inf), and
``probe.csv`` for the probed optimizers with a known over/under-step pattern (:data:`PROBE_ETA`).
A problem named in ``perplexity`` (e.g. :data:`LM_LAYOUT`'s, registered for one test by
:func:`register_lm_problem`) is a language model's: its quality metric is the test perplexity
per token, exp(test loss), lower is better (``test_perplexity``, ``final_test_perplexity``,
``best_test_perplexity`` = its minimum) instead of the accuracy.
The tests read the written files back independently of ``bench.reporting``; the column and key
names are spelt out here on purpose (an independent statement of the record's format).
The problems carry registered names, so a params file can name them: ``write_params`` writes one
whose cells (problems × optimizers × seeds) are those of a tree written with the same ``layout``
and ``seeds``, as the aggregate and the report read exactly params' cells.
``write_tune_files`` writes ``root/<profile>/tune/<problem>/<optimizer>.json`` for a layout, the
choice of each cell set by :data:`TUNE_CHOICE` (at an edge of its grid or inside it), half of
them with the tune stage's ``at_edge`` key and half without (the report computes it then).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]

SUBSETS = ("0.weight", "0.bias", "2.weight", "2.bias")
# problem → optimizers run on it: the same on every problem, as params' cells are a product.
OPTIMIZERS = ("sgd", "adam", "partitioned_newton", "partitioned_newton_diag", "cauchy")
LAYOUT = {"digits_mlp": OPTIMIZERS, "mnist1d_mlp": OPTIMIZERS}
SEEDS = (0, 1, 2)
# (problem, optimizer, seed, epoch of divergence, non-finite loss written there)
DIVERGED = (("digits_mlp", "adam", 1, 2, math.nan), ("mnist1d_mlp", "sgd", 2, 3, math.inf))
RATE = {"sgd": 0.3, "adam": 0.5, "partitioned_newton": 0.8, "partitioned_newton_diag": 0.6}
SECONDS_PER_EPOCH = {"sgd": 1.0, "adam": 1.2, "partitioned_newton": 2.0}
# Per-subset η*_s of the probe: ≫ 1 under-steps, ≪ 1 or < 0 over-steps, ≈ 1 about right.
PROBE_ETA = {"0.weight": 8.0, "0.bias": 1.0, "2.weight": 0.1, "2.bias": -0.5}
PROBE_EXPECTED_PATTERN = {
    "0.weight": "under",
    "0.bias": "right",
    "2.weight": "over",
    "2.bias": "over",
}
OURS = ("partitioned_newton", "partitioned_newton_diag", "partitioned_newton_order2", "cauchy")
LM_PROBLEM = "tinylm_transformer"  # a language model's results (perplexity), register_lm_problem
LM_LAYOUT = {LM_PROBLEM: OPTIMIZERS}
MIXED_LAYOUT = {"digits_mlp": OPTIMIZERS, LM_PROBLEM: OPTIMIZERS}

# The default grid of issue 12: an MLP, LeNet-5, a BatchNorm residual CNN and a character-level
# transformer (perplexity), four optimizers (no variant of ours), five seeds.
GRID_LM = "pytopics_chartransformer"
GRID_PROBLEMS = ("digits_mlp", "mnist5k_lenet5", "mnist5k_bnresnet", GRID_LM)
GRID_OPTIMIZERS = ("sgd", "adam", "kfac", "partitioned_newton")
GRID_LAYOUT = {problem: GRID_OPTIMIZERS for problem in GRID_PROBLEMS}
GRID_SEEDS = (0, 1, 2, 3, 4)
# Ours trains fastest on the MLP and LeNet, is beaten by K-FAC on the BatchNorm CNN (where K-FAC
# overfits: the best test accuracy is Adam's) and by Adam on the transformer (a negative result).
GRID_RATES = {
    ("digits_mlp", "partitioned_newton"): 0.9,
    ("mnist5k_lenet5", "partitioned_newton"): 0.7,
    ("mnist5k_bnresnet", "kfac"): 1.0,
    ("mnist5k_bnresnet", "partitioned_newton"): 0.6,
    (GRID_LM, "adam"): 0.7,
    (GRID_LM, "partitioned_newton"): 0.15,
    (GRID_LM, "kfac"): 0.45,
}  # fmt: skip  (the others: RATE's)
GRID_GAPS = {("mnist5k_bnresnet", "kfac"): 0.25}
GRID_DIVERGED = (("mnist5k_bnresnet", "partitioned_newton", 3, 2, math.nan),)
GRID_SECONDS = {"mnist5k_lenet5": 4.0, "mnist5k_bnresnet": 12.0, GRID_LM: 20.0}
# Ours' subsets: one per tensor, one per module on the transformer (its problem's partition):
# the parameter names of the registered models, written out here.
_BLOCK = ("ln1", "attn.qkv", "attn.proj", "ln2", "mlp.0", "mlp.2")
_RESNET_BLOCK = ("conv1", "bn1", "conv2", "bn2")
GRID_SUBSETS = {
    "digits_mlp": tuple(f"{i}.{p}" for i in (1, 3, 5) for p in ("weight", "bias")),
    "mnist5k_lenet5": tuple(f"{i}.{p}" for i in (0, 3, 7, 9, 11) for p in ("weight", "bias")),
    "mnist5k_bnresnet": tuple(
        f"{m}.{p}"
        for m in (
            "0",
            "1",
            *(f"{b}.{x}" for b in (3, 4) for x in _RESNET_BLOCK),
            "4.shortcut.0",
            "4.shortcut.1",
            "7",
        )
        for p in ("weight", "bias")
    ),  # fmt: skip
    GRID_LM: tuple(
        "+".join(
            f"{m}.{p}" for p in (("weight",) if m in ("token", "position") else ("weight", "bias"))
        )
        for m in (
            "token",
            "position",
            *(f"blocks.{b}.{x}" for b in (0, 1) for x in _BLOCK),
            "ln",
            "head",
        )
    ),  # fmt: skip
}
_PROBE_CYCLE = tuple(PROBE_ETA.values())  # under, right, over, over


@dataclass(frozen=True)
class Shape:
    """Per-cell shape of the synthetic runs: decay rates, generalisation gaps and the time scale
    of each problem, ours' subsets per problem (default: :data:`SUBSETS` and RATE's rates)."""

    rates: dict[tuple[str, str], float] = field(default_factory=dict)
    gaps: dict[tuple[str, str], float] = field(default_factory=dict)
    subsets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def of(self, problem: str, optimizer: str) -> dict:
        return {
            "rate": self.rates.get((problem, optimizer)),
            "gap": self.gaps.get((problem, optimizer), 0.0),
            "subsets": self.subsets.get(problem, SUBSETS),
            "seconds_scale": self.seconds.get(problem, 1.0),
        }

    def probe(self, problem: str) -> dict[str, float]:
        """The probe's η*_s per subset: :data:`PROBE_ETA`, or its four values cycled over the
        problem's subsets."""
        if problem not in self.subsets:
            return PROBE_ETA
        names = self.subsets[problem]
        return {s: _PROBE_CYCLE[i % len(_PROBE_CYCLE)] for i, s in enumerate(names)}


GRID_SHAPE = Shape(GRID_RATES, GRID_GAPS, GRID_SUBSETS, GRID_SECONDS)


def register_lm_problem(monkeypatch):
    """Register :data:`LM_PROBLEM` (metric perplexity) for one test so that a params file can
    name it; the fixture's results never load its data or build its model."""
    from bench.models import mlp
    from bench.problems import PROBLEMS, Problem, register_problem

    problem = Problem(LM_PROBLEM, "digits", lambda: mlp(64, (8,), 10), 5, metric="perplexity")
    return for_one_test(monkeypatch, PROBLEMS, problem, register_problem)


def for_one_test(monkeypatch, registry: dict, entry, register):
    """``register(entry, replace=True)`` into ``registry``, undone when the test ends (the
    registries are the session's: a test problem left there would be every later test's)."""
    monkeypatch.setitem(registry, entry.name, entry)  # remembers what to restore
    return register(entry, replace=True)


def provenance(seed: int) -> dict:
    return {
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "git_dirty": False,
        "params_hash": "feedc0ffee",
        "torch": "2.13.0+cpu",
        "python": "3.11.2",
        "hobench": "0.1.0",
        "numpy": "2.0.0",
        "device": "cpu",
        "threads": 2,
        "seed": seed,
        "hostname": "synthetic-host",
        "cpu": "Synthetic CPU @ 1 GHz",
        "cpu_capability": "AVX2",
        "created": "2025-01-01T00:00:00+00:00",
    }


def make_history(
    rng: np.random.Generator,
    optimizer: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    diverge_at: int | None = None,
    diverged_value: float = math.nan,
    perplexity: bool = False,
    rate: float | None = None,
    gap: float = 0.0,
    subsets: tuple[str, ...] = SUBSETS,
    seconds_scale: float = 1.0,
) -> pd.DataFrame:
    """history.csv rows for epochs 0..epochs (cut at ``diverge_at``, whose loss is non-finite);
    with ``perplexity``, a language model's: ``test_perplexity`` = exp(test loss) in place of
    ``test_accuracy``. ``rate``: the training loss's decay rate (default :data:`RATE`'s);
    ``gap``: added to the test loss and taken off the test accuracy (a model that fits the
    training split better than it generalises); ``subsets``: ours' ``diag/eta/<subset>``."""
    last = epochs if diverge_at is None else diverge_at
    epoch = np.arange(last + 1)
    rate = RATE.get(optimizer, 0.4) if rate is None else rate
    decay = np.exp(-rate * epoch) * (1.0 + 0.05 * rng.standard_normal(epoch.size))
    train_loss = 2.3 * decay
    per_epoch = (
        seconds_scale * SECONDS_PER_EPOCH.get(optimizer, 1.5) * (1.0 + 0.1 * rng.random(last))
    )
    widen = np.minimum(epoch, 1) * gap  # no gap before training (epoch 0)
    history = pd.DataFrame(
        {
            "epoch": epoch,
            "step": epoch * steps_per_epoch,
            "train_loss": train_loss,
            "test_loss": 1.1 * train_loss + 0.05 + widen,
            "test_accuracy": np.clip(1.0 - 0.9 * decay - widen, 0.0, 1.0),
            "wall_clock": np.concatenate([[0.0], np.cumsum(per_epoch)]),
            "lr": 0.1,
            "diverged": 0,
        }
    )
    if diverge_at is not None:
        history.loc[diverge_at, ["train_loss", "test_loss"]] = diverged_value
        history.loc[diverge_at, "test_accuracy"] = 0.1
        history.loc[diverge_at, "diverged"] = 1
    if perplexity:
        history.insert(4, "test_perplexity", np.exp(history["test_loss"]))
        history = history.drop(columns="test_accuracy")
    if optimizer in OURS:
        subsets = ("all",) if optimizer == "cauchy" else subsets
        for index, subset in enumerate(subsets):
            eta = (
                (0.5 + index) * (1.0 + 0.1 * epoch) * (1.0 + 0.02 * rng.standard_normal(epoch.size))
            )
            eta[0] = math.nan  # no diagnostics before the first step
            history[f"diag/eta/{subset}"] = eta
    return history


def make_probe(
    rng: np.random.Generator, *, steps: int, every: int = 5, etas: dict[str, float] = PROBE_ETA
) -> pd.DataFrame:
    """probe.csv rows: η*_s around ``etas`` (subset → η*), one 'singular' row with NaN values."""
    rows = []
    for step in range(0, steps + 1, every):
        for subset, eta in etas.items():
            value = eta * (1.0 + 0.1 * rng.standard_normal())
            g, h = abs(rng.standard_normal()) + 0.1, abs(rng.standard_normal()) + 0.1
            rows.append((step, subset, value, value, g, h, "newton"))
    rows.append((steps, next(iter(etas)), math.nan, math.nan, math.nan, math.nan, "singular"))
    return pd.DataFrame(rows, columns=["step", "subset", "eta", "ratio", "g", "h", "status"])


def write_results_tree(
    root: Path,
    *,
    seed: int,
    profile: str = "default",
    layout: dict[str, tuple[str, ...]] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    epochs: int = 5,
    steps_per_epoch: int = 10,
    diverged: tuple = DIVERGED,
    probe_optimizers: tuple[str, ...] = ("sgd",),
    perplexity: tuple[str, ...] = (LM_PROBLEM, GRID_LM),
    shape: Shape | None = None,
) -> dict[tuple[str, str, int], dict]:
    """Write ``root/<profile>/runs/...``; return {(problem, optimizer, seed): metrics}. The
    problems in ``perplexity`` are language models (module docstring); ``shape``: per-cell
    rates, gaps, subsets and time scales (:class:`Shape`; :data:`GRID_SHAPE` for the grid)."""
    shape = shape or Shape()
    rng = np.random.default_rng(seed)
    divergence = {(p, o, s): (epoch, value) for p, o, s, epoch, value in diverged}
    written = {}
    for problem, optimizers in (layout or LAYOUT).items():
        for optimizer in optimizers:
            for run_seed in seeds:
                epoch_value = divergence.get((problem, optimizer, run_seed))
                history = make_history(
                    rng,
                    optimizer,
                    epochs=epochs,
                    steps_per_epoch=steps_per_epoch,
                    diverge_at=None if epoch_value is None else epoch_value[0],
                    diverged_value=math.nan if epoch_value is None else epoch_value[1],
                    perplexity=problem in perplexity,
                    **shape.of(problem, optimizer),
                )
                last = history.iloc[-1]
                if problem in perplexity:
                    quality = {
                        "final_test_perplexity": float(last["test_perplexity"]),
                        "best_test_perplexity": float(history["test_perplexity"].min()),
                    }
                else:
                    quality = {
                        "final_test_accuracy": float(last["test_accuracy"]),
                        "best_test_accuracy": float(history["test_accuracy"].max()),
                    }
                metrics = {
                    "problem": problem,
                    "optimizer": optimizer,
                    "seed": run_seed,
                    "epochs": int(last["epoch"]),
                    "steps": int(last["step"]),
                    "final_train_loss": float(last["train_loss"]),
                    "final_test_loss": float(last["test_loss"]),
                    **quality,
                    "wall_clock": float(last["wall_clock"]),
                    "diverged": epoch_value is not None,
                    "diverged_epoch": None if epoch_value is None else epoch_value[0],
                    "hyperparameters": {"lr": 0.1},
                    "provenance": provenance(run_seed),
                }
                run_dir = Path(root) / profile / "runs" / problem / optimizer / str(run_seed)
                run_dir.mkdir(parents=True, exist_ok=True)
                history.to_csv(run_dir / "history.csv", index=False)
                # NaN / Infinity literals, as Python's json.dumps writes them by default.
                (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
                if optimizer in probe_optimizers:
                    probe = make_probe(rng, steps=metrics["steps"], etas=shape.probe(problem))
                    probe.to_csv(run_dir / "probe.csv", index=False)
                written[(problem, optimizer, run_seed)] = metrics
    return written


def write_params(
    path: Path,
    *,
    profile: str = "default",
    layout: dict[str, tuple[str, ...]] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    train_loss_target: dict[str, float] | None = None,
    probe_optimizers: tuple[str, ...] | None = None,
) -> Path:
    """The repository's params.yaml with these values changed, written to ``path``: problems the
    keys of ``layout``, one optimizer section per optimizer named in it (in order of appearance),
    ``seeds``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = profile
    layout = layout or LAYOUT
    params["problems"] = list(layout)
    params["seeds"] = list(seeds)
    names = list(dict.fromkeys(name for names in layout.values() for name in names))
    blank = {"hyperparameters": {}, "grid": None}
    params["optimizers"] = {name: params["optimizers"].get(name, blank) for name in names}
    settings = params.get("problem_settings") or {}  # the repository's, for its problems
    params["problem_settings"] = {p: v for p, v in settings.items() if p in params["problems"]}
    if train_loss_target is not None:
        params["aggregate"]["train_loss_target"] = dict(train_loss_target)
    if probe_optimizers is not None:
        params["train"]["probe"]["optimizers"] = list(probe_optimizers)
    Path(path).write_text(yaml.safe_dump(params, sort_keys=False))
    return Path(path)


# Tune grids: lr (3 values) for all, lr × damping for kfac. Index of the chosen value per axis:
# 0 or 2 is an edge of the grid, 1 is inside.
TUNE_LR = (0.01, 0.1, 0.3)
TUNE_DAMPING = (0.03, 0.1, 0.3)
TUNE_CHOICE = {"sgd": {"lr": 1}, "adam": {"lr": 2}, "partitioned_newton": {"lr": 0},
               "kfac": {"lr": 1, "damping": 0}}  # fmt: skip


def tune_record(problem: str, optimizer: str, with_key: bool) -> dict:
    """One tune file's content: the grid's rows, the chosen point, ``at_edge`` when asked."""
    choice = TUNE_CHOICE.get(optimizer, {"lr": 1})
    axes = {"lr": TUNE_LR} | ({"damping": TUNE_DAMPING} if "damping" in choice else {})
    best = {axis: axes[axis][index] for axis, index in choice.items()}
    rows = []
    for values in np.array(np.meshgrid(*axes.values(), indexing="ij")).reshape(len(axes), -1).T:
        point = dict(zip(axes, map(float, values), strict=True))
        distance = sum(abs(math.log(point[a] / best[a])) for a in axes)
        quality = {"valid_perplexity": 1.5} if problem in (LM_PROBLEM, GRID_LM) else {
            "valid_accuracy": 0.9}  # fmt: skip
        rows.append({**point, "valid_loss": 0.5 + distance, **quality,
                     "train_loss": 0.4 + distance, "diverged": False})  # fmt: skip
    record = {"problem": problem, "optimizer": optimizer, "grid": rows, "best": best,
              "all_diverged": False, "epochs": 2}  # fmt: skip
    if with_key:
        record["at_edge"] = [a for a, i in choice.items() if i in (0, len(axes[a]) - 1)]
    return record


def expected_edges(layout: dict[str, tuple[str, ...]] | None = None) -> set[tuple[str, str, str]]:
    """(problem, optimizer, hyperparameter) of every choice at an edge of its grid."""
    return {
        (problem, optimizer, axis)
        for problem, optimizers in (layout or LAYOUT).items()
        for optimizer in optimizers
        for axis, index in TUNE_CHOICE.get(optimizer, {"lr": 1}).items()
        if index in (0, 2)
    }


def write_tune_files(
    root: Path, *, profile: str = "default", layout: dict[str, tuple[str, ...]] | None = None
) -> None:
    """``root/<profile>/tune/<problem>/<optimizer>.json`` for every cell of ``layout``."""
    for problem, optimizers in (layout or LAYOUT).items():
        for index, optimizer in enumerate(optimizers):
            folder = Path(root) / profile / "tune" / problem
            folder.mkdir(parents=True, exist_ok=True)
            record = tune_record(problem, optimizer, with_key=index % 2 == 0)
            (folder / f"{optimizer}.json").write_text(json.dumps(record, indent=2))


FLAT = {"mnist5k_bnresnet": ["0.bias", "3.conv1.bias"]}  # conv biases before a BatchNorm


def write_study_files(
    root: Path, *, profile: str = "default", layout: dict[str, tuple[str, ...]] | None = None
) -> None:
    """The invariance and timing studies' outputs for ``layout``, shaped like their records:
    ``invariance/<problem>.json`` (ours at rounding level, the others drifting, K-FAC not
    exercised on the last problem) and ``timing/{steps.csv, scaling.csv, environment.json}``."""
    layout = layout or GRID_LAYOUT
    folder = Path(root) / profile
    (folder / "invariance").mkdir(parents=True, exist_ok=True)
    (folder / "timing").mkdir(parents=True, exist_ok=True)
    last = list(layout)[-1]
    steps_rows = []
    for problem, optimizers in layout.items():
        deviation = {o: (1e-15 if o in OURS else 0.1 * (1 + i)) for i, o in enumerate(optimizers)}
        if problem == last and "kfac" in deviation:
            deviation["kfac"] = None  # its weights did not move enough
        record = {
            "problem": problem, "steps": 4, "dtype": "float64",
            "expected": "ours stays at rounding level; the baselines drift",
            "expected_invariant": [o for o in optimizers if o in OURS],
            "max_relative_deviation": deviation,
            "scaling_laws": {"g": 1e-16, "H": 2e-16, "d": 1e-16, "eta": 4e-16,
                             "solver_status": "newton", "flat": FLAT.get(problem, []),
                             "flat_twin": FLAT.get(problem, [])},
            "map_partition": "per_module" if problem == GRID_LM else "per_tensor",
            "per_step": {o: {"parameters": [(v or 0.0) * k / 4 for k in range(1, 5)],
                             "loss": [0.0] * 4} for o, v in deviation.items()},
        }  # fmt: skip
        path = folder / "invariance" / f"{problem}.json"
        path.write_text(json.dumps(record, indent=2))
        for index, optimizer in enumerate(optimizers):
            ours = optimizer in OURS
            steps_rows.append({
                "problem": problem, "optimizer": optimizer, "seconds": 0.001 * (1 + index),
                "gradients": 1.4 * (1 + index), "vs_sgd": 1.0 + index,
                "plain_step_gradients": 1.4, "recomputation_gradients_amortised":
                2.5 if ours else 0.0, "peak_memory_mb": 8.0 + index, "rounds": 3, "period": 10,
            })  # fmt: skip
    pd.DataFrame(steps_rows).to_csv(folder / "timing" / "steps.csv", index=False)
    base = {"subsets": 4, "width": 128, "depth": 4, "batch": 64}
    scaling = [
        {"sweep": sweep, "partition": "per_tensor", **base, sweep: k * base[sweep],
         "variant": variant, "seconds": 0.001 * k, "gradients": (1 + order) * k}
        for sweep in base for k in (1, 2, 4)
        for order, variant in enumerate(("order2", "order3_diagonal"))
    ]  # fmt: skip
    pd.DataFrame(scaling).to_csv(folder / "timing" / "scaling.csv", index=False)
    environment = {"cpu": "Synthetic CPU @ 1 GHz", "cpu_capability": "AVX2", "threads": 1,
                   "torch": "2.13.0+cpu", "git_commit": "0123456789abcdef"}  # fmt: skip
    (folder / "timing" / "environment.json").write_text(json.dumps(environment))
