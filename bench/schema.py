"""The run record: every column and key a training run writes, defined once.

Writers (:mod:`bench.training`), the aggregate (:mod:`bench.reporting.summary`) and the figures
read these names from here; nothing else spells them. One run directory
``results/<profile>/runs/<problem>/<optimizer>/<seed>/`` holds:

``history.csv``
    one row per epoch (epoch 0 = before training): :func:`history_columns` (the fixed columns,
    with the evaluation split's name in two of them: ``test`` for training runs, ``valid`` for
    tune runs, and the problem's quality metric in one), then one column ``diag/<key>`` per key
    of the optimizer's ``diagnostics()``, in
    order of first appearance (empty where a row lacks it). Our optimizers log ``diag/eta/<subset>``
    (η_s in use), ``diag/solver_status``, ``diag/condition_number``, ``diag/usable_solves`` and
    ``diag/failed_solves`` (cumulative counts), ``diag/flat_subsets`` (subsets dropped as
    numerically flat at the last recomputation, optimizers.flatness).
``metrics.json``
    :func:`metrics_keys` (:data:`METRICS_KEYS` for an accuracy problem): the last epoch's values
    (at divergence when diverged: never back-filled), the hyperparameters and the provenance
    record.
``probe.csv``
    for the probed optimizers, one row per (probe, subset): :data:`PROBE_COLUMNS`.

The aggregate's tidy table ``summary.csv`` has the columns :data:`SUMMARY_COLUMNS`; its
``summary.json`` holds the profile under :data:`SUMMARY_PROFILE` (summary.csv has no room for it:
its ``value`` column is numeric, and a constant column would change every row of every committed
summary; the two files sit side by side in ``results/<profile>/``, written by the same stage).

**The quality metric** is a property of the problem (``bench.problems.Problem.metric``), one of
:data:`QUALITY_METRICS`: ``accuracy`` (a classifier: logits [B, C] against labels [B], the
fraction of correct argmax predictions, higher is better) or ``perplexity`` (a language model:
logits [B, T, V] against next tokens [B, T], exp of the mean per-token cross-entropy over the
evaluation split, lower is better; the loss columns are then that mean per-token cross-entropy).
Its name is spelt into one history column (``<split>_<metric>``) and two metrics.json keys
(``final_test_<metric>``, ``best_test_<metric>``: the best over epochs in the metric's
direction); nothing else in a run record depends on it, and a record names its metric by those
keys alone (:func:`metric_of`), so an accuracy problem's files are exactly what they were before
the metric became a property of the problem.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


# -- the quality metric of a problem ----------------------------------------------------------
@dataclass(frozen=True)
class QualityMetric:
    """A problem's quality metric: its name (spelt into the run record's column and keys), its
    direction, the range a finite value must lie in (the run reader checks it) and how the
    report shows it (``percent``: a fraction shown as %)."""

    name: str
    higher_is_better: bool
    low: float  # every finite value lies in [low, high]
    high: float
    percent: bool
    description: str

    def column(self, split: str) -> str:
        """The history column ``<split>_<name>``."""
        return f"{split}_{self.name}"

    @property
    def final_key(self) -> str:
        """metrics.json (and summary.csv) ``final_test_<name>``: its value at the last epoch."""
        return f"final_{TEST_SPLIT}_{self.name}"

    @property
    def best_key(self) -> str:
        """metrics.json (and summary.csv) ``best_test_<name>``: the best over the epochs."""
        return f"best_{TEST_SPLIT}_{self.name}"

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def best(self, values: Sequence[float]) -> float:
        """The best of the finite ``values`` in this metric's direction (NaN when none is)."""
        finite = [float(v) for v in values if math.isfinite(v)]
        if not finite:
            return math.nan
        return max(finite) if self.higher_is_better else min(finite)

    @property
    def range_text(self) -> str:
        """The range in words: 'a fraction in [0, 1]', '≥ 1'."""
        if (self.low, self.high) == (0.0, 1.0):
            return "a fraction in [0, 1]"
        if self.high == math.inf:
            return f"≥ {self.low:g}"
        return f"in [{self.low:g}, {self.high:g}]"

    def outside(self, value: float) -> bool:
        """Whether a finite ``value`` lies outside the metric's range (a broken record)."""
        return math.isfinite(value) and not self.low <= value <= self.high


ACCURACY = QualityMetric(
    "accuracy", higher_is_better=True, low=0.0, high=1.0, percent=True,
    description="the fraction of correct argmax predictions (logits [B, C], labels [B])",
)  # fmt: skip
PERPLEXITY = QualityMetric(
    "perplexity", higher_is_better=False, low=1.0, high=math.inf, percent=False,
    description="exp of the mean per-token cross-entropy (logits [B, T, V], next tokens [B, T])",
)  # fmt: skip
QUALITY_METRICS: dict[str, QualityMetric] = {m.name: m for m in (ACCURACY, PERPLEXITY)}
DEFAULT_METRIC = ACCURACY.name  # a problem's metric unless it names another


def quality_metric(name: str | QualityMetric) -> QualityMetric:
    """The :class:`QualityMetric` called ``name`` (a metric passes through); ValueError naming
    the known ones otherwise."""
    if isinstance(name, QualityMetric):
        return name
    if name not in QUALITY_METRICS:
        raise ValueError(f"unknown quality metric {name!r} (known: {', '.join(QUALITY_METRICS)})")
    return QUALITY_METRICS[name]


def metric_column(metric: str, split: str) -> str:
    """The history column of quality metric ``metric`` on ``split``: ``<split>_<metric>``."""
    return quality_metric(metric).column(split)


def final_metric_key(metric: str) -> str:
    """``final_test_<metric>``: the metrics.json key and summary.csv metric of the last epoch."""
    return quality_metric(metric).final_key


def best_metric_key(metric: str) -> str:
    """``best_test_<metric>``: the metrics.json key and summary.csv metric of the best epoch."""
    return quality_metric(metric).best_key


def metric_of(keys: Iterable[str]) -> QualityMetric:
    """The quality metric a record names: the one whose ``final_test_<metric>`` is among
    ``keys`` (metrics.json keys, summary.csv metric names); ValueError when none or several
    are."""
    present = set(keys)
    found = [m for m in QUALITY_METRICS.values() if m.final_key in present]
    if len(found) != 1:
        names = [m.final_key for m in QUALITY_METRICS.values()]
        raise ValueError(
            f"expected exactly one of {names} (the problem's quality metric), found "
            f"{[m.final_key for m in found] or 'none'}"
        )
    return found[0]


# -- history.csv ----------------------------------------------------------------------------
EPOCH, STEP, TRAIN_LOSS, WALL_CLOCK, LR, DIVERGED = (
    "epoch", "step", "train_loss", "wall_clock", "lr", "diverged",
)  # fmt: skip
DIAGNOSTICS_PREFIX = "diag/"  # history column of diagnostics() key k: "diag/" + k
ETA_KEY = "eta/"  # diagnostics() key of subset s: "eta/<subset>"
ETA_PREFIX = DIAGNOSTICS_PREFIX + ETA_KEY
USABLE_SOLVES = "usable_solves"  # diagnostics() key: recomputations that gave a step (cumulative)
TRAIN_SPLIT, TEST_SPLIT, VALID_SPLIT = "train", "test", "valid"


def loss_column(split: str) -> str:
    """``<split>_loss``: the mean loss on that split at the end of the epoch."""
    return f"{split}_loss"


def accuracy_column(split: str) -> str:
    """``<split>_accuracy``: the fraction of correct argmax predictions on that split."""
    return ACCURACY.column(split)


def history_columns(split: str = TEST_SPLIT, metric: str = DEFAULT_METRIC) -> list[str]:
    """The fixed columns of history.csv, in file order, for evaluation split ``split`` and the
    problem's quality metric ``metric`` (a name of :data:`QUALITY_METRICS`)."""
    return [EPOCH, STEP, TRAIN_LOSS, loss_column(split), metric_column(metric, split), WALL_CLOCK,
            LR, DIVERGED]  # fmt: skip


def diagnostic_column(key: str) -> str:
    """The history column of the optimizer's ``diagnostics()`` key ``key``."""
    return DIAGNOSTICS_PREFIX + key


# -- metrics.json ---------------------------------------------------------------------------
PROBLEM, OPTIMIZER, SEED, PROVENANCE = "problem", "optimizer", "seed", "provenance"
_METRICS_KEYS = (
    "problem", "optimizer", "seed", "epochs", "steps", "final_train_loss", "final_test_loss",
    "{final}", "{best}", "wall_clock", "diverged", "diverged_epoch",
    "final_lr", "resumed_from_epoch", "hyperparameters", "provenance",
)  # fmt: skip
# The numeric metrics of metrics.json the aggregate reads (its per-run metrics start with them).
_METRICS_FROM_JSON = (
    "final_train_loss", "final_test_loss", "{final}", "{best}", "wall_clock", "epochs", "steps",
    "diverged",
)  # fmt: skip


def _with_metric(keys: tuple[str, ...], metric: str) -> tuple[str, ...]:
    quality = quality_metric(metric)
    return tuple(k.format(final=quality.final_key, best=quality.best_key) for k in keys)


def metrics_keys(metric: str = DEFAULT_METRIC) -> tuple[str, ...]:
    """The keys of metrics.json, in file order, for a problem of quality metric ``metric``."""
    return _with_metric(_METRICS_KEYS, metric)


def metrics_from_json(metric: str = DEFAULT_METRIC) -> tuple[str, ...]:
    """The numeric keys of metrics.json the aggregate reads, for quality metric ``metric``."""
    return _with_metric(_METRICS_FROM_JSON, metric)


METRICS_KEYS = metrics_keys(ACCURACY.name)  # an accuracy problem's (every problem's until LMs)
METRICS_FROM_JSON = metrics_from_json(ACCURACY.name)
ACCURACY_METRICS = (ACCURACY.final_key, ACCURACY.best_key)  # fractions in [0, 1]

# -- probe.csv ------------------------------------------------------------------------------
PROBE_STEP, PROBE_SUBSET, PROBE_ETA, PROBE_STATUS = "step", "subset", "eta", "status"
PROBE_COLUMNS = (PROBE_STEP, PROBE_SUBSET, PROBE_ETA, "ratio", "g", "h", PROBE_STATUS)

# -- summary.csv ----------------------------------------------------------------------------
SUMMARY_COLUMNS = ("problem", "optimizer", "seed", "metric", "value")

# -- summary.json ---------------------------------------------------------------------------
# ``{"@profile": <profile>, <problem>: {<optimizer>: {<statistic>: ...}, "comparisons": ...}}``
# (bench.reporting.summary). Its own top-level keys start with RESERVED_PREFIX, which no problem
# name may: the aggregate refuses such a name (it would collide).
RESERVED_PREFIX = "@"
SUMMARY_PROFILE = RESERVED_PREFIX + "profile"  # the profile whose results the summary holds
STEP_COST_VS_SGD, PEAK_MEMORY_MB = "step_cost_vs_sgd", "peak_memory_mb"  # per (problem, optimizer)

# -- timing/steps.csv (bench.studies.timing), the columns the aggregate reads ---------------
TIMING_STEPS_FILE = "steps.csv"
STEPS_VS_SGD, STEPS_PEAK_MEMORY = "vs_sgd", "peak_memory_mb"
