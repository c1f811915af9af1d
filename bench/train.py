"""Train stage: one cell (problem, optimizer, seed) → ``results/<profile>/runs/<p>/<o>/<seed>/``.

    python -m bench.train --problem digits_mlp --optimizer sgd --seed 0 [--params params.yaml]

Reads only its own tuned hyperparameters (``results/<profile>/tune/<problem>/<optimizer>.json``,
``best``), the cached data set and the params ``train``, ``optimizers.<optimizer>``, ``profile``
and ``device``. Writes ``history.csv``, ``metrics.json`` and, for the optimizers listed in
``train.probe.optimizers``, ``probe.csv`` (the records of
:class:`optimizers.probe.LearningRateProbe`), all at once: the files are written into a staging
directory beside the run directory, which is then renamed into place, so a killed cell leaves no
partial result. The resumable state lives outside the DVC outs in
``<train.checkpoint_dir>/<profile>/<problem>/<optimizer>/<seed>.pt``, written after every epoch
and removed after a successful finish; rerunning the cell resumes from it.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config import Config, ConfigError, load_config, resolve_device
from bench.io import read_json, write_json_atomic, write_rows_csv_atomic
from bench.loop import RunResult, RunSettings, build_run, run_training, setup_torch
from bench.provenance import params_hash, provenance

HISTORY_COLUMNS = [
    "epoch", "step", "train_loss", "test_loss", "test_accuracy", "wall_clock", "lr", "diverged",
]  # fmt: skip
PROBE_COLUMNS = ["step", "subset", "eta", "ratio", "g", "h", "status"]


def run_settings(config: Config, problem: Any, device: str, *, epochs: int | None = None,
                 probe: bool = False) -> RunSettings:  # fmt: skip
    """The :class:`RunSettings` of ``problem`` under ``config.train`` (params override the
    problem's own epochs / batch sizes when set)."""
    train = config.train
    return RunSettings(
        epochs=epochs or train.epochs or problem.epochs,
        batch_size=train.batch_size or problem.batch_size,
        curvature_batch_size=train.curvature_batch_size or problem.curvature_batch_size,
        eval_batch_size=train.eval_batch_size,
        divergence_factor=train.divergence_factor,
        plateau=train.plateau,
        probe_every=train.probe.every if probe else None,
        probe_batch_size=train.probe.batch_size,
        progress=train.progress,
        device=device,
    )


def file_digest(path: Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_cell(config: Config, problem: str, optimizer: str, seed: int | None = None) -> None:
    """ConfigError unless the cell is part of the grid of ``config``."""
    if problem not in config.problems:
        raise ConfigError(f"problem {problem!r} is not in params problems {list(config.problems)}")
    if optimizer not in config.optimizers:
        raise ConfigError(f"optimizer {optimizer!r} has no section in params optimizers")
    if seed is not None and seed not in config.seeds:
        raise ConfigError(f"seed {seed} is not in params seeds {list(config.seeds)}")


def read_tuned(config: Config, problem: str, optimizer: str, results: Path) -> dict[str, Any]:
    """The ``best`` hyperparameters of the tune cell (problem, optimizer)."""
    path = config.tune_path(problem, optimizer, results)
    if not path.is_file():
        raise FileNotFoundError(f"no tuned hyperparameters {path}: run `dvc repro tune` first")
    tuned = read_json(path)
    if (tuned.get("problem"), tuned.get("optimizer")) != (problem, optimizer):
        raise ValueError(f"{path} is for {tuned.get('problem')}/{tuned.get('optimizer')}")
    return dict(tuned["best"])


def history_columns(result: RunResult) -> list[str]:
    """history.csv: the fixed columns first, then every ``diag/<key>`` seen (empty = NaN where
    a row lacks it), in order of first appearance."""
    diagnostics: dict[str, None] = {}
    for row in result.history:
        diagnostics |= {key: None for key in row if key not in HISTORY_COLUMNS}
    return HISTORY_COLUMNS + list(diagnostics)


def run_metrics(result: RunResult, cell: dict[str, Any], hyperparameters: dict[str, Any],
                record: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """metrics.json: the last epoch's values (at divergence when diverged: never back-filled)."""
    last = result.history[-1]
    accuracies = [r["test_accuracy"] for r in result.history if math.isfinite(r["test_accuracy"])]
    return {
        "problem": cell["problem"],
        "optimizer": cell["optimizer"],
        "seed": cell["seed"],
        "epochs": int(last["epoch"]),
        "steps": int(result.steps),
        "final_train_loss": float(last["train_loss"]),
        "final_test_loss": float(last["test_loss"]),
        "final_test_accuracy": float(last["test_accuracy"]),
        "best_test_accuracy": max(accuracies) if accuracies else math.nan,
        "wall_clock": float(last["wall_clock"]),
        "diverged": result.diverged,
        "diverged_epoch": result.diverged_epoch,
        "final_lr": float(last["lr"]),
        "resumed_from_epoch": result.resumed_from,
        "hyperparameters": hyperparameters,
        "provenance": record,
    }


def write_run_dir(run_dir: Path, files: dict[str, Callable[[Path], Any]]) -> Path:
    """Write every file (name → writer(path)) into a staging directory, then rename it to
    ``run_dir`` (replacing it): the run directory is complete or absent."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.parent.glob(f".{run_dir.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.staging-", dir=run_dir.parent))
    try:
        for name, writer in files.items():
            writer(staging / name)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


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
    from bench.data import load_splits
    from bench.problems import get_problem

    check_cell(config, problem_name, optimizer_name, seed)
    results = Path(results)
    hyperparameters = read_tuned(config, problem_name, optimizer_name, results)
    problem = get_problem(problem_name)
    data_path = config.data_path(problem.dataset, results)
    splits = load_splits(data_path)
    device = resolve_device(config.device)
    probe = optimizer_name in config.train.probe.optimizers
    settings = run_settings(config, problem, device, probe=probe)
    cell = {"problem": problem_name, "optimizer": optimizer_name, "seed": seed}
    cell_params = {
        **cell,
        "profile": config.profile,
        "device": device,
        "train": config.raw.get("train"),
        f"optimizers.{optimizer_name}": config.raw["optimizers"][optimizer_name],
        "hyperparameters": hyperparameters,
        "data": file_digest(data_path),
    }
    inputs = build_run(
        problem, optimizer_name, hyperparameters, splits,
        seed=seed, batch_size=settings.batch_size, device=device,
    )  # fmt: skip
    checkpoint = config.checkpoint_path(problem_name, optimizer_name, seed)
    result = run_training(
        inputs.model,
        inputs.optimizer,
        inputs.batches,
        inputs.train_split,
        inputs.test_split,
        seed=seed,
        settings=settings,
        loss=inputs.loss,
        eval_name="test",
        checkpoint=checkpoint,
        fingerprint=params_hash(cell_params),
        on_epoch_end=on_epoch_end,
        description=f"{problem_name}/{optimizer_name}/{seed}",
    )
    record = provenance(seed=seed, device=device, threads=config.train.threads, params=cell_params)
    metrics = run_metrics(result, cell, hyperparameters, record)
    files: dict[str, Callable[[Path], Any]] = {
        "history.csv": lambda path: write_rows_csv_atomic(
            path, result.history, history_columns(result)
        ),
        "metrics.json": lambda path: write_json_atomic(path, metrics, allow_nan=True),
    }
    if probe:
        files["probe.csv"] = lambda path: write_rows_csv_atomic(path, result.probe, PROBE_COLUMNS)
    write_run_dir(config.run_dir(problem_name, optimizer_name, seed, results), files)
    checkpoint.unlink(missing_ok=True)
    return metrics


def cell_arguments(
    description: str, argv: list[str] | None, *, seed: bool
) -> tuple[argparse.Namespace, Config]:
    """The command line of a per-cell stage (train: with ``--seed``; tune: without), its
    validated config, the cell checked and torch set up (threads, determinism) from the config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--problem", required=True)
    parser.add_argument("--optimizer", required=True)
    if seed:
        parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    config = load_config(args.params)
    check_cell(config, args.problem, args.optimizer, args.seed if seed else None)
    setup_torch(config.train.threads, config.train.deterministic)
    return args, config


def main(argv: list[str] | None = None) -> int:
    args, config = cell_arguments(__doc__.splitlines()[0], argv, seed=True)
    metrics = train_cell(config, args.problem, args.optimizer, args.seed, results=args.results)
    state = f"diverged at epoch {metrics['diverged_epoch']}" if metrics["diverged"] else "done"
    print(
        f"train {args.problem}/{args.optimizer}/{args.seed}: {state}, "
        f"train loss {metrics['final_train_loss']:.4g}, "
        f"test accuracy {metrics['final_test_accuracy']:.4f}, {metrics['wall_clock']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
