"""The report's timing section: step-cost table and the scaling figures of the timing stage
(``results/<profile>/timing/``: steps.csv, scaling.csv, environment.json)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bench import layout  # noqa: E402
from bench.reporting import figures  # noqa: E402
from bench.reporting.document import Image, Paragraph, Section, Table  # noqa: E402

TITLE = "Timing"

SWEEPS = (
    ("subsets", "subsets", "S (number of subsets)"),
    ("width", "width", "width"),
    ("depth", "depth", "depth (hidden layers)"),
    ("batch", "batch", "batch size"),
)


def steps_frame(steps: pd.DataFrame) -> pd.DataFrame:
    frame = steps[["problem", "optimizer", "gradients", "vs_sgd", "plain_step_gradients",
                   "recomputation_gradients_amortised", "peak_memory_mb"]].copy()  # fmt: skip
    frame.columns = ["problem", "optimizer", "step (gradient-eq.)", "× SGD step",
                     "plain step (gradient-eq.)", "recomputation, amortised (gradient-eq.)",
                     "peak memory (MB)"]  # fmt: skip

    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}" if np.isfinite(value) else "—"
        return str(value)

    return frame.map(text)


def scaling_figure(scaling: pd.DataFrame, path: Path) -> Path:
    """Cost vs S, width, depth and batch; the S panel carries ideal O(S) and O(S²) lines."""
    figure = Figure(figsize=(11, 8.4))  # 2 × 2: four panels in a row would be shrunk unreadably
    panels = figure.subplots(2, 2).ravel()
    for axes, (sweep, column, label) in zip(panels, SWEEPS, strict=True):
        part = scaling[scaling["sweep"] == sweep].sort_values(column)
        for variant, rows in part.groupby("variant"):
            axes.plot(rows[column], rows["gradients"], "o-", label=variant)
        if sweep == "subsets" and len(part):
            xs = np.array(sorted(part[column].unique()), dtype=float)
            base = part[part["variant"] == "order2"].sort_values(column)
            if len(base):
                x0, y0 = float(base[column].iloc[0]), float(base["gradients"].iloc[0])
                axes.plot(xs, y0 * xs / x0, "k:", label="ideal O(S)")
                axes.plot(xs, y0 * (xs / x0) ** 2, "k--", label="ideal O(S²)")
            axes.set_xscale("log")
            axes.set_yscale("log")
        axes.set_xlabel(label)
        axes.set_ylabel("gradient-equivalents")
        axes.legend(fontsize=7)
    figure.suptitle("projected_derivatives cost (tanh MLP; one gradient = 1)")
    figure.tight_layout()
    return figures.save_png(figure, path, dpi=100)


def section(
    results: Path, profile: str, figures_dir: Path, problems: Sequence[str] = ()
) -> Section | None:
    """The timing section (its figure written into ``figures_dir``) (None: no results);
    ``problems``: the order of the step-cost rows (the others after them, as in steps.csv)."""
    folder = layout.timing_dir(profile, results)
    if not (folder / "steps.csv").is_file():
        return None
    environment = json.loads((folder / "environment.json").read_text())
    intro = (
        "Step cost per optimizer, amortised over a period of steps (ours recomputes its "
        "curvature once per period), as gradient-equivalents (one forward + backward on the "
        "same batch) and × the SGD step; all timed interleaved in one process, medians over "
        f"rounds. Machine: {environment.get('cpu')} (torch kernels: "
        f"{environment.get('cpu_capability', 'unknown')}), {environment.get('threads')} thread(s), "
        f"torch {environment.get('torch')}, commit `{str(environment.get('git_commit'))[:12]}`."
    )
    raw = pd.read_csv(folder / "steps.csv")
    rank = {problem: index for index, problem in enumerate(problems)}
    raw = raw.iloc[
        sorted(range(len(raw)), key=lambda i: (rank.get(raw["problem"].iloc[i], len(rank)), i))
    ]
    steps = steps_frame(raw)
    figure = scaling_figure(pd.read_csv(folder / "scaling.csv"), figures_dir / "timing_scaling.png")
    alt = "cost of projected_derivatives against S, width, depth and batch"
    return Section(
        TITLE,
        (
            Paragraph(intro),
            Table(steps),
            Image(figure, alt),
            Paragraph("regenerate: `dvc repro timing report`", note=True),
        ),
    )
