"""The run record read back: one :class:`Run` per ``runs/<problem>/<optimizer>/<seed>/`` folder.

A run folder holds ``metrics.json``, ``history.csv`` and, for the probed optimizers,
``probe.csv``, with the keys and columns of :mod:`bench.schema`. :func:`load_run` checks a folder
against that contract (required keys and columns, the cell named by the path, accuracies as
fractions); a folder that breaks it is a :class:`~bench.errors.UsageError` naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import schema
from bench.errors import UsageError
from bench.schema import OPTIMIZER, PROBLEM, PROVENANCE, SEED

HISTORY_COLUMNS = schema.history_columns(schema.TEST_SPLIT)  # what a training run writes
TEST_LOSS = schema.loss_column(schema.TEST_SPLIT)
TEST_ACCURACY = schema.accuracy_column(schema.TEST_SPLIT)
METRICS_FILE, HISTORY_FILE, PROBE_FILE = "metrics.json", "history.csv", "probe.csv"


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
    def provenance(self) -> dict[str, Any]:
        """The run's provenance record ({} when metrics.json has none)."""
        return self.metrics.get(PROVENANCE) or {}


def as_float(value: Any) -> float:
    """JSON value → float; ``None`` (NaN written as null) → NaN, booleans → 0/1."""
    return math.nan if value is None else float(value)


def _check_accuracy(values: Any, where: str) -> None:
    array = np.asarray(values, dtype=np.float64)
    bad = array[np.isfinite(array) & ((array < 0.0) | (array > 1.0))]
    if bad.size:
        raise UsageError(f"{where}: test accuracy {bad[0]!r} is not a fraction in [0, 1]")


def _read_metrics(path: Path) -> dict[str, Any]:
    """metrics.json of the run folder ``path``, checked: keys present, the cell the path names."""
    metrics_path = path / METRICS_FILE
    metrics = json.loads(metrics_path.read_text())
    required = (PROBLEM, OPTIMIZER, SEED, *schema.METRICS_FROM_JSON)
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
    for key in schema.ACCURACY_METRICS:
        _check_accuracy(as_float(metrics[key]), f"{metrics_path} {key}")
    return metrics


def load_run(path: Path) -> Run:
    """Read one ``runs/<problem>/<optimizer>/<seed>`` directory, checked against the contract."""
    path = Path(path)
    for required in (path / METRICS_FILE, path / HISTORY_FILE):
        if not required.is_file():
            raise UsageError(f"run {path} has no {required.name}")
    metrics = _read_metrics(path)
    history_path = path / HISTORY_FILE
    history = pd.read_csv(history_path)
    missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
    if missing:
        raise UsageError(f"{history_path} lacks the columns {missing}")
    _check_accuracy(history[TEST_ACCURACY], str(history_path))
    probe_path = path / PROBE_FILE
    probe = pd.read_csv(probe_path) if probe_path.is_file() else None
    cell = (metrics[PROBLEM], metrics[OPTIMIZER], metrics[SEED])
    return Run(*cell, path, metrics, history, probe)


def load_runs(runs_dir: Path) -> list[Run]:
    """Every run under ``runs_dir`` (``results/<profile>/runs``), sorted by cell."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UsageError(f"no runs directory {runs_dir} (has the train stage run?)")
    paths = sorted(p.parent for p in runs_dir.glob(f"*/*/*/{METRICS_FILE}"))
    if not paths:
        raise UsageError(f"no run (…/<problem>/<optimizer>/<seed>/{METRICS_FILE}) under {runs_dir}")
    runs = [load_run(path) for path in paths]
    return sorted(runs, key=lambda r: (r.problem, r.optimizer, r.seed))
