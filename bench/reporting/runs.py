"""The run record read back: one :class:`Run` per ``runs/<problem>/<optimizer>/<seed>/`` folder.

A run folder holds ``metrics.json``, ``history.csv`` and, for the probed optimizers,
``probe.csv``, with the keys and columns of :mod:`bench.schema`. :func:`load_run` checks a folder
against that contract (required keys and columns, the cell named by the path, the quality
metric's values in its range: accuracies as fractions, perplexities ≥ 1; CSV files not cut
mid-row, metrics.json complete); a folder that breaks it is a :class:`~bench.errors.UsageError`
naming the file. A run names its problem's quality metric by its keys
(:func:`bench.schema.metric_of`); every run of a problem must name the same.

:func:`load_runs` reads exactly the cells params.yaml defines (``problems × optimizers × seeds``,
:func:`params_cells`): a folder under ``runs/`` that is no cell of params (a seed or an optimizer
section since removed) is not read, and a cell without its folder is a UsageError naming it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import layout, schema
from bench.config import Config
from bench.errors import UsageError
from bench.schema import OPTIMIZER, PROBLEM, PROVENANCE, SEED

HISTORY_COLUMNS = schema.history_columns(schema.TEST_SPLIT)  # an accuracy problem's run writes
TEST_LOSS = schema.loss_column(schema.TEST_SPLIT)
TEST_ACCURACY = schema.accuracy_column(schema.TEST_SPLIT)
METRICS_FILE, HISTORY_FILE, PROBE_FILE = "metrics.json", "history.csv", "probe.csv"
Cell = tuple[str, str, int]  # (problem, optimizer, seed)


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
        return bool(self.metrics[schema.DIVERGED])

    @property
    def quality(self) -> schema.QualityMetric:
        """The problem's quality metric, as the run's metrics.json names it."""
        return schema.metric_of(self.metrics)

    @property
    def quality_column(self) -> str:
        """The history column of the quality metric on the test split (``test_<metric>``)."""
        return self.quality.column(schema.TEST_SPLIT)

    @property
    def provenance(self) -> dict[str, Any]:
        """The run's provenance record ({} when metrics.json has none)."""
        return self.metrics.get(PROVENANCE) or {}


def as_float(value: Any) -> float:
    """JSON value → float; ``None`` (NaN written as null) → NaN, booleans → 0/1."""
    return math.nan if value is None else float(value)


def _check_range(quality: schema.QualityMetric, values: Any, where: str) -> None:
    """UsageError naming ``where`` when a finite value lies outside the metric's range."""
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    bad = [value for value in array.tolist() if quality.outside(value)]
    if bad:
        raise UsageError(f"{where}: test {quality.name} {bad[0]!r} is not {quality.range_text}")


def _read_metrics(path: Path) -> dict[str, Any]:
    """metrics.json of the run folder ``path``, checked: keys present, the cell the path names."""
    metrics_path = path / METRICS_FILE
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{metrics_path} is not complete JSON ({error}): rerun its cell") from None
    try:
        quality = schema.metric_of(metrics)
    except ValueError as error:
        raise UsageError(f"{metrics_path}: {error}") from None
    required = (PROBLEM, OPTIMIZER, SEED, *schema.metrics_from_json(quality.name))
    missing = [key for key in required if key not in metrics]
    if missing:
        raise UsageError(f"{metrics_path} lacks the keys {missing}")
    try:
        seed = int(path.name)
    except ValueError:
        raise UsageError(f"run directory {path}: seed {path.name!r} is not an integer") from None
    expected = {PROBLEM: path.parent.parent.name, OPTIMIZER: path.parent.name, SEED: seed}
    for key, value in expected.items():
        if metrics[key] != value:
            raise UsageError(
                f"{metrics_path}: {key} = {metrics[key]!r} but the path says {value!r}"
            )
    for key in (quality.final_key, quality.best_key):
        _check_range(quality, as_float(metrics[key]), f"{metrics_path} {key}")
    return metrics


def read_csv_file(path: Path) -> pd.DataFrame:
    """A CSV file of a run, refused (UsageError naming it) when it is cut short: empty, not
    ending with a newline, or a last line with fewer fields than the header (a writer killed
    mid-row; pandas would fill the missing fields with NaN and a summary would use them)."""
    text = path.read_text()
    lines = text.rstrip("\r\n").splitlines()
    if not lines:
        raise UsageError(f"{path} is empty: rerun its cell")
    if not text.endswith("\n"):
        raise UsageError(f"{path} does not end with a newline (cut mid-row): rerun its cell")
    header, last = (next(csv.reader([line]), []) for line in (lines[0], lines[-1]))
    if len(last) < len(header):
        raise UsageError(
            f"{path}: the last line has {len(last)} fields, the header {len(header)} "
            "(cut mid-row): rerun its cell"
        )
    return pd.read_csv(io.StringIO(text))


def load_run(path: Path) -> Run:
    """Read one ``runs/<problem>/<optimizer>/<seed>`` directory, checked against the contract."""
    path = Path(path)
    for required in (path / METRICS_FILE, path / HISTORY_FILE):
        if not required.is_file():
            raise UsageError(f"run {path} has no {required.name}")
    metrics = _read_metrics(path)
    history_path = path / HISTORY_FILE
    history = read_csv_file(history_path)
    quality = schema.metric_of(metrics)
    required = schema.history_columns(schema.TEST_SPLIT, quality.name)
    missing = [column for column in required if column not in history.columns]
    if missing:
        raise UsageError(f"{history_path} lacks the columns {missing}")
    _check_range(quality, history[quality.column(schema.TEST_SPLIT)], str(history_path))
    probe_path = path / PROBE_FILE
    probe = read_csv_file(probe_path) if probe_path.is_file() else None
    cell = (metrics[PROBLEM], metrics[OPTIMIZER], metrics[SEED])
    return Run(*cell, path, metrics, history, probe)


def params_cells(config: Config) -> list[Cell]:
    """The cells params.yaml defines, as the train stage's matrix: problems × optimizers × seeds."""
    return [
        (problem, optimizer, seed)
        for problem in config.problems
        for optimizer in config.optimizers
        for seed in config.seeds
    ]


def _cell_name(cell: Cell) -> str:
    return "/".join(map(str, cell))


def load_runs(results: Path, profile: str, cells: Iterable[Cell]) -> list[Run]:
    """The runs of ``cells`` under ``results/<profile>/runs``, sorted by cell; only these folders
    are read. A cell without its folder is a UsageError naming it (and the others missing)."""
    runs_dir = layout.runs_dir(profile, results)
    if not runs_dir.is_dir():
        raise UsageError(f"no runs directory {runs_dir} (has the train stage run?)")
    cells = sorted(set(cells))
    paths = {cell: layout.run_dir(profile, *cell, results) for cell in cells}
    missing = [_cell_name(cell) for cell, path in paths.items() if not path.is_dir()]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise UsageError(
            f"no run directory under {runs_dir} for the params cell(s) "
            f"<problem>/<optimizer>/<seed> {shown} (problems × optimizers × seeds of params): "
            "run the train stage"
        )
    runs = [load_run(paths[cell]) for cell in cells]
    check_metrics(runs)
    return runs


def check_metrics(runs: Iterable[Run]) -> dict[str, schema.QualityMetric]:
    """Per problem, the quality metric its runs name; UsageError when two runs of one problem
    name different ones (results of two versions of the problem mixed)."""
    found: dict[str, Run] = {}
    for run in runs:
        first = found.setdefault(run.problem, run)
        if first.quality != run.quality:
            raise UsageError(
                f"problem {run.problem}: {first.path} records its {first.quality.name}, "
                f"{run.path} its {run.quality.name}: rerun the problem's cells"
            )
    return {problem: run.quality for problem, run in found.items()}
