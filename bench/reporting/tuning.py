"""The report's tuning section: which tune cells chose a value at an edge of its grid.

A tune file (``results/<profile>/tune/<problem>/<optimizer>.json``, :mod:`bench.training.tuning`)
holds ``grid`` (one row per point tried: the swept hyperparameters and the validation results)
and ``best`` (the chosen point). A swept hyperparameter is one with at least two values in the
grid; its choice is **at an edge** when it is the smallest or the largest of its values (the
first or the last when they cannot be ordered): the optimum may then lie outside the grid. The
file's ``at_edge`` (the list of such hyperparameters) is used when present, else computed here
from ``grid`` and ``best``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench import layout, schema
from bench.errors import UsageError
from bench.reporting.document import Paragraph, Section, Table

TITLE = "Tuning: choices at an edge of their grid"
RESULT_KEYS = frozenset(
    {"valid_loss", "train_loss", "diverged"}
    | {quality.column(schema.VALID_SPLIT) for quality in schema.QUALITY_METRICS.values()}
)  # a row's results (valid_accuracy or valid_perplexity): every other key is a hyperparameter
AT_EDGE = "at_edge"


@dataclass(frozen=True)
class Edge:
    """One swept hyperparameter of a tune cell whose chosen value is first or last of its grid."""

    problem: str
    optimizer: str
    hyperparameter: str
    chosen: Any
    values: tuple[Any, ...]  # the grid's values of the hyperparameter (:func:`grid_values`)

    @property
    def side(self) -> str:
        return "smallest" if self.chosen == self.values[0] else "largest"


def _ordered(values: Sequence[Any]) -> tuple[Any, ...]:
    try:
        return tuple(sorted(values))
    except TypeError:  # values that cannot be ordered: grid order
        return tuple(values)


def grid_values(tuned: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """Swept hyperparameter → its distinct values, sorted (only those with ≥ 2 values)."""
    axes: dict[str, list[Any]] = {}
    for row in tuned["grid"]:
        for key, value in row.items():
            if key not in RESULT_KEYS and value not in axes.setdefault(key, []):
                axes[key].append(value)
    return {key: _ordered(values) for key, values in axes.items() if len(values) > 1}


def at_edge(tuned: dict[str, Any]) -> list[str]:
    """The file's ``at_edge`` when present, else the swept hyperparameters whose ``best`` value
    is the smallest or the largest of its grid values."""
    if AT_EDGE in tuned:
        return list(tuned[AT_EDGE])
    axes = grid_values(tuned)
    best = tuned["best"]
    return [key for key, values in axes.items() if best.get(key) in (values[0], values[-1])]


def edges(tuned: dict[str, Any]) -> list[Edge]:
    """The :class:`Edge` of every hyperparameter of :func:`at_edge`."""
    axes = grid_values(tuned)
    return [
        Edge(tuned["problem"], tuned["optimizer"], key, tuned["best"][key], axes[key])
        for key in at_edge(tuned)
        if key in axes and key in tuned["best"]
    ]


def load_tuned(results: Path, profile: str, cells: Iterable[tuple[str, str]]) -> list[dict]:
    """The tune files of the (problem, optimizer) ``cells`` that exist (a cell tuned with a
    fixed learning rate still has one); UsageError naming a file that is not complete JSON."""
    found = []
    for problem, optimizer in sorted(set(cells)):
        path = layout.tune_path(profile, problem, optimizer, results)
        if not path.is_file():
            continue
        try:
            tuned = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UsageError(f"{path} is not complete JSON ({error}): rerun its cell") from None
        missing = [key for key in ("problem", "optimizer", "grid", "best") if key not in tuned]
        if missing:
            raise UsageError(f"{path} lacks the keys {missing}")
        found.append(tuned)
    return found


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def edges_frame(found: Sequence[Edge]) -> pd.DataFrame:
    rows = [
        {
            "problem": edge.problem,
            "optimizer": edge.optimizer,
            "hyperparameter": edge.hyperparameter,
            "chosen": _value(edge.chosen),
            "edge": edge.side,
            "grid": ", ".join(_value(v) for v in edge.values),
        }
        for edge in found
    ]
    return pd.DataFrame(rows)


def section(tuned: Sequence[dict]) -> Section | None:
    """The cells at an edge (None when no tune file was read: no section)."""
    if not tuned:
        return None
    found = [edge for cell in tuned for edge in edges(cell)]
    cells = {(edge.problem, edge.optimizer) for edge in found}
    intro = (
        f"{len(cells)} of {len(tuned)} tune cells chose the smallest or the largest value of "
        "its grid for at least one swept hyperparameter: the best value may lie outside the "
        "grid (widen it in params `optimizers.<name>.grid`)."
    )
    all_diverged = sorted(
        f"{t['problem']}/{t['optimizer']}" for t in tuned if t.get("all_diverged")
    )
    blocks: list = [Paragraph(intro if found else f"None of the {len(tuned)} tune cells did.")]
    if found:
        blocks.append(Table(edges_frame(found)))
    if all_diverged:
        blocks.append(
            Paragraph(
                f"Every grid point diverged in {', '.join(all_diverged)}: the smallest "
                "learning rate was kept."
            )  # fmt: skip
        )
    blocks.append(Paragraph("regenerate: `dvc repro tune report`", note=True))
    return Section(TITLE, tuple(blocks))
