"""Timing stage: step cost of every optimizer, and how the projected derivatives scale.

    python -m bench.timing [--params params.yaml]

Absolute times on shared machines are noise; everything here is a ratio of computations timed
interleaved in one process (round-robin, median over rounds):

* ``results/<profile>/timing/steps.csv`` — per problem and optimizer: the step time amortised
  over ``timing.period`` consecutive steps (one curvature recomputation per period for ours),
  in gradient-equivalents (one forward + backward on the same batch) and × the SGD step; for
  ours also the median plain step and the amortised cost of the recomputation; peak memory (the
  high-water-mark growth of a fresh process running the optimizer, when ``timing.memory``).
* ``results/<profile>/timing/scaling.csv`` — ``projected_derivatives`` (order 2, order-3
  diagonal, full order 3) in gradient-equivalents on a tanh MLP, against S (partitions single,
  blocks, per module, per tensor) and against width, depth and batch size.
* ``results/<profile>/timing/environment.json`` — CPU/GPU model, torch, threads, commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import Config, ConfigError, load_config
from bench.io import write_json_atomic, write_rows_csv_atomic
from bench.provenance import provenance

STEP_COLUMNS = [
    "problem", "optimizer", "seconds", "gradients", "vs_sgd", "plain_step_gradients",
    "recomputation_gradients_amortised", "peak_memory_mb", "rounds", "period",
]  # fmt: skip
SCALING_COLUMNS = [
    "sweep", "partition", "subsets", "width", "depth", "batch", "variant", "seconds", "gradients",
]  # fmt: skip


def interleaved(work: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each callable per round; the order alternates between rounds."""
    for fn in work.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in work}
    for r in range(rounds):
        for name in list(work) if r % 2 == 0 else list(reversed(work)):
            start = time.perf_counter()
            work[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


# ------------------------------------------------------------------------ optimizer steps
def _step_workloads(problem, splits, names, hyperparameters, period, batch_size, seed=0):
    """Callables running ``period`` steps of each optimizer (and one gradient), plus the
    per-step times of our optimizers split into recomputation and plain steps."""
    from optimizers.registry import make

    x = torch.as_tensor(splits.x_train[: 2 * batch_size], dtype=torch.float32)
    y = torch.as_tensor(splits.y_train[: 2 * batch_size], dtype=torch.long)
    batch, curvature = (x[:batch_size], y[:batch_size]), (x[batch_size:], y[batch_size:])
    gradient_model = problem.make_model(seed)

    def gradient() -> None:
        gradient_model.zero_grad(set_to_none=True)
        F.cross_entropy(gradient_model(batch[0]), batch[1]).backward()

    work: dict[str, Callable[[], Any]] = {"gradient": gradient}
    split_times: dict[str, dict[str, list[float]]] = {}
    for name in names:
        optimizer = make(name, problem.make_model(seed), hyperparameters.get(name, {}))
        times = split_times.setdefault(name, {"recompute": [], "plain": []})

        def run(optimizer=optimizer, times=times) -> None:
            for _ in range(period):
                recompute = bool(getattr(optimizer.optimizer, "needs_curvature", False))
                start = time.perf_counter()
                optimizer.step(batch, curvature if optimizer.needs_curvature_batch else None)
                times["recompute" if recompute else "plain"].append(time.perf_counter() - start)

        work[name] = run
    return work, split_times


def time_steps(problem, splits, names, hyperparameters, *, period, rounds, batch_size):
    work, split_times = _step_workloads(problem, splits, names, hyperparameters, period, batch_size)
    samples = interleaved(work, rounds)
    gradient = statistics.median(samples["gradient"])
    rows = []
    for name in names:
        seconds = statistics.median(samples[name]) / period
        plain = split_times[name]["plain"]
        recompute = split_times[name]["recompute"]
        plain_median = statistics.median(plain) if plain else float("nan")
        extra = (statistics.mean(recompute) - plain_median) / period if recompute else 0.0
        rows.append(
            {
                "problem": problem.name,
                "optimizer": name,
                "seconds": seconds,
                "gradients": seconds / gradient,
                "plain_step_gradients": plain_median / gradient,
                "recomputation_gradients_amortised": extra / gradient,
                "rounds": rounds,
                "period": period,
            }
        )
    if "sgd" in names:
        sgd = next(r["seconds"] for r in rows if r["optimizer"] == "sgd")
        for row in rows:
            row["vs_sgd"] = row["seconds"] / sgd
    return rows


def peak_memory_mb(params: str, results: str, problem: str, optimizer: str) -> float:
    """High-water-mark growth (MB) of a fresh process running ``period`` steps of one optimizer."""
    command = [
        sys.executable, "-m", "bench.timing", "--params", params, "--results", results,
        "--memory-of", problem, optimizer,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _high_water_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(config: Config, results: Path, problem_name: str, optimizer: str) -> float:
    from bench.data import load_splits
    from bench.problems import get_problem

    problem = get_problem(problem_name)
    splits = load_splits(config.data_path(problem.dataset, results))
    hyperparameters = {optimizer: dict(config.optimizers[optimizer].hyperparameters)}
    work, _ = _step_workloads(
        problem, splits, [optimizer], hyperparameters, config.timing.period, _batch(config, problem)
    )
    base = _high_water_mb()
    work[optimizer]()
    return _high_water_mb() - base


def _batch(config: Config, problem) -> int:
    return config.train.batch_size or problem.batch_size


# ----------------------------------------------------------------------------- scaling
def _mlp(width: int, depth: int, inputs: int = 64, classes: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.Tanh()]
        size = width
    layers.append(nn.Linear(size, classes))
    return nn.Sequential(*layers)


def _derivative_work(width, depth, batch, partition_name, full_max_subsets):
    from optimizers import functional_loss, partition, projected_derivatives

    torch.manual_seed(0)
    model = _mlp(width, depth)
    x, y = torch.randn(batch, 64), torch.randint(0, 10, (batch,))
    if partition_name.startswith("blocks"):
        groups = partition.blocks(model, int(partition_name[len("blocks") :]))
    else:
        groups = partition.get_partition(partition_name)(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    loss_fn = functional_loss(model, F.cross_entropy, x, y)

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    work = {
        "gradient": gradient,
        "order2": lambda: projected_derivatives(loss_fn, params, groups, direction, 2),
        "order3_diagonal": lambda: projected_derivatives(
            loss_fn, params, groups, direction, 3, diagonal=True
        ),
    }
    if len(groups) <= full_max_subsets:
        work["order3_full"] = lambda: projected_derivatives(loss_fn, params, groups, direction, 3)
    return work, len(groups)


def scaling_points(settings) -> list[tuple[str, str, int, int, int]]:
    """(sweep, partition, width, depth, batch) of every measured point."""
    w, d, b = settings.width, settings.depth, settings.batch
    points = [("subsets", p, w, d, b) for p in settings.partitions]
    points += [("width", "per_tensor", width, d, b) for width in settings.widths]
    points += [("depth", "per_tensor", w, depth, b) for depth in settings.depths]
    points += [("batch", "per_tensor", w, d, batch) for batch in settings.batches]
    return points


def time_scaling(settings) -> list[dict[str, Any]]:
    rows = []
    for sweep, partition_name, width, depth, batch in scaling_points(settings):
        work, subsets = _derivative_work(
            width, depth, batch, partition_name, settings.full_order3_max_subsets
        )
        samples = interleaved(work, settings.rounds)
        gradient = statistics.median(samples["gradient"])
        for variant, values in samples.items():
            if variant == "gradient":
                continue
            seconds = statistics.median(values)
            rows.append(
                {
                    "sweep": sweep, "partition": partition_name, "subsets": subsets,
                    "width": width, "depth": depth, "batch": batch, "variant": variant,
                    "seconds": seconds, "gradients": seconds / gradient,
                }
            )  # fmt: skip
    return rows


# ------------------------------------------------------------------------------- stage
def environment(config: Config) -> dict[str, Any]:
    record = provenance(
        seed=None,
        device="cpu",
        threads=config.train.threads,
        params={"timing": dict(config.raw.get("timing", {}))},
        cwd=Path(__file__).parent,
    )
    record["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return record


def timing_stage(config: Config, results: Path = Path("results"), params: str = "params.yaml"):
    from bench.data import load_splits
    from bench.problems import get_problem

    settings = config.timing
    torch.set_num_threads(config.train.threads)
    names = list(settings.optimizers or config.optimizers)
    hyperparameters = {n: dict(config.optimizers[n].hyperparameters) for n in names}
    out = config.results_dir(results) / "timing"
    step_rows = []
    for problem_name in config.problems:
        problem = get_problem(problem_name)
        splits = load_splits(config.data_path(problem.dataset, results))
        rows = time_steps(
            problem, splits, names, hyperparameters, period=settings.period,
            rounds=settings.rounds, batch_size=_batch(config, problem),
        )  # fmt: skip
        for row in rows:
            row["peak_memory_mb"] = (
                peak_memory_mb(params, str(results), problem_name, row["optimizer"])
                if settings.memory
                else None
            )
        step_rows += rows
    write_rows_csv_atomic(out / "steps.csv", step_rows, STEP_COLUMNS)
    write_rows_csv_atomic(out / "scaling.csv", time_scaling(settings.scaling), SCALING_COLUMNS)
    write_json_atomic(out / "environment.json", environment(config))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="timing stage")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--results", default="results")
    parser.add_argument("--memory-of", nargs=2, metavar=("PROBLEM", "OPTIMIZER"))
    args = parser.parse_args(argv)
    try:
        config = load_config(args.params)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.memory_of:
        torch.set_num_threads(config.train.threads)
        print(_memory_child(config, Path(args.results), *args.memory_of))
        return 0
    out = timing_stage(config, Path(args.results), args.params)
    print(json.dumps({"written": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
