"""How sure the numbers are: Student-t intervals, paired comparisons, performance profiles.

- :func:`student_t`: mean, sample std and the 95% Student-t interval of a sample (every
  interval of the aggregate and the report is this one).
- :func:`paired_comparisons`: per problem, our optimizer and each of its variants
  (:data:`OURS`, :data:`VARIANTS`) against each baseline (every other optimizer run on the
  problem): the per-seed difference ours − baseline of the final training loss and of the
  problem's quality metric (:func:`compared_metrics`: the final test accuracy, higher is better,
  or the final test perplexity, lower is better), with the paired interval :data:`PAIRED_RULE`.
- :func:`performance_profile`: the Dolan–Moré profile of the optimizers across problems on the
  time to each problem's training-loss target, in epochs (:data:`PROFILE_RULE`).

Inputs are the aggregate's wide table (:func:`bench.reporting.summary.wide_table`: one row per
run indexed by (problem, optimizer, seed), one column per metric).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from bench import schema

(FINAL_TRAIN_LOSS, _, FINAL_TEST_ACCURACY, *_, DIVERGED) = schema.METRICS_FROM_JSON
CONFIDENCE = 0.95
OURS = "partitioned_newton"
# Its ablations (METHOD.md): compared with the baselines like it, never counted as baselines.
VARIANTS = (
    "partitioned_newton_diag",
    "partitioned_newton_order2",
    "partitioned_newton_saddle_free",
    "cauchy",
)
COMPARED_METRICS = (FINAL_TRAIN_LOSS, FINAL_TEST_ACCURACY)  # an accuracy problem's


def compared_metrics(quality: str | schema.QualityMetric = schema.DEFAULT_METRIC) -> tuple:
    """The metrics compared on a problem of quality metric ``quality``: the final training loss
    and the final test value of the quality metric."""
    return (FINAL_TRAIN_LOSS, schema.quality_metric(quality).final_key)


def lower_is_better(metric: str) -> bool:
    """Whether a lower value of a compared metric is better (the loss; a quality metric by its
    direction)."""
    if metric == FINAL_TRAIN_LOSS:
        return True
    return not schema.metric_of([metric]).higher_is_better


PAIRED_RULE = (
    "paired by seed (a seed fixes the initialisation and the batches of every optimizer, "
    "`stream_seed`): for the seeds both optimizers ran, the per-seed differences d = ours − "
    "baseline, dropping a seed where either run diverged (or has a non-finite value); mean(d) ± "
    f"t_{{{0.5 + CONFIDENCE / 2:.3g}, n−1}}·std(d)/√n (Student t, sample std, n − 1 degrees of "
    "freedom), undefined for n < 2; it excludes zero when both ends have the same sign"
)
TAU_MAX = 16.0  # the profile is drawn and scored over τ ∈ [1, TAU_MAX]
TAU_TABLE = (1.0, 2.0, 4.0, 8.0, 16.0)
PROFILE_RULE = (
    "for each problem p and optimizer o, t(p, o) = the median over o's seeds of the epochs to "
    "p's training-loss target (a run that diverged or never reached it counts as ∞); r(p, o) = "
    "t(p, o) / min over optimizers of t(p, ·) (∞ when never reached; 1 for every optimizer tied "
    "with the fastest; when the fastest needs 0 epochs, every slower one gets ∞); ρ_o(τ) = "
    "the fraction of problems with "
    f"r(p, o) ≤ τ. Score: the area under ρ_o over log₂ τ ∈ [0, log₂ {TAU_MAX:g}], divided by "
    f"log₂ {TAU_MAX:g} (1 = the fastest on every problem, 0 = within {TAU_MAX:g}× the fastest "
    "on none)"
)


# ----------------------------------------------------------------------------- intervals
def student_t(values: np.ndarray) -> dict[str, float | int]:
    """n, mean, std and the Student-t interval of the finite ``values``."""
    values = values[np.isfinite(values)]
    n = int(values.size)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    half = (
        float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
        if n > 1
        else math.nan
    )
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


# ----------------------------------------------------------------------------- paired
def is_ours(optimizer: str) -> bool:
    """Our optimizer or one of its variants (:data:`VARIANTS`, or a ``partitioned_newton_*``)."""
    return optimizer == OURS or optimizer in VARIANTS or optimizer.startswith(OURS + "_")


def compared_pairs(optimizers: Iterable[str]) -> list[tuple[str, str]]:
    """(ours or a variant, baseline) for every such pair among ``optimizers``: ours first, then
    its variants in :data:`VARIANTS` order; baselines in name order."""
    names = sorted(set(optimizers))
    order = {name: i for i, name in enumerate((OURS, *VARIANTS))}
    ours = sorted((o for o in names if is_ours(o)), key=lambda o: (order.get(o, len(order)), o))
    return [(o, b) for o in ours for b in names if not is_ours(b)]


@dataclass(frozen=True)
class Comparison:
    """ours − baseline on one problem and metric: the paired interval over the kept seeds."""

    problem: str
    ours: str
    baseline: str
    metric: str
    pairs: int  # seed pairs kept
    dropped: int  # seed pairs dropped (either run diverged or a value is non-finite)
    difference: float  # mean of the per-seed differences
    ci_low: float
    ci_high: float

    @property
    def excludes_zero(self) -> bool:
        return bool(self.ci_low > 0 or self.ci_high < 0)  # False when undefined (NaN)

    @property
    def ours_better(self) -> bool | None:
        """True / False when the interval excludes zero on ours' better / worse side (by the
        metric's direction), None otherwise."""
        if not self.excludes_zero:
            return None
        return (self.difference < 0) == lower_is_better(self.metric)

    @property
    def verdict(self) -> str:
        """'lower' / 'higher' (ours vs the baseline) when the interval excludes zero."""
        if self.pairs < 2:
            return f"undefined (n={self.pairs})"
        if not self.excludes_zero:
            return "no clear difference"
        return "lower" if self.difference < 0 else "higher"

    def record(self) -> dict[str, float | int | bool | None]:
        """The summary.json entry (non-finite → None)."""
        number = lambda v: float(v) if math.isfinite(v) else None  # noqa: E731
        return {
            "difference": number(self.difference),
            "ci_low": number(self.ci_low),
            "ci_high": number(self.ci_high),
            "pairs": self.pairs,
            "dropped_pairs": self.dropped,
            "excludes_zero": self.excludes_zero,
        }


def paired(ours: pd.DataFrame, baseline: pd.DataFrame, metric: str) -> tuple[np.ndarray, int]:
    """(per-seed differences ours − baseline over the kept seeds, how many seeds were dropped);
    both frames are one problem's runs of one optimizer indexed by seed."""
    seeds = ours.index.intersection(baseline.index).sort_values()
    a, b = ours.loc[seeds], baseline.loc[seeds]
    kept = (
        (a[DIVERGED].to_numpy() <= 0.5)
        & (b[DIVERGED].to_numpy() <= 0.5)
        & np.isfinite(a[metric].to_numpy(dtype=np.float64))
        & np.isfinite(b[metric].to_numpy(dtype=np.float64))
    )
    differences = a[metric].to_numpy(dtype=np.float64) - b[metric].to_numpy(dtype=np.float64)
    return differences[kept], int((~kept).sum())


def wide_quality(runs: pd.DataFrame) -> schema.QualityMetric:
    """The quality metric of one problem's rows of a wide table: the one whose final value has a
    number there, else the only one with a column; ValueError when that does not tell."""
    candidates = [m for m in schema.QUALITY_METRICS.values() if m.final_key in runs.columns]
    valued = [m for m in candidates if runs[m.final_key].notna().any()]
    for found in (valued, candidates):
        if len(found) == 1:
            return found[0]
    raise ValueError(
        f"cannot tell the quality metric from the columns {sorted(runs.columns)}: pass metrics"
    )


def paired_comparisons(
    wide: pd.DataFrame, metrics: Mapping[str, str | schema.QualityMetric] | None = None
) -> list[Comparison]:
    """Every (problem, ours or a variant, baseline, metric) comparison of the wide table.

    ``metrics``: each problem's quality metric (:func:`bench.reporting.summary.quality_metrics`
    of the tidy table); a problem it lacks (or every problem, without it) gets the one its
    columns tell (:func:`wide_quality`)."""
    found = []
    for problem, runs in wide.groupby(level=0, sort=True):
        quality = (metrics or {}).get(str(problem)) or wide_quality(runs)
        cells = problem_cells(wide, str(problem))
        for ours, baseline in compared_pairs(cells):
            for metric in compared_metrics(quality):
                found.append(compare(str(problem), cells, ours, baseline, metric))
    return found


def compare(
    problem: str, cells: Mapping[str, pd.DataFrame], ours: str, baseline: str, metric: str
) -> Comparison:
    """``ours`` − ``baseline`` on ``metric`` (:data:`PAIRED_RULE`); ``cells``: each optimizer's
    runs of ``problem`` indexed by seed (any two optimizers may be compared)."""
    differences, dropped = paired(cells[ours], cells[baseline], metric)
    stat = student_t(differences)
    return Comparison(
        problem, ours, baseline, metric, int(stat["n"]), dropped, float(stat["mean"]),
        float(stat["ci_low"]), float(stat["ci_high"]),
    )  # fmt: skip


def problem_cells(wide: pd.DataFrame, problem: str) -> dict[str, pd.DataFrame]:
    """Each optimizer's runs of ``problem`` in the wide table, indexed by seed."""
    runs = wide.xs(problem, level=0, drop_level=False)
    return {o: cell.droplevel([0, 1]) for o, cell in runs.groupby(level=1, sort=True)}


def comparisons_json(found: Sequence[Comparison]) -> dict[str, dict]:
    """``{problem: {ours: {baseline: {metric: Comparison.record()}}}}``."""
    nested: dict[str, dict] = {}
    for c in found:
        by_ours = nested.setdefault(c.problem, {}).setdefault(c.ours, {})
        by_ours.setdefault(c.baseline, {})[c.metric] = c.record()
    return nested


# ----------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class PerformanceProfile:
    """The ratios r(p, o) of :data:`PROFILE_RULE`: rows optimizers, columns problems."""

    ratios: pd.DataFrame

    def rho(self, tau: float) -> pd.Series:
        """ρ_o(τ) for every optimizer."""
        return (self.ratios <= tau).mean(axis=1)

    def score(self) -> pd.Series:
        """The normalised area under ρ_o over log₂ τ ∈ [0, log₂ TAU_MAX] (closed form: each
        problem with r ≤ TAU_MAX adds (log₂ TAU_MAX − log₂ r) / log₂ TAU_MAX / #problems)."""
        span = math.log2(TAU_MAX)
        logs = np.log2(self.ratios.to_numpy(dtype=np.float64).clip(min=1.0))
        area = np.where(logs <= span, (span - logs) / span, 0.0)
        return pd.Series(area.mean(axis=1), index=self.ratios.index)

    def ranking(self) -> list[str]:
        """Optimizers by score, then ρ(1), then name."""
        table = pd.DataFrame({"score": self.score(), "rho1": self.rho(1.0)})
        table["name"] = table.index
        return table.sort_values(
            ["score", "rho1", "name"], ascending=[False, False, True]
        ).index.tolist()


def median_times(wide: pd.DataFrame, metric: str) -> pd.DataFrame:
    """t(p, o): the median over seeds of ``metric`` (diverged or NaN → ∞); optimizers × problems."""
    values = wide[metric].to_numpy(dtype=np.float64, copy=True)
    values[~np.isfinite(values) | (wide[DIVERGED].to_numpy() > 0.5)] = math.inf
    times = pd.Series(values, index=wide.index).groupby(level=[0, 1]).median()
    return times.unstack(0).sort_index()


def performance_profile(wide: pd.DataFrame, metric: str) -> PerformanceProfile:
    """The profile of :data:`PROFILE_RULE` on ``metric`` (a time to target of the wide table)."""
    times = median_times(wide, metric)
    best = times.min(axis=0)  # per problem
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = times / best
    ratios = ratios.where(times != best, 1.0)
    ratios.loc[:, best == math.inf] = math.inf  # nobody reached it
    return PerformanceProfile(ratios.astype(np.float64))
