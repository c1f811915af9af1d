"""The aggregate: every run of a profile → one tidy table and the headline metrics.

Reads ``results/<profile>/runs/<problem>/<optimizer>/<seed>/{metrics.json, history.csv}`` (and
``probe.csv`` when present; :mod:`bench.reporting.runs`) of exactly the cells params defines
(problems × optimizers × seeds: a folder of no cell is not read, a cell without one is an error)
and writes, atomically:

- ``results/<profile>/summary.csv``: tidy, one row per (problem, optimizer, seed, metric) with
  the columns :data:`bench.schema.SUMMARY_COLUMNS` and the metrics of :data:`RUN_METRICS`;
- ``results/<profile>/summary.json``: ``{"@profile": profile, problem: {optimizer:
  {final_train_loss_mean, ...}, "comparisons": {ours: {baseline: {metric: {difference, ci_low,
  ci_high, pairs, dropped_pairs, excludes_zero}}}}}}`` (:func:`summary_json`), the numbers ``dvc
  metrics show`` lists (strict JSON: NaN and ±inf become ``null``); the comparisons are
  :func:`bench.reporting.comparisons.paired_comparisons`. With the timing stage's
  ``timing/steps.csv`` (:func:`timing_figures`), each cell also carries its step cost × SGD and
  its peak memory. The profile is recorded there (``"@profile"``, first; summary.json's own keys
  start with ``@``, which no problem name may), not in summary.csv: its ``value`` column is
  numeric and a constant column would change every row of every committed summary, while
  summary.json sits beside it in the same folder, written by the same stage (a reader of a
  summary.csv, at a path or a git revision, reads the profile from the summary.json beside it).

**The quality metric** is each problem's own (:data:`bench.schema.QUALITY_METRICS`), told by
its runs' records: an accuracy problem's rows are ``final_test_accuracy`` and
``best_test_accuracy``, a language model's ``final_test_perplexity`` and ``best_test_perplexity``
(lower is better), in the same place of :func:`run_metrics`; :func:`quality_metrics` reads it
back from the tidy table.

Rules (the report repeats them):

- **Diverged runs are kept.** Their per-seed values in ``summary.csv`` are the values at
  divergence, as the training stage wrote them (possibly NaN or ±inf), never back-filled. Every
  statistic (mean, std, 95% interval) is taken over the *non-diverged* seeds and always comes with
  the count of diverged seeds beside it.
- **Intervals.** Mean ± t_{0.975, n−1}·std/√n with the sample std (ddof = 1) of the n finite values
  (Student t, ``scipy.stats.t.ppf``); for n = 1 the std and the interval are undefined (NaN).
  Comparisons between optimizers are paired by seed
  (:data:`bench.reporting.comparisons.PAIRED_RULE`).
- **Training-loss target** (time to target): per problem, ``aggregate.train_loss_target.<problem>``
  from params when given; otherwise :data:`TARGET_RULE` (why: :data:`TARGET_WHY`). Stored per
  run as ``separating_train_loss_target``: what the report and the performance profile use. A
  run reaches a target at the first end-of-epoch training loss ≤ target (epoch 0 = before
  training); ``time_to_separating_target_epochs`` is that epoch and
  ``time_to_separating_target_seconds`` the cumulative optimisation wall-clock there, NaN when
  never reached. ``train_loss_target_from_params`` = 1 when it came from params.
- **The earlier target, kept.** ``train_loss_target`` with ``time_to_target_epochs`` /
  ``time_to_target_seconds`` follow :data:`WORST_TARGET_RULE` (the params value when given), as
  every earlier summary.csv did, so that those rows keep their values; it is reached by
  construction, so the report does not use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import layout, schema
from bench.errors import UsageError
from bench.io import write_csv_atomic, write_json_atomic
from bench.reporting.comparisons import (
    comparisons_json,
    paired_comparisons,
    student_t,
)
from bench.reporting.runs import Cell, Run, as_float, load_runs, read_csv_file

PROBLEM, OPTIMIZER, SEED, METRIC, VALUE = schema.SUMMARY_COLUMNS
CELL = [PROBLEM, OPTIMIZER]
RUN_KEY = [PROBLEM, OPTIMIZER, SEED]
ROW_KEY = [PROBLEM, OPTIMIZER, SEED, METRIC]
# An accuracy problem's names (the quality metric's two depend on the problem: run_metrics).
(FINAL_TRAIN_LOSS, FINAL_TEST_LOSS, FINAL_TEST_ACCURACY, BEST_TEST_ACCURACY, WALL_CLOCK, EPOCHS,
 STEPS, DIVERGED) = schema.METRICS_FROM_JSON  # fmt: skip
LOSS_DECREASED = "loss_decreased"  # 1 when the final training loss < the initial one
PROGRESS_METRICS = (LOSS_DECREASED,)
TIME_TO_TARGET_EPOCHS, TIME_TO_TARGET_SECONDS = "time_to_target_epochs", "time_to_target_seconds"
TIME_TO_TARGET_METRICS = (TIME_TO_TARGET_EPOCHS, TIME_TO_TARGET_SECONDS)
TRAIN_LOSS_TARGET, TARGET_FROM_PARAMS = "train_loss_target", "train_loss_target_from_params"
TARGET_METRICS = (TRAIN_LOSS_TARGET, TARGET_FROM_PARAMS)
SEPARATING_TARGET = "separating_train_loss_target"
TIME_TO_SEPARATING_EPOCHS = "time_to_separating_target_epochs"
TIME_TO_SEPARATING_SECONDS = "time_to_separating_target_seconds"
SEPARATING_METRICS = (TIME_TO_SEPARATING_EPOCHS, TIME_TO_SEPARATING_SECONDS)
DERIVED_METRICS = (
    PROGRESS_METRICS + TIME_TO_TARGET_METRICS + TARGET_METRICS + SEPARATING_METRICS
    + (SEPARATING_TARGET,)
)  # fmt: skip
NO_STATISTICS = (DIVERGED, *TARGET_METRICS, SEPARATING_TARGET)


def run_metrics(metric: str = schema.DEFAULT_METRIC) -> tuple[str, ...]:
    """The per-run metrics of summary.csv, in row order, for a problem of quality ``metric``."""
    return schema.metrics_from_json(metric) + DERIVED_METRICS


def statistic_metrics(metric: str = schema.DEFAULT_METRIC) -> tuple[str, ...]:
    """The metrics that get mean / std / interval over the non-diverged seeds."""
    return tuple(m for m in run_metrics(metric) if m not in NO_STATISTICS)


RUN_METRICS = run_metrics()  # an accuracy problem's
# Per-run metrics read from the last history row when the optimizer logs them (no statistics).
USABLE_SOLVES = schema.USABLE_SOLVES
OPTIONAL_HISTORY_METRICS = {USABLE_SOLVES: schema.diagnostic_column(schema.USABLE_SOLVES)}
STATISTIC_METRICS = statistic_metrics()  # an accuracy problem's
_TRAINED = (
    "over the optimizers with at least one non-diverged run that lowered the training loss "
    "below its initial value, of the mean final training loss of those runs"
)
TARGET_RULE = f"the median, {_TRAINED}"
TARGET_WHY = (
    "About half of the optimizers that train reach the median on average, so the target "
    "separates the fast from the slow ones and from those that do not get there at all; one "
    "optimizer far ahead or far behind does not move it. The earlier rule (the worst "
    "optimizer's mean) was reached by nearly every optimizer by construction; the best's mean "
    "would be reached by almost none. An optimizer that never moves the loss is left out: it "
    "would make the target trivial."
)
WORST_TARGET_RULE = f"the largest, {_TRAINED}"


def _mean_final_losses(runs: Sequence[Run], problem: str) -> list[float]:
    """Per optimizer that trains on ``problem``: the mean final loss of its usable runs."""
    finals: dict[str, list[float]] = {}
    for run in runs:
        final = as_float(run.metrics[FINAL_TRAIN_LOSS])
        usable = not run.diverged and math.isfinite(final) and loss_decreased(run.history)
        if run.problem == problem and usable:
            finals.setdefault(run.optimizer, []).append(final)
    return [float(np.mean(values)) for values in finals.values()]


def train_loss_targets(
    runs: Sequence[Run], fixed: Mapping[str, float] | None = None, *, rule: str = TARGET_RULE
) -> dict[str, tuple[float, bool]]:
    """Per problem: (training-loss target, came from params?) by ``rule``: :data:`TARGET_RULE`
    (the median) or :data:`WORST_TARGET_RULE` (the largest, the earlier rule).

    ``fixed``: params' ``aggregate.train_loss_target`` (validated by :mod:`bench.config`). NaN
    when no optimizer of the problem has a non-diverged run with a finite final loss.
    """
    fixed = dict(fixed or {})
    problems = sorted({run.problem for run in runs})
    unknown = sorted(set(fixed) - set(problems))
    if unknown:
        raise UsageError(f"aggregate.train_loss_target given for problems without runs: {unknown}")
    pick = {TARGET_RULE: np.median, WORST_TARGET_RULE: np.max}[rule]
    targets: dict[str, tuple[float, bool]] = {}
    for problem in problems:
        if problem in fixed:
            targets[problem] = (float(fixed[problem]), True)
            continue
        means = _mean_final_losses(runs, problem)
        targets[problem] = (float(pick(means)) if means else math.nan, False)
    return targets


def loss_decreased(history: pd.DataFrame) -> bool:
    """Whether the last end-of-epoch training loss is below the first (epoch 0, before training)."""
    loss = history[schema.TRAIN_LOSS].to_numpy(dtype=np.float64)
    return bool(loss.size >= 2 and np.isfinite(loss[-1]) and loss[-1] < loss[0])


def time_to_target(history: pd.DataFrame, target: float) -> tuple[float, float]:
    """(epoch, wall-clock seconds) of the first end-of-epoch training loss ≤ target, else NaNs."""
    loss = history[schema.TRAIN_LOSS].to_numpy(dtype=np.float64)
    reached = np.flatnonzero(np.isfinite(loss) & (loss <= target))
    if not math.isfinite(target) or reached.size == 0:
        return math.nan, math.nan
    first = int(reached[0])
    return (
        float(history[schema.EPOCH].iloc[first]),
        float(history[schema.WALL_CLOCK].iloc[first]),
    )


Targets = Mapping[str, tuple[float, bool]]  # problem → (target, from params?)


def summary_table(runs: Sequence[Run], targets: Targets, separating: Targets) -> pd.DataFrame:
    """Tidy table, one row per (problem, optimizer, seed, metric) for :data:`RUN_METRICS`;
    ``targets`` by :data:`WORST_TARGET_RULE`, ``separating`` by :data:`TARGET_RULE`."""
    rows: list[tuple[str, str, int, str, float]] = []
    for run in runs:
        target, from_params = targets[run.problem]
        metric = run.quality.name
        values = {key: as_float(run.metrics[key]) for key in schema.metrics_from_json(metric)}
        epochs, seconds = time_to_target(run.history, target)
        separating_target = separating[run.problem][0]
        separating_epochs, separating_seconds = time_to_target(run.history, separating_target)
        values |= {
            LOSS_DECREASED: float(loss_decreased(run.history)),
            TIME_TO_TARGET_EPOCHS: epochs,
            TIME_TO_TARGET_SECONDS: seconds,
            TRAIN_LOSS_TARGET: target,
            TARGET_FROM_PARAMS: float(from_params),
            TIME_TO_SEPARATING_EPOCHS: separating_epochs,
            TIME_TO_SEPARATING_SECONDS: separating_seconds,
            SEPARATING_TARGET: separating_target,
        }
        rows.extend(
            (run.problem, run.optimizer, run.seed, key, values[key]) for key in run_metrics(metric)
        )
        for key, column in OPTIONAL_HISTORY_METRICS.items():  # only for optimizers that log them
            if column in run.history.columns and len(run.history):
                value = as_float(run.history[column].iloc[-1])
                rows.append((run.problem, run.optimizer, run.seed, key, value))
    table = pd.DataFrame(rows, columns=list(schema.SUMMARY_COLUMNS))
    return table.astype({SEED: "int64", VALUE: "float64"})


def wide_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The tidy table as one row per run, one column per metric (checked: columns, duplicates)."""
    missing = [c for c in schema.SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        raise UsageError(f"summary table lacks the columns {missing}")
    duplicated = summary.duplicated(subset=ROW_KEY)
    if duplicated.any():
        first = summary.loc[duplicated, ROW_KEY].iloc[0].tolist()
        raise UsageError(f"summary table has duplicated rows, e.g. {first}")
    wide = summary.set_index(ROW_KEY)[VALUE].unstack(METRIC)
    if DIVERGED not in wide.columns:
        raise UsageError(f"summary table has no {DIVERGED!r} metric")
    return wide


def quality_metrics(summary: pd.DataFrame) -> dict[str, schema.QualityMetric]:
    """Per problem of the tidy table, its quality metric, told by the metric names of its rows
    (:func:`bench.schema.metric_of`); UsageError when a problem's rows name none or several."""
    found = {}
    for problem, names in summary.groupby(PROBLEM, sort=True)[METRIC]:
        try:
            found[str(problem)] = schema.metric_of(names)
        except ValueError as error:
            raise UsageError(f"summary table, problem {problem}: {error}") from None
    return found


def statistics(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95% Student-t interval over the non-diverged seeds of each cell and metric.

    Columns: problem, optimizer, metric, runs (all seeds), diverged_runs, n (finite values among
    the non-diverged seeds: for time to target, the runs that reached it), mean, std, ci_low,
    ci_high. std and the interval are NaN for n < 2 (undefined), the mean for n = 0.
    """
    wide = wide_table(summary)
    qualities = quality_metrics(summary)
    records = []
    for (problem, optimizer), cell in wide.groupby(level=CELL, sort=True):
        diverged = cell[DIVERGED].to_numpy(dtype=np.float64) > 0.5
        for metric in statistic_metrics(qualities[str(problem)].name):
            if metric not in cell.columns:
                continue
            records.append(
                {
                    PROBLEM: problem,
                    OPTIMIZER: optimizer,
                    METRIC: metric,
                    "runs": int(diverged.size),
                    "diverged_runs": int(diverged.sum()),
                    **student_t(cell[metric].to_numpy(dtype=np.float64)[~diverged]),
                }
            )
    return pd.DataFrame.from_records(records)


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


Timing = Mapping[tuple[str, str], Mapping[str, float]]  # (problem, optimizer) → its speed figures
REACHED = f"{TIME_TO_SEPARATING_EPOCHS}_reached"  # non-diverged runs that reached the target


def summary_json(
    table: pd.DataFrame,
    comparisons: Mapping[str, dict] | None = None,
    *,
    profile: str | None = None,
    timing: Timing | None = None,
) -> dict:
    """summary.json from :func:`statistics` output (non-finite → None):

    ``{"@profile": profile, problem: {optimizer: {final_train_loss_mean, final_train_loss_std,
    final_test_<metric>_mean, final_test_<metric>_std, diverged_runs, seeds,
    time_to_separating_target_epochs_mean, ..._std, time_to_separating_target_epochs_reached,
    [step_cost_vs_sgd, peak_memory_mb]}, "comparisons": ...}}``: ``<metric>`` the problem's
    quality metric; the time to target (epochs) over the non-diverged runs that reached it, and
    how many did; the two speed figures when ``timing`` (:func:`timing_figures`) is given (None
    for a cell it lacks); ``"comparisons"`` from
    :func:`~bench.reporting.comparisons.comparisons_json` (a problem without any gets none).
    The profile's key (:data:`bench.schema.SUMMARY_PROFILE`) comes first, when given.
    """
    nested: dict[str, Any] = {} if profile is None else {schema.SUMMARY_PROFILE: profile}
    for (problem, optimizer), cell in table.groupby(CELL, sort=True):
        by_metric = cell.set_index(METRIC)
        quality = schema.metric_of(by_metric.index).final_key
        entry: dict[str, float | int | None] = {}
        for metric in (FINAL_TRAIN_LOSS, quality):
            entry[f"{metric}_mean"] = _json_number(by_metric.loc[metric, "mean"])
            entry[f"{metric}_std"] = _json_number(by_metric.loc[metric, "std"])
        entry["diverged_runs"] = int(by_metric["diverged_runs"].iloc[0])
        entry["seeds"] = int(by_metric["runs"].iloc[0])
        to_target = by_metric.loc[TIME_TO_SEPARATING_EPOCHS]
        entry[f"{TIME_TO_SEPARATING_EPOCHS}_mean"] = _json_number(to_target["mean"])
        entry[f"{TIME_TO_SEPARATING_EPOCHS}_std"] = _json_number(to_target["std"])
        entry[REACHED] = int(to_target["n"])
        if timing is not None:
            speed = timing.get((str(problem), str(optimizer)), {})
            for key in (schema.STEP_COST_VS_SGD, schema.PEAK_MEMORY_MB):
                entry[key] = _json_number(speed.get(key, math.nan))
        nested.setdefault(str(problem), {})[str(optimizer)] = entry
    for problem, found in (comparisons or {}).items():
        nested[problem]["comparisons"] = found
    return nested


def timing_figures(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """The timing stage's ``steps.csv`` (:mod:`bench.studies.timing`) → per (problem,
    optimizer): ``step_cost_vs_sgd`` (its ``vs_sgd``: the step time over SGD's, the same
    process) and ``peak_memory_mb`` (NaN when not measured). UsageError naming the file when it
    is missing, cut short, lacks a column, repeats a cell or holds a non-number."""
    if not Path(path).is_file():
        raise UsageError(f"no timing steps file {path} (run the timing stage, or leave it out)")
    frame = read_csv_file(Path(path))
    needed = [PROBLEM, OPTIMIZER, schema.STEPS_VS_SGD, schema.STEPS_PEAK_MEMORY]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise UsageError(f"{path} lacks the columns {missing}")
    repeated = frame.duplicated(subset=CELL)
    if repeated.any():
        raise UsageError(f"{path} lists {frame.loc[repeated, CELL].iloc[0].tolist()} twice")
    figures: dict[tuple[str, str], dict[str, float]] = {}
    for values in frame.to_dict("records"):
        cell = (str(values[PROBLEM]), str(values[OPTIMIZER]))
        try:
            figures[cell] = {
                schema.STEP_COST_VS_SGD: float(values[schema.STEPS_VS_SGD]),
                schema.PEAK_MEMORY_MB: float(values[schema.STEPS_PEAK_MEMORY]),
            }
        except ValueError:
            raise UsageError(f"{path}: {'/'.join(cell)} has a value that is not a number") from None
    return figures


def aggregate(
    results: Path,
    profile: str,
    cells: Iterable[Cell],
    fixed_targets: Mapping[str, float] | None = None,
    timing: Path | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Load the runs of ``cells`` (params' problems × optimizers × seeds, :func:`params_cells`)
    of ``profile``, write summary.csv and summary.json; return both. ``timing``: the timing
    stage's steps.csv whose speed figures summary.json carries (None: none).

    Everything is computed (and every input checked) before either file is written.
    """
    cells = list(cells)
    reserved = sorted({p for p, _, _ in cells if str(p).startswith(schema.RESERVED_PREFIX)})
    if reserved:
        raise UsageError(
            f"problem names may not start with {schema.RESERVED_PREFIX!r} (summary.json's own "
            f"keys do): {reserved}"
        )
    runs = load_runs(results, profile, cells)
    speed = None if timing is None else timing_figures(timing)
    targets = train_loss_targets(runs, fixed_targets, rule=WORST_TARGET_RULE)
    table = summary_table(runs, targets, train_loss_targets(runs, fixed_targets))
    comparisons = comparisons_json(paired_comparisons(wide_table(table), quality_metrics(table)))
    headline = summary_json(statistics(table), comparisons, profile=profile, timing=speed)
    csv_path, json_path = layout.summary_paths(profile, results)
    write_csv_atomic(csv_path, table)
    write_json_atomic(json_path, headline)
    return table, headline


def problem_names(headline: Mapping[str, Any]) -> list[str]:
    """The problems of a summary.json (its keys but the reserved ones, e.g. the profile's)."""
    return [key for key in headline if not key.startswith(schema.RESERVED_PREFIX)]


def run_count(table: pd.DataFrame) -> int:
    """How many runs (problem, optimizer, seed) a tidy summary table covers."""
    return table.groupby(RUN_KEY).ngroups
