"""The timing stage's study: step cost of every optimizer, and how the projected derivatives scale.

Run by the DVC stage ``python -m bench.timing [--params params.yaml]`` (:mod:`bench.timing`).
Absolute times on shared machines are noise; everything here is a ratio of computations timed
interleaved in one process (:func:`bench.studies.timer.interleaved`: one warm-up round, then
round-robin with the order reversed every other round, median over rounds):

* ``results/<profile>/timing/steps.csv`` — per problem and optimizer: the step time amortised
  over ``timing.period`` consecutive steps (one curvature recomputation per period for ours),
  in gradient-equivalents (one forward + backward on the same batch) and × the SGD step; for
  ours also the median plain step and the amortised cost of the recomputation; peak memory (the
  high-water-mark growth of a fresh process running the optimizer, :mod:`bench.studies.memory`,
  when ``timing.memory``).
* ``results/<profile>/timing/scaling.csv`` — ``projected_derivatives`` (order 2, order-3
  diagonal, full order 3) in gradient-equivalents on a tanh MLP (:func:`bench.models.mlp`, 64
  inputs, 10 classes), against S (partitions single, blocks, per module, per tensor) and against
  width, depth and batch size.
* ``results/<profile>/timing/environment.json`` — CPU/GPU model, torch, threads, commit.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench import layout
from bench.config import Config, load_pipeline_config
from bench.io import write_dir_atomic, write_json_atomic, write_rows_csv_atomic
from bench.models import mlp
from bench.provenance import provenance
from bench.studies import memory
from bench.studies.options import prepared_splits
from bench.studies.timer import interleaved, seconds
from bench.studies.workloads import derivatives_work, gradient_work

STEP_COLUMNS = [
    "problem", "optimizer", "seconds", "gradients", "vs_sgd", "plain_step_gradients",
    "recomputation_gradients_amortised", "peak_memory_mb", "rounds", "period",
]  # fmt: skip
SCALING_COLUMNS = [
    "sweep", "partition", "subsets", "width", "depth", "batch", "variant", "seconds", "gradients",
]  # fmt: skip
SCALING_INPUTS, SCALING_CLASSES = 64, 10


# ------------------------------------------------------------------------ optimizer steps
def _step_workloads(problem, splits, names, hyperparameters, period, batch_size, seed=0):
    """Callables running ``period`` steps of each optimizer (and one gradient), plus the
    per-step times of our optimizers split into recomputation and plain steps."""
    from bench.training.runs import input_tensor, problem_criterion, problem_hyperparameters
    from optimizers.registry import make

    x = input_tensor(splits.x_train[: 2 * batch_size], "cpu")  # token ids stay int64
    y = torch.as_tensor(splits.y_train[: 2 * batch_size], dtype=torch.long)
    batch, curvature = (x[:batch_size], y[:batch_size]), (x[batch_size:], y[batch_size:])
    criterion = problem_criterion(problem)  # a language model's loss is per token
    work: dict[str, Callable[[], Any]] = {
        "gradient": gradient_work(problem.make_model(seed), *batch, criterion)
    }
    split_times: dict[str, dict[str, list[float]]] = {}
    for name in names:
        chosen = problem_hyperparameters(problem, name, dict(hyperparameters.get(name, {})))
        optimizer = make(name, problem.make_model(seed), chosen, criterion=criterion)
        times = split_times.setdefault(name, {"recompute": [], "plain": []})

        def run(optimizer=optimizer, times=times) -> None:
            for _ in range(period):
                recompute = bool(getattr(optimizer.optimizer, "needs_curvature", False))
                extra = curvature if optimizer.needs_curvature_batch else None
                elapsed = seconds(functools.partial(optimizer.step, batch, extra))
                times["recompute" if recompute else "plain"].append(elapsed)

        work[name] = run
    return work, split_times


def time_steps(problem, splits, names, hyperparameters, *, period, rounds, batch_size):
    """One steps.csv row per optimizer of ``names`` (peak memory not yet filled in)."""
    work, split_times = _step_workloads(problem, splits, names, hyperparameters, period, batch_size)
    samples = interleaved(work, rounds)
    gradient = statistics.median(samples["gradient"])
    rows = []
    for name in names:
        step = statistics.median(samples[name]) / period
        plain = split_times[name]["plain"]
        recompute = split_times[name]["recompute"]
        plain_median = statistics.median(plain) if plain else float("nan")
        extra = (statistics.mean(recompute) - plain_median) / period if recompute else 0.0
        rows.append(
            {
                "problem": problem.name,
                "optimizer": name,
                "seconds": step,
                "gradients": step / gradient,
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


def _batch(config: Config, problem) -> int:
    """The training batch size of ``problem``'s runs (params problem_settings, train, the
    problem's own: :func:`bench.training.cells.run_settings`'s order)."""
    own = config.settings_of(problem.name).batch_size
    return own or config.train.batch_size or problem.batch_size


def step_workload(params: str, results: str, problem: str, optimizer: str) -> Callable[[], Any]:
    """``period`` steps of one optimizer on one problem, as the stage times them: the workload
    :func:`memory.peak_memory_mb_each` measures in a process of its own (the config is read
    again there)."""
    from bench.problems import get_problem

    config = load_pipeline_config(params)
    chosen = get_problem(problem)
    splits = prepared_splits(config, chosen.dataset, results)
    hyperparameters = {optimizer: dict(config.optimizers[optimizer].hyperparameters)}
    work, _ = _step_workloads(
        chosen, splits, [optimizer], hyperparameters, config.timing.period, _batch(config, chosen)
    )
    return work[optimizer]


def _probe_all(config: Config, params: str, results, probes: list[tuple[str, str]]):
    """The peak memory (MB) of ``period`` steps of each (problem, optimizer) (the workload
    :func:`step_workload` builds), in order, ``runtime.workers`` probes at a time
    (:func:`memory.peak_memory_mb_each`: each probe a fresh process of its own)."""
    calls = [
        ("bench.studies.timing:step_workload",
         {"params": str(params), "results": str(results), "problem": p, "optimizer": o})
        for p, o in probes
    ]  # fmt: skip
    return memory.peak_memory_mb_each(
        calls, threads=config.train.threads, workers=config.runtime.workers
    )


# ----------------------------------------------------------------------------- scaling
def _derivative_work(width, depth, batch, partition_name, full_max_subsets):
    from optimizers import functional_loss, partition

    torch.manual_seed(0)
    model = mlp(SCALING_INPUTS, (width,) * depth, SCALING_CLASSES, "tanh")
    x, y = torch.randn(batch, SCALING_INPUTS), torch.randint(0, SCALING_CLASSES, (batch,))
    if partition_name.startswith("blocks"):
        groups = partition.blocks(model, int(partition_name[len("blocks") :]))
    else:
        groups = partition.get_partition(partition_name)(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    loss_fn = functional_loss(model, F.cross_entropy, x, y)

    def derivatives(order: int, diagonal: bool = False) -> Callable[[], object]:
        return derivatives_work(loss_fn, params, groups, direction, order, diagonal=diagonal)

    work = {
        "gradient": gradient_work(model, x, y),
        "order2": derivatives(2),
        "order3_diagonal": derivatives(3, diagonal=True),
    }
    if len(groups) <= full_max_subsets:
        work["order3_full"] = derivatives(3)
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
    """The scaling.csv rows of ``timing.scaling``."""
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
            median = statistics.median(values)
            rows.append(
                {
                    "sweep": sweep, "partition": partition_name, "subsets": subsets,
                    "width": width, "depth": depth, "batch": batch, "variant": variant,
                    "seconds": median, "gradients": median / gradient,
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
        cwd=config.root,
    )
    record["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return record


def timing_stage(config: Config, results: Path = Path("results"), params: str = "params.yaml"):
    """Measure and write ``results/<profile>/timing/``; return that directory.

    ``params`` is the file ``config`` was read from (the memory probe's fresh processes read it).
    Every problem's prepared data is checked before anything is measured or written."""
    from bench.problems import get_problem

    settings = config.timing
    torch.set_num_threads(config.train.threads)
    names = list(settings.optimizers or config.optimizers)
    hyperparameters = {n: dict(config.optimizers[n].hyperparameters) for n in names}
    problems = [get_problem(name) for name in config.problems]
    splits = {p.name: prepared_splits(config, p.dataset, results) for p in problems}
    step_rows = []
    for problem in problems:
        rows = time_steps(
            problem, splits[problem.name], names, hyperparameters, period=settings.period,
            rounds=settings.rounds, batch_size=_batch(config, problem),
        )  # fmt: skip
        for row in rows:
            row["peak_memory_mb"] = None
        step_rows += rows
    scaling_rows, record = time_scaling(settings.scaling), environment(config)
    if settings.memory:  # after every timing, so that no probe runs beside a timed step
        probes = [(row["problem"], row["optimizer"]) for row in step_rows]
        peaks = _probe_all(config, params, results, probes)
        for row, peak in zip(step_rows, peaks, strict=True):
            row["peak_memory_mb"] = peak

    def write(folder: Path) -> None:  # the three files replace the old ones together
        write_rows_csv_atomic(folder / "steps.csv", step_rows, STEP_COLUMNS)
        write_rows_csv_atomic(folder / "scaling.csv", scaling_rows, SCALING_COLUMNS)
        write_json_atomic(folder / "environment.json", record)

    return write_dir_atomic(layout.timing_dir(config.profile, results), write)
