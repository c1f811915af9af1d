"""Per problem, in words: who wins on the problem's own metric and on the training loss, and how
ours fares against the winner (the headline's lines under its table).

For each problem and each of its two compared metrics (the final test value of its quality
metric, by that metric's direction, and the final training loss, lower is better), the winner
is the optimizer with the best mean over its non-diverged seeds among the cells that trained
(:func:`bench.reporting.tables.stalled_cells` left out; ties: all of them), given with its
mean ± std and the seeds behind it. When the runner-up is within noise of it (the paired
interval of :data:`bench.reporting.comparisons.PAIRED_RULE` includes zero) the line says so.

Then ours (:data:`bench.reporting.comparisons.OURS`), when it ran on the problem, on each
metric: ``best``, or its rank by mean and, against the winner, ``loses to <winner>`` (the
paired interval excludes zero on its worse side), ``behind <winner> within noise`` (the
interval includes zero) or without an interval when fewer than two seed pairs are left, then
every other optimizer it also loses to; a negative result is stated as plainly as a positive
one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from bench import schema
from bench.reporting import comparisons as compare
from bench.reporting import summary as agg
from bench.reporting import tables


@dataclass(frozen=True)
class Metric:
    """One compared metric of a problem: its summary key and how the sentence names it."""

    key: str
    name: str  # "test accuracy", "training loss"
    higher_is_better: bool
    percent: bool  # a fraction shown as %, its differences in points

    @property
    def superlative(self) -> str:
        return "highest" if self.higher_is_better else "lowest"


def problem_metrics(quality: schema.QualityMetric) -> tuple[Metric, Metric]:
    """(the quality metric's final test value, the final training loss)."""
    return (
        Metric(
            quality.final_key, f"test {quality.name}", quality.higher_is_better, quality.percent
        ),
        Metric(agg.FINAL_TRAIN_LOSS, "training loss", False, False),
    )


def ranked(stats: pd.DataFrame, problem: str, metric: Metric, excluded: set) -> list[str]:
    """The optimizers of ``problem`` with a mean of ``metric``, best first (then by name), the
    ``excluded`` (problem, optimizer) cells left out. ``stats``: statistics() indexed by
    (problem, optimizer, metric)."""
    means = stats.xs((problem, metric.key), level=(agg.PROBLEM, agg.METRIC))["mean"].dropna()
    means = means[[(problem, o) not in excluded for o in means.index]]
    order = sorted(
        means.index, key=lambda o: (-means[o] if metric.higher_is_better else means[o], o)
    )
    return [str(o) for o in order]


def seeds_text(row: pd.Series) -> str:
    """'5 seeds' or '4 of 5 seeds (1 diverged)': the seeds a mean is taken over."""
    runs, diverged, n = int(row["runs"]), int(row["diverged_runs"]), int(row["n"])
    text = f"{n} seed{'s' * (n != 1)}" if n == runs else f"{n} of {runs} seeds"
    return text + (f" ({diverged} diverged)" if diverged else "")


def _amount(comparison: compare.Comparison, metric: Metric) -> str:
    """'0.38 points lower', '2.33 higher', '1.00 higher': the size (3 significant digits,
    trailing zeros kept) and side of ours − the other's mean."""
    value = abs(comparison.difference)
    size = tables.number(value, True) if metric.percent else f"{value:#.3g}".rstrip(".")
    side = "higher" if comparison.difference > 0 else "lower"
    return f"{size}{' points' * metric.percent} {side}"


def paired_interval(comparison: compare.Comparison, metric: Metric) -> str:
    """'paired 95% interval [−0.71, −0.05], 5 seed pairs'."""
    low, high = (tables.signed(v, metric.percent) for v in (comparison.ci_low, comparison.ci_high))
    return f"paired {tables.INTERVAL} [{low}, {high}], {comparison.pairs} seed pairs"


def ours_clause(comparison: compare.Comparison, metric: Metric) -> str:
    """How ours stands against the winner ``comparison.baseline`` on ``metric``."""
    winner, amount = comparison.baseline, _amount(comparison, metric)
    if comparison.pairs < 2:
        return (
            f"{metric.name}: behind {winner}, {amount} ({comparison.pairs} seed pair: no interval)"
        )
    interval = paired_interval(comparison, metric)
    if comparison.ours_better is False:
        return f"{metric.name}: loses to {winner}, {amount} ({interval})"
    if comparison.ours_better is None:
        return f"{metric.name}: behind {winner} within noise, {amount} ({interval}, includes 0)"
    return (
        f"{metric.name}: ahead of {winner} on the seeds both kept, {amount} ({interval}), "
        f"though {winner}'s mean over its own seeds is better"
    )


@dataclass(frozen=True)
class ProblemStats:
    """What the lines of one problem read: its statistics, runs and the cells left out."""

    name: str
    quality: schema.QualityMetric
    stats: pd.DataFrame  # statistics() indexed by (problem, optimizer, metric)
    cells: dict[str, pd.DataFrame]  # each optimizer's runs, indexed by seed (the wide table's)
    stalled: set[tuple[str, str]]

    def row(self, optimizer: str, metric: Metric) -> pd.Series:
        return self.stats.loc[(self.name, optimizer, metric.key)]

    def compare(self, ours: str, other: str, metric: Metric) -> compare.Comparison:
        return compare.compare(self.name, self.cells, ours, other, metric.key)


def winner_clause(problem: ProblemStats, metric: Metric) -> tuple[str, list[str]]:
    """('highest test accuracy: adam, 97.59 ± 0.58 % over 5 seeds', the winners)."""
    order = ranked(problem.stats, problem.name, metric, problem.stalled)
    if not order:
        return f"{metric.superlative} {metric.name}: none (no optimizer trained)", []
    best = problem.row(order[0], metric)["mean"]
    winners = [o for o in order if problem.row(o, metric)["mean"] == best]
    row = problem.row(winners[0], metric)
    value = tables.mean_std(row, metric.percent, show_diverged=False)
    if metric.percent:  # '90.00 ± 0.50 %', '90.00 % (n=1)'
        head, bracket, tail = value.partition(" (")
        value = f"{head} %{bracket}{tail}"
    text = (
        f"{metric.superlative} {metric.name}: {' and '.join(f'**{o}**' for o in winners)}, "
        f"{value} over {seeds_text(row)}"
    )
    if len(order) > len(winners):
        runner_up = order[len(winners)]
        gap = problem.compare(runner_up, winners[0], metric)
        if gap.pairs >= 2 and not gap.excludes_zero:
            text += f" ({runner_up} within noise: {paired_interval(gap, metric)}, includes 0)"
    return text, winners


def _ordinal(rank: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 21st."""
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix}"


def _behind(problem: ProblemStats, metric: Metric, winner: str) -> str:
    """Ours' rank by mean, its standing against ``winner`` (:func:`ours_clause`) and the other
    optimizers it also loses to (their paired interval excludes zero on ours' worse side): a
    'within noise' of the winner says nothing of those."""
    ours = compare.OURS
    order = ranked(problem.stats, problem.name, metric, problem.stalled)
    clause = ours_clause(problem.compare(ours, winner, metric), metric)
    head, _, rest = clause.partition(": ")
    if ours in order:
        head += f": {_ordinal(order.index(ours) + 1)} of {len(order)}"
    others = [o for o in order if o not in (ours, winner)]
    also = [o for o in others if problem.compare(ours, o, metric).ours_better is False]
    which = "their paired intervals exclude" if len(also) > 1 else "its paired interval excludes"
    tail = f"; also loses to {', '.join(also)} ({which} 0)" if also else ""
    return f"{head}, {rest}{tail}"


def ours_sentence(problem: ProblemStats, winners: Sequence[list[str]]) -> str | None:
    """Ours against the winner of each metric (None: ours did not run on the problem)."""
    ours = compare.OURS
    if ours not in problem.cells:
        return None
    label = f"Ours (`{ours}`)"
    loss = problem.row(ours, problem_metrics(problem.quality)[1])
    if (problem.name, ours) in problem.stalled:
        return f"{label} did not train (no non-diverged run lowered its training loss)."
    if int(loss["n"]) == 0:
        return f"{label} diverged on every seed ({int(loss['runs'])}/{int(loss['runs'])})."
    metrics = problem_metrics(problem.quality)
    clauses = [
        f"{metric.name}: best" if ours in best else _behind(problem, metric, best[0])
        for metric, best in zip(metrics, winners, strict=True)
        if best
    ]
    if clauses and all(ours in best for best in winners):
        clauses = ["best on both"]
    diverged = int(loss["diverged_runs"])
    note = f", {diverged} of {int(loss['runs'])} seeds diverged" if diverged else ""
    return f"Ours (`{ours}`{note}): " + "; ".join(clauses) + "."


def verdict_lines(summary: pd.DataFrame, problems: Sequence[str] | None = None) -> list[str]:
    """One line per problem (in ``problems`` order, default by name): the winners of its two
    metrics and how ours stands (module docstring)."""
    stats = agg.statistics(summary).set_index([*agg.CELL, agg.METRIC])
    wide = agg.wide_table(summary)
    qualities = agg.quality_metrics(summary)
    stalled = tables.stalled_cells(summary)
    lines = []
    for name in problems or sorted(qualities):
        quality = qualities[name]
        problem = ProblemStats(name, quality, stats, compare.problem_cells(wide, name), stalled)
        found = [winner_clause(problem, metric) for metric in problem_metrics(quality)]
        line = f"`{name}` ({quality.name}, {quality.direction}): " + "; ".join(
            text for text, _ in found
        )
        ours = ours_sentence(problem, [winners for _, winners in found])
        lines.append(line + "." + ("" if ours is None else f" {ours}"))
    return lines
