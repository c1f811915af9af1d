"""The report's tables and the sentences about them, from the aggregate's tidy summary.

Numbers are formatted here once: ``mean ± std`` over the non-diverged seeds with the diverged
count beside it (:func:`mean_std`), the Student-t interval (:func:`interval`). The headline table
(:func:`headline_table`) is also the README's, between :data:`HEADLINE_START` and
:data:`HEADLINE_END`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench import schema
from bench.reporting import comparisons as compare
from bench.reporting import summary as agg  # `summary` names the tidy table below
from bench.reporting.runs import Run

HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
HEADLINE_MD = "headline.md"  # the report's copy of the headline table, which the README cites
PROVENANCE_KEYS = (
    "git_commit", "git_dirty", "params_hash", "hobench", "torch", "python", "numpy",
    "device", "threads", "cpu", "cpu_capability", "hostname", "created",
)  # fmt: skip
STALLED_NOTE = (
    "(did not train): no non-diverged run lowered the training loss below its initial value."
)
NO_STEP_NOTE = (
    " For {names}, no curvature recomputation gave a usable step (usable_solves = 0 in every "
    "run: each solve was refused, e.g. an indefinite H̄ with `indefinite: skip`, or its estimate "
    "skipped), so the weights never moved."
)
INTERVAL = f"{compare.CONFIDENCE:.0%} interval"


# ----------------------------------------------------------------------------- formatting
def number(value: float, percent: bool = False, digits: int = 4) -> str:
    return f"{100 * value:.2f}" if percent else f"{value:.{digits}g}"


def mean_std(row: pd.Series, percent: bool = False, show_diverged: bool = True) -> str:
    """'mean ± std' over the non-diverged seeds, with the diverged count beside it."""
    runs, diverged, n = int(row["runs"]), int(row["diverged_runs"]), int(row["n"])
    if n == 0:
        return f"diverged ({diverged}/{runs})" if diverged == runs else "—"
    text = number(row["mean"], percent)
    text += f" ± {number(row['std'], percent, digits=2)}" if n > 1 else " (n=1)"
    return text + (f" ({diverged}/{runs} diverged)" if diverged and show_diverged else "")


def interval(row: pd.Series, percent: bool = False) -> str:
    if int(row["n"]) < 2:
        return f"undefined (n={int(row['n'])})"
    return f"[{number(row['ci_low'], percent)}, {number(row['ci_high'], percent)}]"


# ----------------------------------------------------------------------------- quality metric
SHORT = {schema.ACCURACY.name: "acc.", schema.PERPLEXITY.name: "ppl."}  # headline columns


def quality_label(quality: schema.QualityMetric, short: bool = False) -> str:
    """How a table names the problem's quality metric: 'test accuracy (%)', 'test perplexity';
    ``short``: the headline's 'acc. (%)', 'ppl.'."""
    name = SHORT.get(quality.name, quality.name) if short else f"test {quality.name}"
    return f"{name} (%)" if quality.percent else name


def cell_quality(cell: pd.DataFrame) -> schema.QualityMetric:
    """The quality metric of one problem's :func:`~bench.reporting.summary.statistics` rows
    indexed by (optimizer, metric)."""
    return schema.metric_of(cell.index.get_level_values(-1))


# ----------------------------------------------------------------------------- headline
STALLED_MARK = "did not train"


def stalled_cells(summary: pd.DataFrame) -> set[tuple[str, str]]:
    """(problem, optimizer) cells with a non-diverged run, none of which lowered the loss."""
    wide = agg.wide_table(summary)
    if agg.LOSS_DECREASED not in wide.columns:
        return set()
    stalled = set()
    for key, cell in wide.groupby(level=agg.CELL):
        kept = cell[~(cell[agg.DIVERGED] > 0.5)]
        if len(kept) and not (kept[agg.LOSS_DECREASED] > 0.5).any():
            stalled.add(key)
    return stalled


def _cell_mark(loss: pd.Series, stalled: bool) -> str | None:
    """The headline's mark of one (problem, optimizer) cell, or None."""
    runs, diverged = int(loss["runs"]), int(loss["diverged_runs"])
    if stalled:
        return STALLED_MARK
    if diverged:
        return f"diverged {diverged}/{runs}"
    return None


def mean_ranks(stats: pd.DataFrame, stalled: set[tuple[str, str]]) -> pd.Series:
    """Per optimizer: the mean over problems of its rank by mean final training loss (1 = the
    lowest; ties share the lower rank); a cell that did not train or whose every seed diverged
    ranks last. ``stats``: :func:`~bench.reporting.summary.statistics` indexed by (problem,
    optimizer, metric)."""
    loss = stats.xs(agg.FINAL_TRAIN_LOSS, level=agg.METRIC)["mean"].copy()
    for key in stalled:
        loss.loc[key] = np.nan
    ranks = loss.groupby(level=agg.PROBLEM).rank(method="min", na_option="bottom")
    return ranks.groupby(level=agg.OPTIMIZER).mean()


def _best(stats: pd.DataFrame, metric: str, excluded: set[tuple[str, str]], highest: bool):
    """Per problem: the optimizers whose mean of ``metric`` is the best (ties: all; problems
    without ``metric`` have none)."""
    if metric not in stats.index.unique(agg.METRIC):
        return set()
    means = stats.xs(metric, level=agg.METRIC)["mean"].drop(index=list(excluded), errors="ignore")
    means = means.dropna()
    best = means.groupby(level=agg.PROBLEM).transform("max" if highest else "min")
    return set(means.index[means == best])


def headline_frame(summary: pd.DataFrame, problems: Sequence[str] | None = None) -> pd.DataFrame:
    """Optimizers (rows, by :func:`mean_ranks`) × problems: final training loss and the
    problem's quality metric (test accuracy in %, or test perplexity) as mean ± std over the
    non-diverged seeds, the best of each column in bold (by the metric's direction), the marks
    ("did not train", "diverged k/n") in their own column; ``problems``: the column order
    (default: by name)."""
    stats = agg.statistics(summary).set_index([*agg.CELL, agg.METRIC])
    stalled = stalled_cells(summary)
    ranks = mean_ranks(stats, stalled)
    qualities = agg.quality_metrics(summary)
    known = sorted(stats.index.unique(agg.PROBLEM))
    if problems is not None and sorted(problems) != known:
        raise ValueError(f"headline problems {list(problems)} are not the summary's {known}")
    problems = list(problems or known)
    best_loss = _best(stats, agg.FINAL_TRAIN_LOSS, stalled, highest=False)
    best_quality = set().union(
        *(_best(stats, q.final_key, stalled, q.higher_is_better) for q in set(qualities.values()))
    )
    rows = []
    for optimizer in sorted(ranks.index, key=lambda o: (ranks[o], o)):
        row, marks = {"optimizer": optimizer, "mean rank": f"{ranks[optimizer]:.1f}"}, {}
        for problem in problems:
            quality = qualities[problem]
            loss = stats.loc[(problem, optimizer, agg.FINAL_TRAIN_LOSS)]
            value = stats.loc[(problem, optimizer, quality.final_key)]
            key = (problem, optimizer)
            row[f"{problem} loss"] = _bold(headline_cell(loss), key in best_loss)
            row[f"{problem} {quality_label(quality, short=True)}"] = _bold(
                headline_cell(value, percent=quality.percent), key in best_quality
            )
            mark = _cell_mark(loss, key in stalled)
            if mark is not None:
                marks.setdefault(mark, []).append(problem)
        row["marks"] = "; ".join(f"({m}) {', '.join(p)}" for m, p in marks.items())
        rows.append(row)
    return pd.DataFrame(rows)


def headline_cell(row: pd.Series, percent: bool = False) -> str:
    """'mean ± std' over the non-diverged seeds ('—' when none; the counts are in the marks)."""
    if int(row["n"]) == 0:
        return "—"
    return mean_std(row, percent, show_diverged=False)


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def _never_stepped(summary: pd.DataFrame, cells: set[tuple[str, str]]) -> list[str]:
    rows = summary[summary[agg.METRIC] == agg.USABLE_SOLVES]
    names = set()
    for (problem, optimizer), values in rows.groupby(agg.CELL)[agg.VALUE]:
        if (problem, optimizer) in cells and (values == 0).all():
            names.add(optimizer)
    return sorted(names)


def headline_note(summary: pd.DataFrame) -> str | None:
    """The sentence under the headline that explains its "(did not train)" marks (None: none)."""
    stalled = stalled_cells(summary)
    if not stalled:
        return None
    never = _never_stepped(summary, stalled)
    return STALLED_NOTE + (NO_STEP_NOTE.format(names=", ".join(never)) if never else "")


def headline_legend(summary: pd.DataFrame) -> str:
    """What the headline's rows, cells and marks are."""
    seeds = sorted(set(agg.statistics(summary)["runs"].astype(int)))
    qualities = sorted(set(agg.quality_metrics(summary).values()), key=lambda q: q.name)
    best = ", ".join(
        f"{'highest' if q.higher_is_better else 'lowest'} test {q.name}" for q in qualities
    )
    return (
        "Rows: optimizers by mean rank, over the problems, of their mean final training loss "
        "(1 = the lowest on every problem; a cell that did not train or diverged on every seed "
        f"ranks last). Cells: mean ± std over the non-diverged seeds (of "
        f"{' or '.join(map(str, seeds))} per cell); **bold**: the best of the column (lowest "
        f"loss, {best}), among the cells that trained."
    )


VERDICTS_INTRO = (
    "Per problem, on its own metric and on the training loss (mean ± std over the non-diverged "
    "seeds; ours against each winner by the paired interval over seeds):"
)


def headline_table(
    summary: pd.DataFrame, ranking: str | None = None, problems: Sequence[str] | None = None
) -> str:
    """The README's headline (:func:`headline_frame`) as Markdown, ending in a newline: the
    table, its legend, the "(did not train)" note when a cell is so marked, one line per
    problem saying who wins on its metric and on the training loss and how ours stands
    (:func:`bench.reporting.verdicts.verdict_lines`), and ``ranking`` (the performance
    profile's one-line ranking) when given. ``problems``: their order (default: by name)."""
    from bench.reporting.verdicts import verdict_lines  # it formats with this module's helpers

    frame = headline_frame(summary, problems)
    align = ["---", *["---:"] * (frame.shape[1] - 2), "---"]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in frame.to_numpy().tolist()]
    lines += ["", headline_legend(summary)]
    note = headline_note(summary)
    if note is not None:
        lines += ["", note]
    lines += ["", VERDICTS_INTRO, ""] + [f"- {line}" for line in verdict_lines(summary, problems)]
    if ranking is not None:
        lines += ["", ranking]
    return "\n".join(lines) + "\n"


def readme_headline(readme: str) -> str | None:
    """The text between the headline markers of the README (None when the markers are absent)."""
    match = re.search(
        re.escape(HEADLINE_START) + r"\n(.*?)" + re.escape(HEADLINE_END), readme, re.S
    )
    return None if match is None else match.group(1)


# ----------------------------------------------------------------------------- per problem
def final_metrics_frame(cell: pd.DataFrame, optimizers: Sequence[str]) -> pd.DataFrame:
    """One row per optimizer from :func:`statistics` rows indexed by (optimizer, metric), with
    the problem's quality metric (accuracy in %, or perplexity; its final and best values)."""
    quality = cell_quality(cell)
    label, percent = quality_label(quality), quality.percent
    unit = " (%)" if percent else f" ({quality.name})"  # the loss's interval column has none
    rows = []
    for optimizer in optimizers:
        loss, value = (
            cell.loc[(optimizer, agg.FINAL_TRAIN_LOSS)],
            cell.loc[(optimizer, quality.final_key)],
        )
        rows.append(
            {
                "optimizer": optimizer,
                "seeds": int(loss["runs"]),
                "diverged": int(loss["diverged_runs"]),
                "final training loss": mean_std(loss),
                INTERVAL: interval(loss),
                "final test loss": mean_std(cell.loc[(optimizer, agg.FINAL_TEST_LOSS)]),
                label: mean_std(value, percent=percent),
                f"{INTERVAL}{unit}": interval(value, percent=percent),
                f"best {label}": mean_std(cell.loc[(optimizer, quality.best_key)], percent=percent),
                "wall-clock (s)": mean_std(cell.loc[(optimizer, agg.WALL_CLOCK)]),
            }
        )
    return pd.DataFrame(rows)


ABLATION_COLUMNS = [
    "optimizer",
    "seeds",
    "diverged",
    "final training loss",
    "test accuracy (%)",
    "wall-clock (s)",
]  # fmt: skip (an accuracy problem's)


def ablation_columns(quality: schema.QualityMetric) -> list[str]:
    """The columns of :func:`final_metrics_frame` the ablation table shows."""
    return [quality_label(quality) if c == "test accuracy (%)" else c for c in ABLATION_COLUMNS]


def time_to_target_frame(
    cell: pd.DataFrame, optimizers: Sequence[str], times: pd.Series
) -> pd.DataFrame:
    """Epochs and seconds to the training-loss target (:data:`~bench.reporting.summary.
    TARGET_RULE`); 'not reached' when no run reached it. ``times``: the profile's t(p, o) of
    the problem per optimizer (the median over seeds, ∞ = not reached)."""
    rows = []
    for optimizer in optimizers:
        epochs = cell.loc[(optimizer, agg.TIME_TO_SEPARATING_EPOCHS)]
        seconds = cell.loc[(optimizer, agg.TIME_TO_SEPARATING_SECONDS)]
        runs, diverged, reached = (int(epochs[k]) for k in ("runs", "diverged_runs", "n"))
        unreached = f"diverged ({diverged}/{runs})" if diverged == runs else "not reached"
        median = float(times.get(optimizer, np.inf))
        rows.append(
            {
                "optimizer": optimizer,
                "non-diverged runs reaching it": f"{reached}/{runs - diverged}"
                + (f" ({diverged} diverged)" if diverged else ""),
                "epochs": mean_std(epochs, show_diverged=False) if reached else unreached,
                "median epochs (∞: not reached)": f"{median:g}" if np.isfinite(median) else "∞",
                "seconds": mean_std(seconds, show_diverged=False) if reached else unreached,
            }
        )
    return pd.DataFrame(rows)


def target_sentence(summary: pd.DataFrame, problem: str) -> str:
    rows = summary[summary[agg.PROBLEM] == problem].set_index(agg.METRIC)[agg.VALUE]
    target, from_params = rows.loc[[agg.SEPARATING_TARGET]], rows.loc[[agg.TARGET_FROM_PARAMS]]
    source = (
        "from params `aggregate.train_loss_target`"
        if float(from_params.max()) > 0.5
        else f"rule: {agg.TARGET_RULE}"
    )
    return f"Training-loss target {float(target.iloc[0]):.4g} ({source})."


def signed(value: float, percent: bool) -> str:
    return number(value, percent, digits=3).replace("-", "−")


def difference(comparison: compare.Comparison, percent: bool = False) -> str:
    """'−0.012 [−0.020, −0.004], lower': ours − baseline, its paired interval, the verdict."""
    if comparison.pairs == 0:
        return "no seed pair"
    text = signed(comparison.difference, percent)
    if comparison.pairs > 1:
        low, high = (signed(v, percent) for v in (comparison.ci_low, comparison.ci_high))
        text += f" [{low}, {high}]"
    return f"{text}, {comparison.verdict}"


def comparisons_frame(found: Sequence[compare.Comparison]) -> pd.DataFrame:
    """One row per (ours or a variant, baseline) of one problem: the seed pairs and the paired
    difference of each compared metric (accuracy in percentage points, perplexity as it is)."""
    by_pair: dict[tuple[str, str], dict[str, compare.Comparison]] = {}
    for comparison in found:
        by_pair.setdefault((comparison.ours, comparison.baseline), {})[comparison.metric] = (
            comparison
        )
    rows = []
    for (ours, baseline), metrics in by_pair.items():
        loss = metrics[agg.FINAL_TRAIN_LOSS]
        (metric,) = (m for m in metrics if m != agg.FINAL_TRAIN_LOSS)  # the quality metric's
        quality, value = schema.metric_of([metric]), metrics[metric]
        dropped = max(loss.dropped, value.dropped)
        label = f"test {quality.name}" + (", points of %" if quality.percent else "")
        rows.append(
            {
                "comparison": f"{ours} − {baseline}",
                "seed pairs": f"{loss.pairs}" + (f" ({dropped} dropped)" if dropped else ""),
                f"final training loss [{INTERVAL}]": difference(loss),
                f"{label} [{INTERVAL}]": difference(value, percent=quality.percent),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- provenance
def _provenance_value(key: str, counts: Counter) -> str:
    if key == "created" and len(counts) > 1:
        present = sorted(value for value in counts if value != "absent")
        return f"{present[0]} … {present[-1]}" if present else "absent"
    if key == "params_hash" and len(counts) > 1:
        return (
            f"{len(counts)} distinct values: each run hashes its own cell (problem, optimizer, "
            "seed, the train and optimizer sections, its tuned hyperparameters, the data "
            "file's digest); see its metrics.json"
        )
    return "; ".join(f"{v} ({n} runs)" if len(counts) > 1 else v for v, n in counts.items())


def provenance_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Each provenance key with its distinct values across runs and how many runs have each."""
    rows = []
    for key in PROVENANCE_KEYS:
        counts = Counter(str(run.provenance.get(key, "absent")) for run in runs)
        rows.append({"key": key, "value": _provenance_value(key, counts)})
    return pd.DataFrame(rows)


def regenerate_note(runs: Sequence[Run]) -> str:
    """'regenerate: `dvc repro report` · commit … · params …' from the runs' provenance."""
    parts = ["regenerate: `dvc repro report`"]
    for key, label, width in (("git_commit", "commit", 10), ("params_hash", "params", 12)):
        values = {str(run.provenance.get(key, "absent")) for run in runs}
        parts.append(
            f"{label} `{next(iter(values))[:width]}`"
            if len(values) == 1
            else (
                "params per cell (see Provenance)"
                if key == "params_hash"
                else f"{len(values)} different {label} values (see Provenance)"
            )
        )
    return " · ".join(parts)
