"""Aggregate stage: every run of a profile → one tidy table and the headline metrics.

Reads ``results/<profile>/runs/<problem>/<optimizer>/<seed>/{metrics.json, history.csv}`` (and
``probe.csv`` when present) and writes, atomically:

- ``results/<profile>/summary.csv``: tidy, one row per (problem, optimizer, seed, metric) with
  columns ``problem, optimizer, seed, metric, value`` and the metrics of :data:`RUN_METRICS`;
- ``results/<profile>/summary.json``: ``{problem: {optimizer: {final_train_loss_mean, ...}}}``,
  the numbers ``dvc metrics show`` lists (strict JSON: NaN and ±inf become ``null``).

Rules (the report repeats them):

- **Diverged runs are kept.** Their per-seed values in ``summary.csv`` are the values at
  divergence, as the training stage wrote them (possibly NaN or ±inf), never back-filled. Every
  statistic (mean, std, 95% interval) is taken over the *non-diverged* seeds and always comes with
  the count of diverged seeds beside it.
- **Intervals.** Mean ± t_{0.975, n−1}·std/√n with the sample std (ddof = 1) of the n finite values
  (Student t, ``scipy.stats.t.ppf``); for n = 1 the std and the interval are undefined (NaN).
- **Training-loss target** (time to target): per problem, ``aggregate.train_loss_target.<problem>``
  from params when given; otherwise :data:`TARGET_RULE`. A run reaches the target at the first
  end-of-epoch training loss ≤ target (epoch 0 = before training); ``time_to_target_epochs`` is
  that epoch and ``time_to_target_seconds`` the cumulative optimisation wall-clock there, NaN when
  never reached. The target itself is stored per run as ``train_loss_target`` (and
  ``train_loss_target_from_params`` = 1 when it came from params).

    python -m bench.aggregate --profile default --results results --params params.yaml
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats as scipy_stats

from bench.io import write_csv_atomic, write_json_atomic

SUMMARY_COLUMNS = ["problem", "optimizer", "seed", "metric", "value"]
HISTORY_COLUMNS = ["epoch", "step", "train_loss", "test_loss", "test_accuracy", "wall_clock", "lr"]
METRICS_FROM_JSON = (
    "final_train_loss",
    "final_test_loss",
    "final_test_accuracy",
    "best_test_accuracy",
    "wall_clock",
    "epochs",
    "steps",
    "diverged",
)
PROGRESS_METRICS = ("loss_decreased",)  # 1 when the final training loss < the initial one
# Per-run metrics read from the last history row when the optimizer logs them (no statistics).
OPTIONAL_HISTORY_METRICS = {"usable_solves": "diag/usable_solves"}
TIME_TO_TARGET_METRICS = ("time_to_target_epochs", "time_to_target_seconds")
TARGET_METRICS = ("train_loss_target", "train_loss_target_from_params")
RUN_METRICS = METRICS_FROM_JSON + PROGRESS_METRICS + TIME_TO_TARGET_METRICS + TARGET_METRICS
# Metrics that get mean / std / interval over the non-diverged seeds.
STATISTIC_METRICS = tuple(m for m in RUN_METRICS if m not in ("diverged", *TARGET_METRICS))
CONFIDENCE = 0.95
TARGET_RULE = (
    "the largest, over optimizers with at least one non-diverged run that lowered the training "
    "loss below its initial value, of the mean final training loss of those runs (the loss the "
    "worst optimizer that trains at all reaches on average; an optimizer that never moves the "
    "loss would make every target trivial)"
)


@dataclass(frozen=True)
class Run:
    """One training run: its metrics.json, history.csv and, when written, probe.csv."""

    problem: str
    optimizer: str
    seed: int
    path: Path
    metrics: dict[str, Any] = field(repr=False)
    history: pd.DataFrame = field(repr=False)
    probe: pd.DataFrame | None = field(repr=False, default=None)

    @property
    def diverged(self) -> bool:
        return bool(self.metrics["diverged"])


def _check_accuracy(values: Any, where: str) -> None:
    array = np.asarray(values, dtype=np.float64)
    bad = array[np.isfinite(array) & ((array < 0.0) | (array > 1.0))]
    if bad.size:
        raise ValueError(f"{where}: test accuracy {bad[0]!r} is not a fraction in [0, 1]")


def load_run(path: Path) -> Run:
    """Read one ``runs/<problem>/<optimizer>/<seed>`` directory, checked against the contract."""
    path = Path(path)
    metrics_path, history_path = path / "metrics.json", path / "history.csv"
    for required in (metrics_path, history_path):
        if not required.is_file():
            raise FileNotFoundError(f"run {path} has no {required.name}")
    metrics = json.loads(metrics_path.read_text())
    missing = [
        key for key in ("problem", "optimizer", "seed", *METRICS_FROM_JSON) if key not in metrics
    ]
    if missing:
        raise ValueError(f"{metrics_path} lacks the keys {missing}")
    try:
        seed = int(path.name)
    except ValueError:
        raise ValueError(f"run directory {path}: seed {path.name!r} is not an integer") from None
    expected = {"problem": path.parent.parent.name, "optimizer": path.parent.name, "seed": seed}
    for key, value in expected.items():
        if metrics[key] != value:
            raise ValueError(
                f"{metrics_path}: {key} = {metrics[key]!r} but the path says {value!r}"
            )
    for key in ("final_test_accuracy", "best_test_accuracy"):
        _check_accuracy(_as_float(metrics[key]), f"{metrics_path} {key}")
    history = pd.read_csv(history_path)
    missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
    if missing:
        raise ValueError(f"{history_path} lacks the columns {missing}")
    _check_accuracy(history["test_accuracy"], str(history_path))
    probe_path = path / "probe.csv"
    probe = pd.read_csv(probe_path) if probe_path.is_file() else None
    return Run(expected["problem"], expected["optimizer"], seed, path, metrics, history, probe)


def load_runs(results: Path, profile: str) -> list[Run]:
    """Every run under ``results/<profile>/runs``, sorted by (problem, optimizer, seed)."""
    runs_dir = Path(results) / profile / "runs"
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"no runs directory {runs_dir} (has the train stage run?)")
    paths = sorted(p.parent for p in runs_dir.glob("*/*/*/metrics.json"))
    if not paths:
        raise ValueError(f"no run (…/<problem>/<optimizer>/<seed>/metrics.json) under {runs_dir}")
    runs = [load_run(path) for path in paths]
    return sorted(runs, key=lambda r: (r.problem, r.optimizer, r.seed))


def _as_float(value: Any) -> float:
    """JSON value → float; ``None`` (NaN written as null) → NaN, booleans → 0/1."""
    return math.nan if value is None else float(value)


def train_loss_targets(
    runs: list[Run], fixed: Mapping[str, float] | None = None
) -> dict[str, tuple[float, bool]]:
    """Per problem: (training-loss target, came from params?). Rule: see :data:`TARGET_RULE`.

    NaN when no optimizer of the problem has a non-diverged run with a finite final loss.
    """
    fixed = dict(fixed or {})
    problems = sorted({run.problem for run in runs})
    unknown = sorted(set(fixed) - set(problems))
    if unknown:
        raise ValueError(f"train_loss_target given for problems without runs: {unknown}")
    targets: dict[str, tuple[float, bool]] = {}
    for problem in problems:
        if problem in fixed:
            value = float(fixed[problem])
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"train_loss_target for {problem} must be > 0, got {value!r}")
            targets[problem] = (value, True)
            continue
        finals: dict[str, list[float]] = {}
        for run in runs:
            final = _as_float(run.metrics["final_train_loss"])
            usable = not run.diverged and math.isfinite(final) and loss_decreased(run.history)
            if run.problem == problem and usable:
                finals.setdefault(run.optimizer, []).append(final)
        means = [float(np.mean(values)) for values in finals.values()]
        targets[problem] = (max(means) if means else math.nan, False)
    return targets


def loss_decreased(history: pd.DataFrame) -> bool:
    """Whether the last end-of-epoch training loss is below the first (epoch 0, before training)."""
    loss = history["train_loss"].to_numpy(dtype=np.float64)
    return bool(loss.size >= 2 and np.isfinite(loss[-1]) and loss[-1] < loss[0])


def time_to_target(history: pd.DataFrame, target: float) -> tuple[float, float]:
    """(epoch, wall-clock seconds) of the first end-of-epoch training loss ≤ target, else NaNs."""
    loss = history["train_loss"].to_numpy(dtype=np.float64)
    reached = np.flatnonzero(np.isfinite(loss) & (loss <= target))
    if not math.isfinite(target) or reached.size == 0:
        return math.nan, math.nan
    first = int(reached[0])
    return float(history["epoch"].iloc[first]), float(history["wall_clock"].iloc[first])


def summary_table(runs: list[Run], targets: Mapping[str, tuple[float, bool]]) -> pd.DataFrame:
    """Tidy table, one row per (problem, optimizer, seed, metric) for :data:`RUN_METRICS`."""
    rows: list[tuple[str, str, int, str, float]] = []
    for run in runs:
        target, from_params = targets[run.problem]
        values = {key: _as_float(run.metrics[key]) for key in METRICS_FROM_JSON}
        epochs, seconds = time_to_target(run.history, target)
        values |= {
            "loss_decreased": float(loss_decreased(run.history)),
            "time_to_target_epochs": epochs,
            "time_to_target_seconds": seconds,
            "train_loss_target": target,
            "train_loss_target_from_params": float(from_params),
        }
        rows.extend((run.problem, run.optimizer, run.seed, key, values[key]) for key in RUN_METRICS)
        for key, column in OPTIONAL_HISTORY_METRICS.items():  # only for optimizers that log them
            if column in run.history.columns and len(run.history):
                value = _as_float(run.history[column].iloc[-1])
                rows.append((run.problem, run.optimizer, run.seed, key, value))
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return table.astype({"seed": "int64", "value": "float64"})


def statistics(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95% Student-t interval over the non-diverged seeds of each cell and metric.

    Columns: problem, optimizer, metric, runs (all seeds), diverged_runs, n (finite values among
    the non-diverged seeds: for time to target, the runs that reached it), mean, std, ci_low,
    ci_high. std and the interval are NaN for n < 2 (undefined), the mean for n = 0.
    """
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        raise ValueError(f"summary table lacks the columns {missing}")
    keys = ["problem", "optimizer", "seed", "metric"]
    duplicated = summary.duplicated(subset=keys)
    if duplicated.any():
        first = summary.loc[duplicated, keys].iloc[0].tolist()
        raise ValueError(f"summary table has duplicated rows, e.g. {first}")
    wide = summary.set_index(keys)["value"].unstack("metric")
    if "diverged" not in wide.columns:
        raise ValueError("summary table has no 'diverged' metric")
    records = []
    for (problem, optimizer), cell in wide.groupby(level=["problem", "optimizer"], sort=True):
        diverged = cell["diverged"].to_numpy(dtype=np.float64) > 0.5
        for metric in STATISTIC_METRICS:
            if metric not in cell.columns:
                continue
            values = cell[metric].to_numpy(dtype=np.float64)[~diverged]
            values = values[np.isfinite(values)]
            n = int(values.size)
            mean = float(values.mean()) if n else math.nan
            std = float(values.std(ddof=1)) if n > 1 else math.nan
            half = (
                float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
                if n > 1
                else math.nan
            )
            records.append(
                {
                    "problem": problem,
                    "optimizer": optimizer,
                    "metric": metric,
                    "runs": int(diverged.size),
                    "diverged_runs": int(diverged.sum()),
                    "n": n,
                    "mean": mean,
                    "std": std,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                }
            )
    return pd.DataFrame.from_records(records)


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def summary_json(table: pd.DataFrame) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """``{problem: {optimizer: {final_train_loss_mean, final_train_loss_std,
    final_test_accuracy_mean, final_test_accuracy_std, diverged_runs, seeds}}}`` from
    :func:`statistics` output (non-finite → None)."""
    nested: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for (problem, optimizer), cell in table.groupby(["problem", "optimizer"], sort=True):
        by_metric = cell.set_index("metric")
        entry: dict[str, float | int | None] = {}
        for metric in ("final_train_loss", "final_test_accuracy"):
            entry[f"{metric}_mean"] = _json_number(by_metric.loc[metric, "mean"])
            entry[f"{metric}_std"] = _json_number(by_metric.loc[metric, "std"])
        entry["diverged_runs"] = int(by_metric["diverged_runs"].iloc[0])
        entry["seeds"] = int(by_metric["runs"].iloc[0])
        nested.setdefault(str(problem), {})[str(optimizer)] = entry
    return nested


def fixed_targets_from_params(params_path: Path | None) -> dict[str, float]:
    """``aggregate.train_loss_target`` ({problem: loss}) from params.yaml; {} when absent."""
    if params_path is None:
        return {}
    params_path = Path(params_path)
    if not params_path.is_file():
        raise FileNotFoundError(f"params file {params_path} does not exist")
    params = yaml.safe_load(params_path.read_text()) or {}
    section = params.get("aggregate") or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{params_path}: 'aggregate' must be a mapping, got {section!r}")
    unknown = sorted(set(section) - {"train_loss_target"})
    if unknown:
        raise ValueError(f"{params_path}: unknown keys in 'aggregate': {unknown}")
    targets = section.get("train_loss_target") or {}
    if not isinstance(targets, Mapping):
        raise ValueError(f"{params_path}: aggregate.train_loss_target must map problem → loss")
    return {str(key): float(value) for key, value in targets.items()}


def aggregate(
    results: Path, profile: str, fixed_targets: Mapping[str, float] | None = None
) -> tuple[pd.DataFrame, dict]:
    """Load the runs of ``profile``, write summary.csv and summary.json; return both."""
    runs = load_runs(results, profile)
    table = summary_table(runs, train_loss_targets(runs, fixed_targets))
    headline = summary_json(statistics(table))
    out = Path(results) / profile
    write_csv_atomic(out / "summary.csv", table)
    write_json_atomic(out / "summary.json", headline)
    return table, headline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="profile name, e.g. default")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (targets)")
    args = parser.parse_args(argv)
    table, headline = aggregate(args.results, args.profile, fixed_targets_from_params(args.params))
    runs = table.groupby(["problem", "optimizer", "seed"]).ngroups
    print(f"aggregate: {runs} runs, {len(headline)} problems → {args.results / args.profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
