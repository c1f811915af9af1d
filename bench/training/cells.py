"""A train cell (problem, optimizer, seed) → ``results/<profile>/runs/<p>/<o>/<seed>/``.

Reads only its own tuned hyperparameters (``results/<profile>/tune/<problem>/<optimizer>.json``,
``best``), the cached data set and the params ``train``, ``optimizers.<optimizer>``, ``profile``
and ``device``. Writes ``history.csv``, ``metrics.json`` and, for the optimizers listed in
``train.probe.optimizers``, ``probe.csv`` (:mod:`bench.schema`), all at once: the files are written
into a staging directory beside the run directory, which is then swapped into place
(:func:`bench.io.write_dir_atomic`), so a killed cell leaves no partial result. The resumable
state lives outside the DVC outs in ``<runtime.checkpoint_dir>/<profile>/<problem>/<optimizer>/
<seed>.pt``, written after every epoch and removed after a successful finish; rerunning the cell
resumes from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import schema
from bench.config import Config, resolve_device
from bench.errors import UsageError
from bench.io import read_json, write_dir_atomic, write_json_atomic, write_rows_csv_atomic
from bench.provenance import params_hash, provenance
from bench.sources import code_digest, optimizer_sources
from bench.training.loop import RunResult, run_training
from bench.training.runs import RunSettings, build_run, problem_hyperparameters


def run_settings(config: Config, problem: Any, device: str, *, epochs: int | None = None,
                 probe: bool = False) -> RunSettings:  # fmt: skip
    """The :class:`RunSettings` of ``problem`` under ``config``: its epochs and batch sizes from
    params ``problem_settings.<problem>`` when set there, else ``train`` when set there, else
    the problem's own."""
    train, own = config.train, config.settings_of(problem.name)
    return RunSettings(
        epochs=epochs or own.epochs or train.epochs or problem.epochs,
        batch_size=own.batch_size or train.batch_size or problem.batch_size,
        curvature_batch_size=(
            own.curvature_batch_size or train.curvature_batch_size or problem.curvature_batch_size
        ),
        eval_batch_size=train.eval_batch_size,
        divergence_factor=train.divergence_factor,
        plateau=train.plateau,
        probe_every=train.probe.every if probe else None,
        probe_batch_size=train.probe.batch_size,
        progress=config.runtime.progress,
        device=device,
    )


def file_digest(path: Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def problem_splits(config: Config, problem: Any, data_path: Path) -> Any:
    """The prepared splits of ``problem``'s data set (:func:`bench.data.load_splits`), its
    training split cut to its first ``problem_settings.<problem>.train_size`` examples when
    set (they are in shuffled order: :func:`bench.data.load_arrays`); validation and test
    splits whole. ConfigError when the training split has fewer examples than that."""
    from bench.config import ConfigError
    from bench.data import load_splits

    splits = load_splits(data_path)
    size = config.settings_of(problem.name).train_size
    if size is None:
        return splits
    available = len(splits.y_train)
    if size > available:
        raise ConfigError(
            f"problem_settings.{problem.name}.train_size: {size} exceeds the {available} "
            f"training examples of {splits.name}"
        )
    return dataclasses.replace(splits, x_train=splits.x_train[:size], y_train=splits.y_train[:size])


def check_cell(config: Config, problem: str, optimizer: str, seed: int | None = None) -> None:
    """UsageError unless the cell is part of the grid of ``config``."""
    if problem not in config.problems:
        raise UsageError(f"--problem {problem!r} is not in params problems {list(config.problems)}")
    if optimizer not in config.optimizers:
        raise UsageError(f"--optimizer {optimizer!r} has no section in params optimizers")
    if seed is not None and seed not in config.seeds:
        raise UsageError(f"--seed {seed} is not in params seeds {list(config.seeds)}")


def read_tuned(config: Config, problem: str, optimizer: str, results: Path) -> dict[str, Any]:
    """The ``best`` hyperparameters of the tune cell (problem, optimizer)."""
    path = config.tune_path(problem, optimizer, results)
    if not path.is_file():
        raise UsageError(f"no tuned hyperparameters {path}: run `dvc repro tune` first")
    tuned = read_json(path)
    if (tuned.get("problem"), tuned.get("optimizer")) != (problem, optimizer):
        raise UsageError(f"{path} is for {tuned.get('problem')}/{tuned.get('optimizer')}")
    return dict(tuned["best"])


def history_columns(result: RunResult, metric: str = schema.DEFAULT_METRIC) -> list[str]:
    """history.csv: the fixed columns first (with the problem's quality ``metric``), then every
    ``diag/<key>`` seen (empty = NaN where a row lacks it), in order of first appearance."""
    fixed = schema.history_columns(schema.TEST_SPLIT, metric)
    diagnostics: dict[str, None] = {}
    for row in result.history:
        diagnostics |= {key: None for key in row if key not in fixed}
    return fixed + list(diagnostics)


def run_metrics(
    result: RunResult,
    cell: dict[str, Any],
    hyperparameters: dict[str, Any],
    record: dict[str, Any],
    metric: str = schema.DEFAULT_METRIC,
) -> dict[str, Any]:
    """metrics.json (:func:`bench.schema.metrics_keys` of the problem's quality ``metric``): the
    last epoch's values (at divergence when diverged: never back-filled); the best value of the
    metric over the epochs in its direction (the highest accuracy, the lowest perplexity)."""
    last = result.history[-1]
    quality = schema.quality_metric(metric)
    column = quality.column(schema.TEST_SPLIT)
    metrics = {
        "problem": cell["problem"],
        "optimizer": cell["optimizer"],
        "seed": cell["seed"],
        "epochs": int(last[schema.EPOCH]),
        "steps": int(result.steps),
        "final_train_loss": float(last[schema.TRAIN_LOSS]),
        "final_test_loss": float(last[schema.loss_column(schema.TEST_SPLIT)]),
        quality.final_key: float(last[column]),
        quality.best_key: quality.best([r[column] for r in result.history]),
        "wall_clock": float(last[schema.WALL_CLOCK]),
        "diverged": result.diverged,
        "diverged_epoch": result.diverged_epoch,
        "final_lr": float(last[schema.LR]),
        "resumed_from_epoch": result.resumed_from,
        "hyperparameters": hyperparameters,
        "provenance": record,
    }
    assert tuple(metrics) == schema.metrics_keys(quality.name)
    return metrics


def cell_params(config: Config, cell: dict[str, Any], device: str, **extra: Any) -> dict[str, Any]:
    """The params a cell's result depends on: its fingerprint and ``params_hash``. Never the
    ``runtime`` section (it changes how a run is carried out, not what it computes)."""
    params = {
        **cell,
        "profile": config.profile,
        "device": device,
        **extra,
        "train": config.raw.get("train"),
        f"optimizers.{cell['optimizer']}": config.raw["optimizers"][cell["optimizer"]],
    }
    problem = cell["problem"]
    if problem in config.problem_settings:  # only then: other cells hash as they always did
        params[f"problem_settings.{problem}"] = dataclasses.asdict(config.settings_of(problem))
    return params


def cell_hyperparameters(
    config: Config, problem: Any, optimizer: str, hyperparameters: dict[str, Any]
) -> dict[str, Any]:
    """``hyperparameters`` with the partition of the problem when one applies
    (:func:`~bench.training.runs.problem_hyperparameters`): params
    ``problem_settings.<problem>.partition`` when set, else the problem's own."""
    partition = config.settings_of(problem.name).partition
    return problem_hyperparameters(problem, optimizer, hyperparameters, partition=partition)


def train_cell(
    config: Config,
    problem_name: str,
    optimizer_name: str,
    seed: int,
    *,
    results: str | Path = "results",
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one cell and write its run directory; return its metrics."""
    from bench.problems import get_problem

    check_cell(config, problem_name, optimizer_name, seed)
    results = Path(results)
    problem = get_problem(problem_name)
    tuned = read_tuned(config, problem_name, optimizer_name, results)
    hyperparameters = cell_hyperparameters(config, problem, optimizer_name, tuned)
    data_path = config.data_path(problem.dataset, results)
    splits = problem_splits(config, problem, data_path)
    device = resolve_device(config.device)
    probe = optimizer_name in config.train.probe.optimizers
    settings = run_settings(config, problem, device, probe=probe)
    cell = {"problem": problem_name, "optimizer": optimizer_name, "seed": seed}
    params = cell_params(config, cell, device)
    params |= {"hyperparameters": hyperparameters, "data": file_digest(data_path)}
    inputs = build_run(
        problem, optimizer_name, hyperparameters, splits,
        seed=seed, batch_size=settings.batch_size, device=device,
    )  # fmt: skip
    checkpoint = config.checkpoint_path(problem_name, optimizer_name, seed)
    # A checkpoint resumes only under the same params *and* code (the stage's, the plugins', a
    # registered optimizer's module): a run never continues with a step other than its own.
    code = code_digest(optimizer_sources(config, optimizer_name, "bench.train"), config.root)
    result = run_training(
        inputs.model, inputs.optimizer, inputs.batches, inputs.train_split, inputs.test_split,
        seed=seed, settings=settings, loss=inputs.loss, eval_name=schema.TEST_SPLIT,
        metric=inputs.metric, checkpoint=checkpoint,
        fingerprint=params_hash({**params, "code": code}), on_epoch_end=on_epoch_end,
        description=f"{problem_name}/{optimizer_name}/{seed}",
    )  # fmt: skip
    record = provenance(
        seed=seed, device=device, threads=config.train.threads, params=params, cwd=config.root
    )
    metrics = run_metrics(result, cell, hyperparameters, record, inputs.metric)

    def write(folder: Path) -> None:
        columns = history_columns(result, inputs.metric)
        write_rows_csv_atomic(folder / "history.csv", result.history, columns)
        write_json_atomic(folder / "metrics.json", metrics, allow_nan=True)
        if probe:
            write_rows_csv_atomic(folder / "probe.csv", result.probe, schema.PROBE_COLUMNS)

    write_dir_atomic(config.run_dir(problem_name, optimizer_name, seed, results), write)
    checkpoint.unlink(missing_ok=True)
    return metrics


def _train_in_worker(
    params: str, problem: str, optimizer: str, seed: int, results: str
) -> dict[str, Any]:
    """:func:`train_cell` in a worker process (:mod:`bench.training.workers`), which reads the
    params file itself (its plugins and registered optimizers included)."""
    from bench.config import load_pipeline_config

    config = load_pipeline_config(params)
    return train_cell(config, problem, optimizer, seed, results=results)


def train_seeds(
    config: Config,
    problem: str,
    optimizer: str,
    seeds: Sequence[int],
    *,
    params: str | Path,
    results: str | Path = "results",
) -> list[dict[str, Any]]:
    """:func:`train_cell` for each of ``seeds`` (the metrics, in that order), in up to
    ``runtime.workers`` processes; each seed's run directory is written as soon as it is done.

    Over the whole of params ``seeds`` (the train stage's cell), the seed directories of the
    cell that are no longer in params are removed afterwards: the cell's DVC output is then
    exactly its seeds' runs."""
    from bench.training.workers import run_pieces

    for seed in seeds:
        check_cell(config, problem, optimizer, seed)
    if min(config.runtime.workers, len(seeds)) <= 1:
        metrics = [train_cell(config, problem, optimizer, s, results=results) for s in seeds]
    else:
        pieces = [(str(params), problem, optimizer, s, str(results)) for s in seeds]
        metrics = run_pieces(
            _train_in_worker, pieces, workers=config.runtime.workers,
            threads=config.train.threads, deterministic=config.train.deterministic,
        )  # fmt: skip
    if set(seeds) == set(config.seeds):
        cell = config.run_dir(problem, optimizer, seeds[0], results).parent
        for folder in cell.iterdir():
            if folder.is_dir() and folder.name.isdigit() and int(folder.name) not in seeds:
                shutil.rmtree(folder)
    return metrics


def cell_arguments(
    description: str, argv: Sequence[str] | None, *, seed: bool
) -> tuple[argparse.Namespace, Config]:
    """The command line of a per-cell stage (train: with an optional ``--seed``, None when
    omitted: every seed of params; tune: without), its validated config, the cell checked and
    torch set up (threads, determinism) from the config."""
    from bench.cli import stage_config, stage_parser
    from bench.training.runs import setup_torch

    parser = stage_parser(description)
    parser.add_argument("--problem", required=True)
    parser.add_argument("--optimizer", required=True)
    if seed:
        parser.add_argument(
            "--seed", type=int, default=None, help="one seed of params seeds (default: all)"
        )
    args = parser.parse_args(argv)
    config = stage_config(args)
    check_cell(config, args.problem, args.optimizer, args.seed if seed else None)
    setup_torch(config.train.threads, config.train.deterministic)
    return args, config
