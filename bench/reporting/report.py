"""The report: ``results/<profile>`` → ``reports/<profile>/``, assembled from sections as data.

Writes ``report.md`` with PNG figures beside it (``figures/``), a self-contained ``index.html``
(figures as base64 ``data:`` URIs, inline CSS, no external reference), and ``headline.md`` (the
README's headline table, :func:`bench.reporting.tables.headline_table`). The whole directory is
built in a staging directory next to it and swapped in only when complete
(:func:`bench.io.write_dir_atomic`), so a failing report leaves the previous one in place; its
inputs are checked before anything is written.

Reads ``summary.csv`` (written by the aggregate) for every number in the tables and the runs of
params' cells (problems × optimizers × seeds: history.csv, probe.csv, metrics.json provenance)
for the figures. Absent pieces (a probed or ablation optimizer without runs, no probe data, no η_s
diagnostics) are stated as absent.

The report is a list of :class:`~bench.reporting.document.Section`: intro, headline, one per
problem (final metrics, time to target, then one per :data:`FIGURES_OF_A_PROBLEM` entry, whose
own ``details`` add what belongs under that figure), invariance, timing, provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import layout, schema
from bench.errors import UsageError
from bench.io import write_dir_atomic
from bench.reporting import figures, invariance_section, summary, tables, timing_section
from bench.reporting.document import Block, Document, Image, Paragraph, Section, Table
from bench.reporting.runs import Cell, Run, load_runs

FIGURES = "figures"  # subdirectory of reports/<profile>/ holding every PNG (dvc.yaml plots)
REPORT_MD, INDEX_HTML, HEADLINE_MD = "report.md", "index.html", tables.HEADLINE_MD


@dataclass(frozen=True)
class Inputs:
    """What the report reads, loaded and checked before anything is written."""

    profile: str
    summary: pd.DataFrame
    runs: Sequence[Run]
    probe_optimizers: tuple[str, ...]  # params train.probe.optimizers

    @property
    def optimizers(self) -> list[str]:
        return sorted({run.optimizer for run in self.runs})

    @property
    def problems(self) -> list[str]:
        return sorted({run.problem for run in self.runs})


def load_inputs(
    results: Path, profile: str, cells: Iterable[Cell], probe_optimizers: Sequence[str]
) -> Inputs:
    """summary.csv and the runs of ``cells`` (params' problems × optimizers × seeds) of
    ``profile``; UsageError when a run is missing or summary.csv is missing or lists other runs."""
    summary_path, _ = layout.summary_paths(profile, results)
    if not summary_path.is_file():
        raise UsageError(f"{summary_path} is missing: run `python -m bench.aggregate` first")
    table = pd.read_csv(summary_path)
    runs = load_runs(results, profile, cells)
    in_summary = set(table[summary.RUN_KEY].itertuples(index=False, name=None))
    if in_summary != {(run.problem, run.optimizer, run.seed) for run in runs}:
        raise UsageError(
            f"{summary_path} does not list the runs of params' cells: rerun bench.aggregate"
        )
    return Inputs(profile, table, runs, tuple(probe_optimizers))


@dataclass(frozen=True)
class Problem:
    """One problem's share of the inputs, as the figure sections need it."""

    name: str
    runs: Sequence[Run]
    cell: pd.DataFrame  # statistics() rows of the problem, indexed by (optimizer, metric)
    present: list[str]  # optimizers run on it
    probed: list[str]  # optimizers whose probe sentence is given (params' and those with data)
    palette: dict
    note: str  # the regenerate line


def _ablation_details(problem: Problem) -> tuple[Block, ...]:
    variants = [o for o in figures.ABLATION if o in problem.present]
    frame = tables.final_metrics_frame(problem.cell, variants)
    blocks: tuple[Block, ...] = (Table(frame[tables.ABLATION_COLUMNS]),)
    missing = [o for o in figures.ABLATION if o not in problem.present]
    if missing:
        blocks += (Paragraph(f"Absent variants: {', '.join(missing)}."),)
    return blocks


def _probe_details(problem: Problem) -> tuple[Block, ...]:
    return tuple(
        Paragraph(figures.probe_sentence(o, [r for r in problem.runs if r.optimizer == o]))
        for o in problem.probed
    )


@dataclass(frozen=True)
class FigureSection:
    """One figure of a problem: how to draw it, what to say when it cannot be drawn, and the
    blocks that go under it."""

    title: str
    stem: str  # file name: <stem>_<problem>.png
    draw: Callable[[Sequence[Run], Path, dict], Path | None]
    absent: str = ""
    details: Callable[[Problem], tuple[Block, ...]] = lambda problem: ()

    def section(self, problem: Problem, figures_dir: Path) -> Section:
        path = figures_dir / f"{self.stem}_{figures.file_stem(problem.name)}.png"
        drawn = self.draw(problem.runs, path, problem.palette)
        if drawn is None:
            return Section(self.title, (Paragraph(self.absent),), level=3)
        image = Image(drawn, f"{problem.name}: {self.title}")
        blocks = (image, *self.details(problem), Paragraph(problem.note, note=True))
        return Section(self.title, blocks, level=3)


FIGURES_OF_A_PROBLEM = (
    FigureSection("Training loss", "loss", figures.training_loss),
    FigureSection("Test accuracy", "accuracy", figures.test_accuracy),
    FigureSection(
        "Per-subset learning rates η_s of our optimizers",
        "eta",
        lambda runs, path, palette: figures.learning_rates(runs, path),
        f"Absent: no run on this problem has `{schema.ETA_PREFIX}<subset>` history columns.",
    ),
    FigureSection(
        "Ablations: " + " vs ".join(figures.ABLATION),
        "ablation",
        figures.ablation,
        "Absent: none of the ablation variants was run on this problem.",
        _ablation_details,
    ),
    FigureSection(
        "Learning-rate probe η*_s = (H̄⁻¹ḡ)_s along other optimizers",
        "probe",
        lambda runs, path, palette: figures.probe(runs, path),
        "Absent: no probe.csv on this problem.",
        _probe_details,
    ),
)


def problem_section(inputs: Inputs, name: str, stats: pd.DataFrame, figures_dir: Path) -> Section:
    """Final metrics, time to target and the figures of problem ``name``."""
    runs = [run for run in inputs.runs if run.problem == name]
    present = sorted({run.optimizer for run in runs})
    with_probe = {run.optimizer for run in runs if run.probe is not None}
    problem = Problem(
        name=name,
        runs=runs,
        cell=stats[stats[summary.PROBLEM] == name].set_index([summary.OPTIMIZER, summary.METRIC]),
        present=present,
        probed=sorted(set(inputs.probe_optimizers) | with_probe),
        palette=figures.colors(inputs.optimizers),
        note=tables.regenerate_note(runs),
    )
    final = Section(
        "Final metrics",
        (
            Table(tables.final_metrics_frame(problem.cell, present)),
            Paragraph(problem.note, note=True),
        ),
        level=3,
    )
    to_target = Section(
        "Time to target",
        (
            Paragraph(tables.target_sentence(inputs.summary, name)),
            Table(tables.time_to_target_frame(problem.cell, present)),
            Paragraph(
                "Mean ± std over the runs that reached the target. " + problem.note, note=True
            ),
        ),
        level=3,
    )
    figure_sections = tuple(spec.section(problem, figures_dir) for spec in FIGURES_OF_A_PROBLEM)
    intro = f"Optimizers run: {', '.join(present)}."  # every optimizer of params (its cells)
    return Section(f"Problem `{name}`", (Paragraph(intro),), (final, to_target, *figure_sections))


def intro_section(inputs: Inputs, note: str) -> Section:
    profile = inputs.profile
    return Section(
        f"hobench report — profile `{profile}`",
        (
            Paragraph(
                f"{len(inputs.runs)} runs; problems: {', '.join(inputs.problems)}; "
                f"optimizers: {', '.join(inputs.optimizers)}. Everything below is generated from "
                f"`results/{profile}` ({note}; by hand: `python -m bench.aggregate --profile "
                f"{profile}` then `python -m bench.report --profile {profile}`)."
            ),
            Paragraph(
                "Statistics are over the non-diverged seeds; diverged runs are counted beside "
                "them and drawn alone (dotted) in the figures, never averaged in or dropped. ± is "
                f"the sample std; the {summary.CONFIDENCE:.0%} interval is mean ± t·std/√n "
                "(Student t, n−1 dof), undefined for n = 1."
            ),
        ),
        level=1,
    )


def headline_section(inputs: Inputs, note: str) -> Section:
    headline_note = tables.headline_note(inputs.summary)
    return Section(
        "Headline",
        (
            Table(tables.headline_frame(inputs.summary)),
            *([] if headline_note is None else [Paragraph(headline_note)]),
            Paragraph(f"{note} · the README copy is `{HEADLINE_MD}`", note=True),
        ),
    )


def provenance_section(inputs: Inputs) -> Section:
    return Section(
        "Provenance",
        (
            Paragraph("Collected from the `provenance` record of every run's metrics.json."),
            Table(tables.provenance_table(inputs.runs)),
        ),
    )


def sections(inputs: Inputs, results: Path, figures_dir: Path) -> list[Section]:
    """Every section of the report in order; figures are written into ``figures_dir``."""
    note = tables.regenerate_note(inputs.runs)
    stats = summary.statistics(inputs.summary)
    return [
        intro_section(inputs, note),
        headline_section(inputs, note),
        *(problem_section(inputs, name, stats, figures_dir) for name in inputs.problems),
        invariance_section.section(results, inputs.profile, figures_dir),
        timing_section.section(results, inputs.profile, figures_dir),
        provenance_section(inputs),
    ]


def build_report(inputs: Inputs, results: Path, out_dir: Path) -> Document:
    """Write figures, report.md, index.html and headline.md of ``inputs`` into ``out_dir``."""
    figures_dir = out_dir / FIGURES
    figures_dir.mkdir(parents=True, exist_ok=True)
    title = f"hobench report — {inputs.profile}"
    document = Document(title, sections(inputs, Path(results), figures_dir), root=out_dir)
    (out_dir / REPORT_MD).write_text(document.markdown())
    (out_dir / HEADLINE_MD).write_text(tables.headline_table(inputs.summary))
    (out_dir / INDEX_HTML).write_text(document.html())
    return document


def write_report(
    results: Path,
    reports: Path,
    profile: str,
    cells: Iterable[Cell],
    probe_optimizers: Sequence[str],
) -> Path:
    """Check the inputs (the runs of ``cells``, :func:`~bench.reporting.runs.params_cells`),
    build the report in a staging directory beside ``reports/<profile>`` and swap it in when
    complete; return ``reports/<profile>``."""
    inputs = load_inputs(Path(results), profile, cells, probe_optimizers)
    target = layout.report_dir(profile, reports)
    return write_dir_atomic(target, lambda staging: build_report(inputs, Path(results), staging))
