"""The report: ``results/<profile>`` → ``reports/<profile>/``, assembled from sections as data.

Writes ``report.md`` with PNG figures beside it (``figures/``), a self-contained ``index.html``
(figures as base64 ``data:`` URIs, inline CSS, no external reference), and ``headline.md`` (the
README's headline table, :func:`bench.reporting.tables.headline_table`). The whole directory is
built in a staging directory next to it and swapped in only when complete
(:func:`bench.io.write_dir_atomic`), so a failing report leaves the previous one in place; its
inputs are checked before anything is written.

Reads ``summary.csv`` (written by the aggregate) for every number in the tables, the runs of
params' cells (problems × optimizers × seeds: history.csv, probe.csv, metrics.json provenance)
for the figures and the tune files of its (problem, optimizer) cells for the grid edges. A
section is there only when its data is: no ablation section when no variant ran, no probe section
without probe data, no study section without the study's results (the intro names those left
out); a probe sentence only for an optimizer that was run.

The report is a list of :class:`~bench.reporting.document.Section`: intro, (contents), headline
(the table, then a line per problem: :mod:`~bench.reporting.verdicts`), one per problem in
params' order (final metrics, with K-FAC's coverage of the model when it ran, paired
comparisons, time to target, then one per
:data:`FIGURES_OF_A_PROBLEM` entry, whose own ``details`` add what belongs under that figure),
the performance profile, tuning, invariance, timing, provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import layout, schema
from bench.errors import UsageError
from bench.io import write_dir_atomic
from bench.reporting import (
    comparisons,
    coverage,
    figures,
    invariance_section,
    profile_section,
    summary,
    tables,
    timing_section,
    tuning,
    verdicts,
)
from bench.reporting.document import Block, Bullets, Document, Image, Paragraph, Section, Table
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
    tuned: Sequence[dict] = ()  # the tune files of the (problem, optimizer) cells found
    order: tuple[str, ...] = ()  # the problems in params' order (empty: by name)

    @property
    def optimizers(self) -> list[str]:
        return sorted({run.optimizer for run in self.runs})

    @property
    def problems(self) -> list[str]:
        """The problems run, in params' order (:attr:`order`; by name for those it lacks)."""
        found = {run.problem for run in self.runs}
        return [p for p in self.order if p in found] + sorted(found - set(self.order))


def load_inputs(
    results: Path, profile: str, cells: Iterable[Cell], probe_optimizers: Sequence[str]
) -> Inputs:
    """summary.csv and the runs of ``cells`` (params' problems × optimizers × seeds) of
    ``profile``; UsageError when a run is missing or summary.csv is missing or lists other runs."""
    cells = list(cells)
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
    tuned = tuning.load_tuned(results, profile, {(run.problem, run.optimizer) for run in runs})
    order = tuple(dict.fromkeys(problem for problem, _, _ in cells))
    return Inputs(profile, table, runs, tuple(probe_optimizers), tuned, order)


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
    return (Table(frame[tables.ablation_columns(tables.cell_quality(problem.cell))]),)


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
    draw: Callable[[Sequence[Run], Path, dict], Path | None]  # None: no data, no section
    details: Callable[[Problem], tuple[Block, ...]] = lambda problem: ()

    def section(self, problem: Problem, figures_dir: Path) -> Section | None:
        path = figures_dir / f"{self.stem}_{figures.file_stem(problem.name)}.png"
        drawn = self.draw(problem.runs, path, problem.palette)
        if drawn is None:
            return None
        image = Image(drawn, f"{problem.name}: {self.title}")
        blocks = (image, *self.details(problem), Paragraph(problem.note, note=True))
        return Section(self.title, blocks, level=3)


FIGURES_OF_A_PROBLEM = (
    FigureSection("Training loss", "loss", figures.training_loss),
    FigureSection("Test accuracy", "accuracy", figures.test_accuracy),  # accuracy problems
    FigureSection("Test perplexity", "perplexity", figures.test_perplexity),  # language models
    FigureSection(
        f"Per-subset learning rates η_s of our optimizers (`{schema.ETA_PREFIX}<subset>`)",
        "eta",
        figures.learning_rates,
    ),
    FigureSection(
        "Ablations: ours and its variants", "ablation", figures.ablation, _ablation_details
    ),  # fmt: skip
    FigureSection(
        "Learning-rate probe η*_s = (H̄⁻¹ḡ)_s along other optimizers",
        "probe",
        figures.probe,
        _probe_details,
    ),
)


@dataclass(frozen=True)
class Derived:
    """What several sections share, computed once from the inputs."""

    stats: pd.DataFrame  # summary.statistics()
    comparisons: Sequence[comparisons.Comparison]
    epochs_profile: comparisons.PerformanceProfile
    median_epochs: pd.DataFrame  # the profile's t(p, o): optimizers × problems
    palette: dict
    note: str  # the regenerate line

    @classmethod
    def of(cls, inputs: Inputs) -> Derived:
        wide = summary.wide_table(inputs.summary)
        return cls(
            stats=summary.statistics(inputs.summary),
            comparisons=comparisons.paired_comparisons(
                wide, summary.quality_metrics(inputs.summary)
            ),
            epochs_profile=profile_section.profiles(inputs.summary)[0],
            median_epochs=comparisons.median_times(wide, summary.TIME_TO_SEPARATING_EPOCHS),
            palette=figures.colors(inputs.optimizers),
            note=tables.regenerate_note(inputs.runs),
        )


def _problem(inputs: Inputs, name: str, derived: Derived) -> Problem:
    runs = [run for run in inputs.runs if run.problem == name]
    present = sorted({run.optimizer for run in runs})
    with_probe = {run.optimizer for run in runs if run.probe is not None}
    stats = derived.stats
    return Problem(
        name=name,
        runs=runs,
        cell=stats[stats[summary.PROBLEM] == name].set_index([summary.OPTIMIZER, summary.METRIC]),
        present=present,
        probed=sorted((set(inputs.probe_optimizers) & set(present)) | with_probe),
        palette=derived.palette,
        note=tables.regenerate_note(runs),
    )


def _comparison_section(problem: Problem, derived: Derived) -> Section | None:
    found = [c for c in derived.comparisons if c.problem == problem.name]
    if not found:
        return None
    quality = tables.cell_quality(problem.cell)
    return Section(
        "Ours against the baselines (paired)",
        (
            Paragraph(
                "Difference ours − baseline of the final training loss (lower is better) and of "
                f"the final test {quality.name} ({quality.direction}), with its "
                f"{comparisons.CONFIDENCE:.0%} interval: {comparisons.PAIRED_RULE}. The word "
                "after the interval says whether ours is lower or higher when the interval "
                "excludes zero."
            ),
            Table(tables.comparisons_frame(found)),
            Paragraph(problem.note, note=True),
        ),
        level=3,
    )


def problem_section(inputs: Inputs, name: str, derived: Derived, figures_dir: Path) -> Section:
    """Final metrics, comparisons, time to target and the figures of problem ``name``."""
    problem = _problem(inputs, name, derived)
    kfac = (
        [Paragraph(coverage.coverage_sentence(name, coverage.kfac_coverage(name)))]
        if coverage.KFAC in problem.present
        else []
    )  # what K-FAC preconditions, next to its results
    final = Section(
        "Final metrics",
        (
            Table(tables.final_metrics_frame(problem.cell, problem.present)),
            *kfac,
            Paragraph(problem.note, note=True),
        ),
        level=3,
    )
    to_target = Section(
        "Time to target",
        (
            Paragraph(tables.target_sentence(inputs.summary, name)),
            Table(
                tables.time_to_target_frame(
                    problem.cell, problem.present, derived.median_epochs[name]
                )
            ),
            Paragraph(
                "Mean ± std over the runs that reached the target; the median counts a run "
                "that diverged or never reached it as ∞ (the performance profile's time). "
                + problem.note,
                note=True,
            ),
        ),
        level=3,
    )
    figure_sections = (spec.section(problem, figures_dir) for spec in FIGURES_OF_A_PROBLEM)
    subsections = (final, _comparison_section(problem, derived), to_target, *figure_sections)
    intro = f"Optimizers run: {', '.join(problem.present)}."  # every optimizer of params
    return Section(
        f"Problem `{name}`", (Paragraph(intro),), tuple(s for s in subsections if s is not None)
    )


def intro_section(inputs: Inputs, note: str, left_out: Sequence[str]) -> Section:
    profile = inputs.profile
    omitted = (
        [Paragraph(f"Not in this report (no results yet): {'; '.join(left_out)}.")]
        if left_out
        else []
    )
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
                f"the sample std; the {comparisons.CONFIDENCE:.0%} interval of a mean is mean ± "
                "t·std/√n (Student t, n−1 dof), undefined for n = 1; comparisons between "
                "optimizers use the paired interval over seeds."
            ),
            *omitted,
        ),
        level=1,
    )


def headline_section(inputs: Inputs, derived: Derived) -> Section:
    headline_note = tables.headline_note(inputs.summary)
    return Section(
        "Headline",
        (
            Table(tables.headline_frame(inputs.summary, inputs.problems)),
            Paragraph(tables.headline_legend(inputs.summary)),
            *([] if headline_note is None else [Paragraph(headline_note)]),
            Paragraph(tables.VERDICTS_INTRO),
            Bullets(tuple(verdicts.verdict_lines(inputs.summary, inputs.problems))),
            Paragraph(profile_section.ranking_line(derived.epochs_profile)),
            Paragraph(f"{derived.note} · the README copy is `{HEADLINE_MD}`", note=True),
        ),
    )


def provenance_section(inputs: Inputs) -> Section:
    return Section(
        "Provenance",
        (
            Paragraph("Collected from the `provenance` record of every run's metrics.json."),
            Table(tables.provenance_table(inputs.runs), wrap=True),
        ),
    )


STUDIES = (  # (what the intro calls it when left out, its section)
    ("invariance (`dvc repro invariance`)", invariance_section.section),
    ("timing (`dvc repro timing`)", timing_section.section),
)


def sections(inputs: Inputs, results: Path, figures_dir: Path) -> list[Section]:
    """Every section of the report in order; figures are written into ``figures_dir``."""
    derived = Derived.of(inputs)
    studies = [
        (name, draw(results, inputs.profile, figures_dir, inputs.problems))
        for name, draw in STUDIES
    ]
    left_out = [name for name, section in studies if section is None]
    optional = [tuning.section(inputs.tuned), *(section for _, section in studies)]
    return [
        intro_section(inputs, derived.note, left_out),
        headline_section(inputs, derived),
        *(problem_section(inputs, name, derived, figures_dir) for name in inputs.problems),
        profile_section.section(inputs.summary, derived.palette, figures_dir, derived.note),
        *(section for section in optional if section is not None),
        provenance_section(inputs),
    ]


def build_report(inputs: Inputs, results: Path, out_dir: Path) -> Document:
    """Write figures, report.md, index.html and headline.md of ``inputs`` into ``out_dir``."""
    figures_dir = out_dir / FIGURES
    figures_dir.mkdir(parents=True, exist_ok=True)
    title = f"hobench report — {inputs.profile}"
    document = Document(title, sections(inputs, Path(results), figures_dir), root=out_dir)
    (out_dir / REPORT_MD).write_text(document.markdown())
    ranking = profile_section.ranking_line(profile_section.profiles(inputs.summary)[0])
    headline = tables.headline_table(inputs.summary, ranking, inputs.problems)
    (out_dir / HEADLINE_MD).write_text(headline)
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
