"""The report's performance-profile section and the headline's one-line ranking.

Dolan–Moré profiles across problems on the time to each problem's training-loss target
(:data:`bench.reporting.comparisons.PROFILE_RULE`): in epochs (the figure's first panel, the
table and the ranking; deterministic, so the generated headline does not churn) and, as a
secondary panel only, in seconds (they change every run).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from bench.reporting import figures  # noqa: E402
from bench.reporting import summary as agg  # noqa: E402
from bench.reporting.comparisons import (  # noqa: E402
    PROFILE_RULE,
    TAU_MAX,
    TAU_TABLE,
    PerformanceProfile,
    performance_profile,
)
from bench.reporting.document import Image, Paragraph, Section, Table  # noqa: E402

TITLE = "Performance profile across problems"
FILE = "performance_profile.png"


def profiles(summary: pd.DataFrame) -> tuple[PerformanceProfile, PerformanceProfile]:
    """(epochs, seconds) profiles of the aggregate's tidy table."""
    wide = agg.wide_table(summary)
    return (
        performance_profile(wide, agg.TIME_TO_SEPARATING_EPOCHS),
        performance_profile(wide, agg.TIME_TO_SEPARATING_SECONDS),
    )


def ranking_line(profile: PerformanceProfile) -> str:
    """The headline's one line: optimizers by profile score (epochs to target)."""
    score = profile.score()
    ranked = " > ".join(f"{o} {score[o]:.2f}" for o in profile.ranking())
    count = profile.ratios.shape[1]
    return (
        f"Time to target, performance profile over {count} problem{'s' * (count != 1)} (epochs "
        f"to each problem's training-loss target): {ranked} (score: area under ρ(τ) for τ in "
        f"[1, {TAU_MAX:g}], log scale; 1 = the fastest on every problem, 0 = never within "
        f"{TAU_MAX:g}× the fastest)."
    )


def profile_frame(profile: PerformanceProfile) -> pd.DataFrame:
    """Per optimizer (by rank): its score and ρ(τ) at :data:`TAU_TABLE`."""
    score = profile.score()
    rows = []
    for optimizer in profile.ranking():
        row = {"optimizer": optimizer, "score": f"{score[optimizer]:.2f}"}
        for tau in TAU_TABLE:
            row[f"ρ({tau:g})"] = f"{profile.rho(tau)[optimizer]:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _draw(axes: Axes, profile: PerformanceProfile, palette: dict, unit: str) -> None:
    """ρ_o(τ) as a step function over τ ∈ [1, TAU_MAX] (log x), one line per optimizer; tied
    lines are nudged apart vertically so that each stays visible."""
    optimizers = profile.ranking()
    for index, optimizer in enumerate(optimizers):
        ratios = profile.ratios.loc[optimizer].to_numpy(dtype=np.float64)
        taus = np.unique(np.concatenate([[1.0, TAU_MAX], ratios[ratios <= TAU_MAX]]))
        rho = np.array([float(profile.rho(tau)[optimizer]) for tau in taus])
        nudge = 0.006 * (index - (len(optimizers) - 1) / 2)
        axes.step(taus, rho + nudge, where="post", color=palette[optimizer], label=optimizer,
                  linewidth=2)  # fmt: skip
    axes.set_xscale("log", base=2)
    axes.set_xlim(1.0, TAU_MAX)
    axes.set_ylim(-0.05, 1.05)
    axes.xaxis.set_major_formatter(FuncFormatter(figures.plain_number))
    axes.set_xlabel(f"τ (time ≤ τ × the fastest optimizer's, {unit})")
    axes.set_ylabel("ρ(τ): fraction of problems")


def profile_figure(
    epochs: PerformanceProfile, seconds: PerformanceProfile, palette: dict, path: Path
) -> Path:
    """Epochs (left, the ranking's) and seconds (right, secondary) profiles side by side."""
    with sns.axes_style("whitegrid"):
        figure = Figure(figsize=(11, 5.0))
        left, right = figure.subplots(1, 2)
    _draw(left, epochs, palette, "epochs")
    _draw(right, seconds, palette, "seconds")
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    left.set_title("epochs to target", fontsize=10)
    right.set_title("secondary: seconds to target (vary from run to run)", fontsize=10)
    figure.suptitle("Performance profiles (Dolan–Moré) on the time to the training-loss target")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    return figures.save_png(figure, path)


def section(summary: pd.DataFrame, palette: dict, figures_dir: Path, note: str) -> Section:
    """The profile's figure, table, rule and the regenerate line."""
    epochs, seconds = profiles(summary)
    figure = profile_figure(epochs, seconds, palette, figures_dir / FILE)
    return Section(
        TITLE,
        (
            Paragraph(
                f"Rule: {PROFILE_RULE}. Training-loss target of each problem (given in its "
                f"section): {agg.TARGET_RULE}, unless params `aggregate.train_loss_target` "
                f"sets it. {agg.TARGET_WHY}"
            ),
            Image(figure, "performance profiles on the time to the training-loss target"),
            Table(profile_frame(epochs)),
            Paragraph(ranking_line(epochs)),
            Paragraph(note, note=True),
        ),
    )
