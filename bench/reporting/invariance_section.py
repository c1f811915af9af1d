"""The report's invariance section: table and log-scale figure of the invariance stage
(``results/<profile>/invariance/<problem>.json``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bench import layout  # noqa: E402
from bench.reporting import figures  # noqa: E402
from bench.reporting.document import Image, Paragraph, Section, Table  # noqa: E402

TITLE = "Reparameterization invariance"


def load_invariance(results: Path, profile: str) -> dict[str, dict[str, Any]]:
    """``{problem: record}`` of every invariance JSON (empty when the stage has not run)."""
    folder = layout.invariance_dir(profile, results)  # one <problem>.json per problem
    if not folder.is_dir():
        return {}
    paths = sorted(folder.glob("*.json"))
    return {path.stem: json.loads(path.read_text()) for path in paths}


def _cell(value: float | None) -> str:
    if value is None:
        return "not exercised (weights did not move)"
    if not math.isfinite(value):
        return "diverged"
    return f"{value:.1e}"


def invariance_frame(records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per optimizer, one column per problem: the max relative parameter deviation."""
    optimizers: list[str] = []
    for record in records.values():
        optimizers += [o for o in record["max_relative_deviation"] if o not in optimizers]
    rows = []
    for name in optimizers:
        row = {"optimizer": name}
        for problem, record in records.items():
            row[problem] = _cell(record["max_relative_deviation"].get(name))
        rows.append(row)
    return pd.DataFrame(rows)


def scaling_frame(records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for problem, record in records.items():
        laws = record["scaling_laws"]
        row = {"problem": problem}
        for key in ("g", "H", "d", "eta"):
            row[f"{key} rel. error"] = "—" if laws.get(key) is None else f"{laws[key]:.1e}"
        row["solver status"] = laws.get("solver_status", "—")
        row["flat subsets left out"] = _flat_cell(laws)
        rows.append(row)
    return pd.DataFrame(rows)


def _flat_cell(laws: dict[str, Any]) -> str:
    """The subsets the flatness test dropped from the solve ('none'; model and twin apart when
    they differ; '—' in a record without the lists)."""
    if "flat" not in laws:
        return "—"
    model, twin = laws["flat"], laws.get("flat_twin", laws["flat"])
    text = ", ".join(model) or "none"
    return text if model == twin else f"model: {text}; twin: {', '.join(twin) or 'none'}"


def _maps(records: dict[str, dict[str, Any]]) -> str:
    """'per_tensor: a, b; per_module: c': the partition whose subsets each a_s, b_s are
    constant on, per problem (per tensor in a record that does not say)."""
    by_partition: dict[str, list[str]] = {}
    for problem, record in records.items():
        by_partition.setdefault(record.get("map_partition", "per_tensor"), []).append(problem)
    return "; ".join(f"{p}: {', '.join(names)}" for p, names in by_partition.items())


def invariance_figure(records: dict[str, dict[str, Any]], path: Path) -> Path:
    """Parameter deviation per step (log scale), one panel per problem, two panels a row (a
    wider figure is shrunk to the page's width unreadably); a missing value (None) is a gap."""
    columns = min(len(records), 2)
    rows = -(-len(records) // columns)
    figure = Figure(figsize=(5.5 * columns, 4.2 * rows))
    axes_grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes in axes_grid[len(records) :]:
        axes.set_visible(False)
    for axes, (problem, record) in zip(axes_grid, records.items(), strict=False):
        for name, series in record["per_step"].items():
            values = [max(v, 1e-17) if v is not None and math.isfinite(v) else float("nan")
                      for v in series["parameters"]]  # fmt: skip
            style = "-" if name in record.get("expected_invariant", []) else "--"
            axes.plot(range(1, len(values) + 1), values, style, label=name)
        axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_ylabel("‖θ − (aθ̃ + b)‖ / ‖θ‖")
        axes.set_title(f"{problem} ({record['dtype']})")
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figures.save_png(figure, path, dpi=110)


def section(
    results: Path, profile: str, figures_dir: Path, problems: Sequence[str] = ()
) -> Section | None:
    """The invariance section (its figure written into ``figures_dir``) (None: no results);
    ``problems``: the order of its columns and panels (the others after them, by name)."""
    found = load_invariance(results, profile)
    if not found:
        return None
    order = [p for p in problems if p in found] + [p for p in found if p not in problems]
    records = {problem: found[problem] for problem in order}
    first = next(iter(records.values()))
    figure = invariance_figure(records, figures_dir / "invariance.png")
    lacking = [p for p in problems if p not in found]
    missing = (
        [
            Paragraph(
                f"No invariance record yet for {', '.join(f'`{p}`' for p in lacking)} "
                "(`dvc repro invariance`)."
            )
        ]  # fmt: skip
        if lacking
        else []
    )
    return Section(
        TITLE,
        (
            Paragraph(
                f"Each problem's model and its twin θ_s = a_s θ̃_s + b_s (a_s log-uniform in "
                "[1/r, r], r = params `invariance.scale_range`, one map per subset of the "
                f"problem's partition — {_maps(records)}) are trained on identical batches for "
                f"{first['steps']} steps in {first['dtype']}; the table gives the maximum over "
                f"steps of ‖θ − (aθ̃ + b)‖ / ‖θ‖. Expected: {first['expected']}"
            ),
            *missing,
            Table(invariance_frame(records)),
            Image(figure, "parameter deviation between a model and its reparameterized twin"),
            Paragraph(
                "Solid lines: optimizers expected to be invariant; dashed: expected to drift. "
                "regenerate: `dvc repro invariance report`",
                note=True,
            ),
            Paragraph(
                "Scaling laws at the starting point (u = the gradient): relative errors of "
                "ḡ̃ = a²ḡ, H̄̃ = a_s²a_t²H̄, d̃ = a²d and η̃ = η/a² (METHOD.md §6), over the "
                "subsets the solve keeps (a subset along which the loss is numerically "
                "constant, e.g. a conv bias before a BatchNorm, is left out, as the optimizer "
                "leaves it out)."
            ),
            Table(scaling_frame(records)),
        ),
    )
