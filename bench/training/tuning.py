"""A tune cell (problem, optimizer) → ``results/<profile>/tune/<problem>/<optimizer>.json``.

The protocol (:data:`PROTOCOL`, filled in and stored in every output file, quoted by the README):
a grid (learning rates, and for some optimizers a second axis, e.g. K-FAC's damping), a short
budget, one seed, the validation split. The grid is ``optimizers.<name>.grid`` from params when
set, else the registry spec's ``grid`` without the axes that params fix in
``optimizers.<name>.hyperparameters`` (fixing ``lr`` there skips the learning-rate search).

A problem with its own partition (params ``problem_settings.<problem>.partition``, else
``bench.problems.Problem.partition``) gives it to the optimizers that take one unless params fix
or sweep it (:func:`bench.training.cells.cell_hyperparameters`); ``best`` then names it and the
protocol says so.

Output: ``{"problem", "optimizer", "grid": [{<swept hyperparameters incl. lr>, "valid_loss",
"valid_<metric>", "train_loss", "diverged"}, ...], "best": {hyperparameters incl. lr},
"at_edge": [swept hyperparameters whose choice is the first or last of its grid],
"all_diverged", "epochs", "protocol", "provenance"}``; ``<metric>`` is the problem's quality
metric (``valid_accuracy``, ``valid_perplexity``: :data:`bench.schema.QUALITY_METRICS`).
"""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path
from typing import Any

from bench import schema
from bench.config import Config, resolve_device
from bench.io import write_json_atomic
from bench.provenance import provenance
from bench.training.cells import (
    cell_hyperparameters,
    cell_params,
    check_cell,
    file_digest,
    problem_splits,
    run_settings,
)
from bench.training.loop import run_training
from bench.training.runs import build_run, takes_problem_partition
from bench.training.workers import run_pieces

PROTOCOL = (
    "Learning rate tuned per (problem, optimizer) on the validation split with one seed "
    "({seed}): for every point of the grid {grid}, the model is trained for {epochs} "
    "epoch(s) ({fraction:g} of the {train_epochs}-epoch budget, rounded up; same loop, batch "
    "size and plateau rule as the training runs) and its loss on the validation split is "
    "measured after the last epoch. The chosen point has the lowest final validation "
    "loss among the runs that did not diverge (non-finite loss, or a training loss more than "
    "{factor:g}x its previous epoch's value; ties: the first in grid order); if all diverge, "
    "the point with the smallest learning rate is kept and the file says so (all_diverged). "
    "The other hyperparameters are the registry defaults overridden by params "
    "optimizers.<name>.hyperparameters."
)
PARTITION_NOTE = (
    " The partition is the problem's own ({partition}): params fix none for this optimizer."
)
OWN_PARTITION_NOTE = (
    " The partition is the optimizer's own ({partition}), written out: the problem's "
    "({problem_partition}) does not apply to an entry defined by its partition."
)


def partition_note(optimizer: str, partition: str, problem_partition: str) -> str:
    """The protocol's sentence on a partition the tune cell wrote out (``problem_partition``:
    the problem's, from params ``problem_settings`` or the problem)."""
    if takes_problem_partition(optimizer):
        return PARTITION_NOTE.format(partition=partition)
    return OWN_PARTITION_NOTE.format(partition=partition, problem_partition=problem_partition)


def search_grid(config: Config, optimizer: str) -> dict[str, list[Any]]:
    """The axes of the tune cell: params ``grid``, else the registry's minus the fixed axes."""
    from optimizers.registry import get_spec

    section = config.optimizers[optimizer]
    if section.grid is not None:
        return {axis: list(values) for axis, values in section.grid.items()}
    fixed = section.hyperparameters
    return {a: list(v) for a, v in get_spec(optimizer).grid.items() if a not in fixed}


def grid_points(config: Config, optimizer: str, problem: Any = None) -> list[dict[str, Any]]:
    """Every hyperparameter set the cell tries: fixed ones + one point of the grid, with ``lr``
    always present (the registry default when neither fixed nor swept), and ``problem``'s
    partition when it has one that applies (:func:`~bench.training.cells.cell_hyperparameters`:
    never over a partition fixed or swept by params)."""
    from optimizers.registry import get_spec

    fixed = dict(config.optimizers[optimizer].hyperparameters)
    fixed.setdefault("lr", get_spec(optimizer).defaults["lr"])
    axes = search_grid(config, optimizer)
    points = [{**fixed, **dict(zip(axes, v, strict=True))} for v in product(*axes.values())]
    if problem is None:
        return points
    return [cell_hyperparameters(config, problem, optimizer, point) for point in points]


def tune_epochs(config: Config, train_epochs: int) -> int:
    """max(1, ⌈epochs_fraction × training epochs⌉)."""
    return max(1, math.ceil(config.tune.epochs_fraction * train_epochs - 1e-9))


def at_edge(axes: dict[str, list[Any]], best: dict[str, Any]) -> list[str]:
    """The swept hyperparameters whose chosen value is the smallest or the largest of its grid
    (a grid that does not bracket the optimum: widen it); axes of one value are not swept."""
    edges = []
    for axis, values in axes.items():
        ordered = sorted(values)
        if len(ordered) > 1 and best[axis] in (ordered[0], ordered[-1]):
            edges.append(axis)
    return edges


def choose(rows: list[dict[str, Any]]) -> tuple[int, bool]:
    """(index of the chosen row, whether every run diverged): the lowest final valid loss among
    the finite, non-diverged runs (ties: the first); the smallest lr when none qualifies."""
    usable = [i for i, r in enumerate(rows) if not r["diverged"] and math.isfinite(r["valid_loss"])]
    if not usable:
        return min(range(len(rows)), key=lambda i: rows[i]["lr"]), True
    return min(usable, key=lambda i: rows[i]["valid_loss"]), False


def grid_row(problem: Any, optimizer_name: str, point: dict[str, Any], axes: dict[str, list[Any]],
             splits: Any, settings: Any, *, seed: int, device: str) -> dict[str, Any]:  # fmt: skip
    """Train one point of the grid on the training split; its row of the tune file (values
    after the last epoch, the validation split's loss and the problem's quality metric)."""
    inputs = build_run(
        problem, optimizer_name, point, splits,
        seed=seed, batch_size=settings.batch_size, device=device,
    )  # fmt: skip
    result = run_training(
        inputs.model, inputs.optimizer, inputs.batches, inputs.train_split, inputs.valid_split,
        seed=seed, settings=settings, loss=inputs.loss, eval_name=schema.VALID_SPLIT,
        metric=inputs.metric, description=f"tune {problem.name}/{optimizer_name} {point}",
    )  # fmt: skip
    last = result.history[-1]
    quality = schema.metric_column(inputs.metric, schema.VALID_SPLIT)  # valid_<metric>
    return {
        "lr": float(point["lr"]),
        **{axis: point[axis] for axis in axes if axis != "lr"},
        "valid_loss": float(last[schema.loss_column(schema.VALID_SPLIT)]),
        quality: float(last[quality]),
        "train_loss": float(last[schema.TRAIN_LOSS]),
        "diverged": result.diverged,
    }


def _grid_inputs(config: Config, problem_name: str, results: Path) -> tuple[Any, ...]:
    """(problem, its splits, the data file, the device, the training and the tuning epochs, the
    tuning run settings) of a tune cell."""
    from bench.problems import get_problem

    problem = get_problem(problem_name)
    data_path = config.data_path(problem.dataset, results)
    splits = problem_splits(config, problem, data_path)
    device = resolve_device(config.device)
    train_epochs = run_settings(config, problem, device).epochs
    settings = run_settings(config, problem, device, epochs=tune_epochs(config, train_epochs))
    return problem, splits, data_path, device, train_epochs, settings


def _grid_row_in_worker(
    params: str, problem_name: str, optimizer_name: str, index: int, results: str
) -> dict[str, Any]:
    """Point ``index`` of a tune cell's grid, in a worker process
    (:mod:`bench.training.workers`), which reads the params file itself."""
    from bench.config import load_pipeline_config

    config = load_pipeline_config(params)
    problem, splits, _, device, _, settings = _grid_inputs(config, problem_name, Path(results))
    point = grid_points(config, optimizer_name, problem)[index]
    axes = search_grid(config, optimizer_name)
    return grid_row(
        problem, optimizer_name, point, axes, splits, settings, seed=config.tune.seed, device=device
    )


def tune_cell(
    config: Config,
    problem_name: str,
    optimizer_name: str,
    *,
    results: str | Path = "results",
    params: str | Path | None = None,
) -> dict[str, Any]:
    """Run the grid of one (problem, optimizer) cell, write its JSON and return it.

    With ``runtime.workers`` > 1 the grid points run in that many processes, which read the
    params file ``params`` (without it, this process runs them all); the rows are the same
    (each point is a function of the tuning seed and its hyperparameters alone)."""
    check_cell(config, problem_name, optimizer_name)
    results = Path(results)
    problem, splits, data_path, device, train_epochs, settings = _grid_inputs(
        config, problem_name, results
    )
    axes = search_grid(config, optimizer_name)
    points = grid_points(config, optimizer_name, problem)
    seed = config.tune.seed
    if params is None or min(config.runtime.workers, len(points)) <= 1:
        rows = [
            grid_row(problem, optimizer_name, p, axes, splits, settings, seed=seed, device=device)
            for p in points
        ]
    else:
        pieces = [
            (str(params), problem_name, optimizer_name, i, str(results)) for i in range(len(points))
        ]
        rows = run_pieces(
            _grid_row_in_worker, pieces, workers=config.runtime.workers,
            threads=config.train.threads, deterministic=config.train.deterministic,
        )  # fmt: skip
    chosen, all_diverged = choose(rows)
    protocol = PROTOCOL.format(
        seed=seed,
        grid=axes or {"lr": [points[0]["lr"]]},
        epochs=settings.epochs,
        fraction=config.tune.epochs_fraction,
        train_epochs=train_epochs,
        factor=config.train.divergence_factor,
    )
    if points != grid_points(config, optimizer_name):  # a partition was written out
        own = config.settings_of(problem.name).partition or problem.partition
        protocol += partition_note(optimizer_name, points[0]["partition"], own)
    cell = {"problem": problem_name, "optimizer": optimizer_name}
    params = cell_params(config, cell, device, tune=config.raw.get("tune"))
    params["data"] = file_digest(data_path)
    output = {
        "problem": problem_name,
        "optimizer": optimizer_name,
        "grid": rows,
        "best": points[chosen],
        "at_edge": at_edge(axes, points[chosen]),
        "all_diverged": all_diverged,
        "epochs": settings.epochs,
        "protocol": protocol,
        "provenance": provenance(
            seed=seed, device=device, threads=config.train.threads, params=params, cwd=config.root
        ),
    }
    write_json_atomic(
        config.tune_path(problem_name, optimizer_name, results), output, allow_nan=True
    )
    return output
