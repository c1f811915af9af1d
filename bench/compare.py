"""Compare two benchmark results and fail on a regression: the gate a CI job runs.

    python -m bench.compare BASELINE [CURRENT] [--profile P] [--params params.yaml] [--md | --json]

Each side is a ``summary.csv`` file (the aggregate's tidy table, :mod:`bench.reporting.summary`)
or a git revision, whose committed ``results/<profile>/summary.csv`` is read (``git show``, in the
params file's project). CURRENT defaults to the working tree's ``results/<profile>/summary.csv``;
the profile to ``profile`` of params.yaml. The speed figures are read from ``timing/steps.csv``
beside the summary (or at the revision) when both sides have one.

For every (problem, optimizer) cell on both sides (a cell on one side only is listed, none in
common is an error):

* **Quality**, one value per seed: the final training loss (lower is better; tolerance relative
  to the baseline mean), the problem's quality metric (:data:`bench.schema.QUALITY_METRICS`: a
  classifier's final test accuracy, higher is better, absolute tolerance; a language model's
  final test perplexity, lower is better, relative) and the time to the training-loss target in
  epochs (lower is better; relative). Only seeds that did not
  diverge and have a finite value are used. When both sides ran the same seeds they are paired
  (the pipeline's seed fixes initialisation and batches on both sides): the change is the mean of
  the per-seed differences current − baseline, with its one-sided Student t bounds at
  ``confidence`` (n − 1 degrees of freedom); otherwise an unpaired Welch t test. A change is a
  **regression** when it is worse than the tolerance **and** its bound on the better side is
  still worse than no change (beyond the seeds' spread); an **improvement** likewise the other
  way; anything else is unchanged. With fewer than 2 seeds there is no spread and the tolerance
  alone decides (the ``test`` column then says ``tolerance only``).
* **Counts**: a cell whose share of diverged seeds grows is a regression, and so is one whose
  share of non-diverged seeds that never reach the target grows.
* **Time to target** is compared only where both sides' target for the problem agrees within
  ``target_tolerance`` (relative): a target derived from the optimizers' results
  (:data:`bench.reporting.summary.TARGET_RULE`) moves with them, and epochs to another target
  are not comparable (such rows say ``not compared: target moved``).
* **Speed** (no seeds: one median over timing rounds per side): the step cost × SGD
  (``vs_sgd``) and the peak memory; a regression when current / baseline > 1 + tolerance, an
  improvement when < 1 − tolerance. Absolute seconds are never gated.

Exit status 1 when any row regressed, 0 otherwise; 2 for bad input (:func:`bench.cli.run`): a
revision without a summary, a summary of another profile (told by its ``results/<profile>/``
folder: the summary itself does not record its profile), a malformed or truncated CSV, no cell in
common. The tolerances are the ``compare`` section of params.yaml (:class:`CompareConfig`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from bench import layout, schema
from bench.cli import ArgumentParser, run
from bench.config import CompareConfig, load_config
from bench.errors import UsageError
from bench.reporting.summary import (
    DIVERGED,
    FINAL_TEST_ACCURACY,
    FINAL_TRAIN_LOSS,
    TIME_TO_TARGET_EPOCHS,
    TRAIN_LOSS_TARGET,
)

PROBLEM, OPTIMIZER, SEED, METRIC, VALUE = schema.SUMMARY_COLUMNS
# Columns of bench.studies.timing.STEP_COLUMNS (named here so that this command does not import
# torch; tests/test_compare.py checks them against STEP_COLUMNS).
VS_SGD, PEAK_MEMORY = "vs_sgd", "peak_memory_mb"
STEPS_FILE, ENVIRONMENT_FILE = "steps.csv", "environment.json"  # in timing/ (bench.studies.timing)
# Keys of the timing environment (bench.provenance) that make speed figures of two sides differ.
MACHINE_KEYS = ("cpu", "cpu_capability", "torch", "threads", "device")
UNREACHED = "target_not_reached"  # the count of non-diverged seeds that never reach the target
REGRESSED, IMPROVED, UNCHANGED, NOT_COMPARED = "regressed", "improved", "unchanged", "not compared"
Cell = tuple[str, str]  # (problem, optimizer)


@dataclass(frozen=True)
class Measure:
    """One compared figure: its column, its tolerance (a :class:`CompareConfig` field)."""

    name: str
    tolerance: str
    relative: bool  # tolerance relative to the baseline (else absolute)
    higher_is_better: bool = False


QUALITY = (
    Measure(FINAL_TRAIN_LOSS, "loss_tolerance", relative=True),
    Measure(FINAL_TEST_ACCURACY, "accuracy_tolerance", relative=False, higher_is_better=True),
    Measure(TIME_TO_TARGET_EPOCHS, "epochs_tolerance", relative=True),
)
# The problem's own quality metric (bench.schema.QUALITY_METRICS) takes the place of accuracy:
# a language model's final test perplexity, lower is better, with a relative tolerance.
METRIC_MEASURES = {
    schema.ACCURACY.name: QUALITY[1],
    schema.PERPLEXITY.name: Measure(
        schema.PERPLEXITY.final_key, "perplexity_tolerance", relative=True, higher_is_better=False
    ),
}
SPEED = (
    Measure(VS_SGD, "speed_tolerance", relative=True),
    Measure(PEAK_MEMORY, "memory_tolerance", relative=True),
)
REQUIRED_METRICS = (FINAL_TRAIN_LOSS, TIME_TO_TARGET_EPOCHS, DIVERGED, TRAIN_LOSS_TARGET)


def cell_measures(runs: CellRuns) -> tuple[Measure, ...]:
    """The quality measures of a cell: loss, its problem's metric, time to target."""
    metric = schema.metric_of(runs.values).name
    return (QUALITY[0], METRIC_MEASURES[metric], QUALITY[2])


# ----------------------------------------------------------------------------- reading
def csv_rows(text: str, where: str, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a CSV text, refused (UsageError naming ``where``) when it is empty,
    lacks a column, has no row, or is cut short: no final newline, a line with another number
    of fields than the header."""
    if not text.strip():
        raise UsageError(f"{where} is empty")
    if not text.endswith("\n"):
        raise UsageError(f"{where} does not end with a newline (cut mid-row?)")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
        missing = [column for column in required if column not in header]
        if missing:
            raise UsageError(f"{where} lacks the columns {missing} (its header: {header})")
        count = 0
        for row in reader:
            if len(row) != len(header):
                raise UsageError(
                    f"{where}: line {reader.line_num} has {len(row)} fields, the header "
                    f"{len(header)} (cut mid-row?)"
                )
            count += 1
            yield reader.line_num, dict(zip(header, row, strict=True))
    except csv.Error as error:
        raise UsageError(f"{where}: not a valid CSV file ({error})") from None
    if not count:
        raise UsageError(f"{where} has a header but no rows")


def _number(text: str, where: str, line: int, column: str) -> float:
    """A CSV field as a float (empty: NaN, as the pipeline's writers write NaN)."""
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{where}: line {line}: {column} {text!r} is not a number") from None


def _seed(text: str, where: str, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{where}: line {line}: {SEED} {text!r} is not an integer") from None


@dataclass(frozen=True)
class CellRuns:
    """One cell's per-seed values of a summary: ``values[metric][seed]``."""

    values: Mapping[str, Mapping[int, float]]

    @property
    def seeds(self) -> frozenset[int]:
        return frozenset(self.values[DIVERGED])

    @property
    def diverged(self) -> frozenset[int]:
        return frozenset(seed for seed, value in self.values[DIVERGED].items() if value > 0.5)

    def usable(self, metric: str) -> dict[int, float]:
        """The finite values of the seeds that did not diverge."""
        return {
            seed: value
            for seed, value in self.values[metric].items()
            if seed not in self.diverged and math.isfinite(value)
        }

    @property
    def target(self) -> float:
        return next(iter(self.values[TRAIN_LOSS_TARGET].values()))

    def unreached(self) -> tuple[int, int]:
        """(non-diverged seeds that never reach the target, non-diverged seeds)."""
        kept = self.seeds - self.diverged
        reached = self.usable(TIME_TO_TARGET_EPOCHS)
        return len(kept - set(reached)), len(kept)


def read_summary(text: str, where: str) -> dict[Cell, CellRuns]:
    """A summary.csv text → its cells, checked: columns, numbers, no duplicate row, every seed
    of a cell with every metric compared here (else a truncated or foreign table)."""
    table: dict[Cell, dict[str, dict[int, float]]] = {}
    for line, row in csv_rows(text, where, schema.SUMMARY_COLUMNS):
        seed = _seed(row[SEED], where, line)
        values = table.setdefault((row[PROBLEM], row[OPTIMIZER]), {}).setdefault(row[METRIC], {})
        if seed in values:
            key = [row[PROBLEM], row[OPTIMIZER], seed, row[METRIC]]
            raise UsageError(f"{where}: line {line}: a second row for {key}")
        values[seed] = _number(row[VALUE], where, line, VALUE)
    for (problem, optimizer), metrics in table.items():
        seeds = set().union(*metrics.values())
        try:
            quality = schema.metric_of(metrics).final_key
        except ValueError as error:
            raise UsageError(f"{where}: {problem}/{optimizer}: {error}") from None
        for metric in (*REQUIRED_METRICS, quality):
            lacking = sorted(seeds - set(metrics.get(metric, {})))
            if lacking:
                raise UsageError(
                    f"{where}: {problem}/{optimizer} seed {lacking[0]} has no {metric!r} row "
                    "(a truncated summary, or not the aggregate's)"
                )
    return {cell: CellRuns(metrics) for cell, metrics in sorted(table.items())}


def read_steps(text: str, where: str) -> dict[Cell, dict[str, float]]:
    """A timing steps.csv text → {cell: {vs_sgd, peak_memory_mb}}, checked as summaries are."""
    names = [measure.name for measure in SPEED]
    steps: dict[Cell, dict[str, float]] = {}
    for line, row in csv_rows(text, where, (PROBLEM, OPTIMIZER, *names)):
        cell = (row[PROBLEM], row[OPTIMIZER])
        if cell in steps:
            raise UsageError(f"{where}: line {line}: a second row for {list(cell)}")
        steps[cell] = {name: _number(row[name], where, line, name) for name in names}
    return steps


# ----------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Side:
    """One side of the comparison, read and checked."""

    label: str  # where its summary was read: a path, or <revision>:<path>
    summary: Mapping[Cell, CellRuns]
    steps: Mapping[Cell, Mapping[str, float]] | None  # None: no steps.csv on this side
    steps_label: str | None = None
    environment: Mapping[str, Any] | None = None  # timing/environment.json, when present
    notes: tuple[str, ...] = ()


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not a UTF-8 text file") from None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise UsageError(f"git is not installed: cannot read revision {args[-1]!r}") from None


def _environment(data: bytes | None, where: str) -> Mapping[str, Any] | None:
    if data is None:
        return None
    try:
        record = json.loads(_text(data, where))
    except json.JSONDecodeError as error:
        raise UsageError(f"{where} is not complete JSON ({error})") from None
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


TimingReader = Callable[[str], tuple[str, bytes | None]]  # file of timing/ → (label, bytes)


def _side(label: str, summary: bytes, timing: TimingReader, notes: Sequence[str] = ()) -> Side:
    steps_label, steps = timing(STEPS_FILE)
    environment_label, environment = timing(ENVIRONMENT_FILE)
    return Side(
        label,
        read_summary(_text(summary, label), label),
        None if steps is None else read_steps(_text(steps, steps_label), steps_label),
        None if steps is None else steps_label,
        _environment(environment, environment_label),
        tuple(notes),
    )


def path_side(path: Path, profile: str) -> Side:
    """The summary file ``path`` and the ``timing/`` files beside it, when there are some.
    Under ``results/<other profile>/`` it is refused; elsewhere its profile is unknown (noted)."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder: give its summary.csv")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {path} ({error.strerror})") from None
    folder = path.resolve().parent
    notes = []
    recorded = _recorded_profile(folder / layout.summary_paths(profile, ".")[1].name)
    if recorded is not None and recorded != profile:
        raise UsageError(
            f"{path} is a summary of profile {recorded!r} (its summary.json's "
            f"{schema.SUMMARY_PROFILE}), not of {profile!r}: compare summaries of one profile"
        )
    if recorded is not None:
        pass  # told by the record
    elif folder.parent.name != layout.RESULTS:
        notes.append(f"the profile of {path} is unknown (not in a results/<profile>/ folder)")
    elif folder.name != profile:
        raise UsageError(
            f"{path} is a summary of profile {folder.name!r} (its folder results/{folder.name}/), "
            f"not of {profile!r}: compare summaries of one profile (--profile {folder.name})"
        )
    timing_dir = layout.timing_dir(path.parent.name, path.parent.parent)

    def timing(name: str) -> tuple[str, bytes | None]:
        file = timing_dir / name
        return str(file), file.read_bytes() if file.is_file() else None

    return _side(str(path), data, timing, notes)


def _recorded_profile(summary_json: Path) -> str | None:
    """The profile the aggregate recorded in the summary.json beside a summary (None when
    there is none, or it predates the record)."""
    try:
        record = json.loads(summary_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = record.get(schema.SUMMARY_PROFILE) if isinstance(record, dict) else None
    return value if isinstance(value, str) else None


def _profiles_at(root: Path, revision: str) -> list[str]:
    """The profiles with a committed summary at ``revision``."""
    listing = _git(root, "ls-tree", "-r", "--name-only", revision, "--", f"./{layout.RESULTS}")
    pattern = re.compile(rf"{layout.RESULTS}/([^/]+)/summary\.csv")
    names = listing.stdout.decode("utf-8", "replace").splitlines()
    return sorted(match[1] for name in names if (match := pattern.fullmatch(name)))


def revision_side(revision: str, profile: str, root: Path) -> Side:
    """``results/<profile>/summary.csv`` (and its ``timing/steps.csv``) committed at
    ``revision`` of the git checkout holding ``root``."""
    if revision.endswith(".csv"):
        raise UsageError(f"no such file: {revision}")
    resolved = _git(root, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if resolved.returncode != 0:
        raise UsageError(f"{revision!r} is neither a file nor a git revision of {root}")
    summary_path = layout.summary_paths(profile)[0]
    shown = _git(root, "show", f"{revision}:./{summary_path}")
    if shown.returncode != 0:
        others = _profiles_at(root, revision)
        hint = (
            f"; it has the summary of profile {', '.join(map(repr, others))} "
            f"(--profile {others[0]} compares that profile)"
            if others
            else "; no profile's summary was committed there"
        )
        raise UsageError(f"revision {revision} has no {summary_path}{hint}")

    def timing(name: str) -> tuple[str, bytes | None]:
        file = layout.timing_dir(profile) / name
        found = _git(root, "show", f"{revision}:./{file}")
        return f"{revision}:{file}", found.stdout if found.returncode == 0 else None

    return _side(f"{revision}:{summary_path}", shown.stdout, timing)


def load_side(spec: str | None, profile: str, root: Path) -> Side:
    """A side named on the command line: an existing file, else a git revision; None: the
    working tree's summary of ``profile`` in the project ``root``."""
    if spec is None:
        path = layout.summary_paths(profile, root / layout.RESULTS)[0]
        if not path.is_file():
            raise UsageError(f"no current summary {path}: run the pipeline or give CURRENT")
        return path_side(path, profile)
    if Path(spec).exists():
        return path_side(Path(spec), profile)
    return revision_side(spec, profile, root)


# ----------------------------------------------------------------------------- the tests
@dataclass(frozen=True)
class Row:
    """One compared figure of one cell. ``change`` = current − baseline (for speed figures the
    ratio current / baseline); ``low``/``high``: its one-sided bounds (NaN: no spread)."""

    problem: str
    optimizer: str
    measure: str
    kind: str  # "seeds" (t test or tolerance), "count" (seeds), "ratio" (speed), "none"
    baseline: float = math.nan
    current: float = math.nan
    change: float = math.nan
    low: float = math.nan
    high: float = math.nan
    relative: bool = False  # change shown relative to the baseline
    seeds: tuple[int, int] = (0, 0)  # seeds used (or counted) on each side
    test: str = ""
    verdict: str = NOT_COMPARED
    reason: str = ""


def decide(worse: float, threshold: float, low: float, high: float) -> tuple[str, str]:
    """(verdict, reason) of a change oriented so that positive is worse, with its one-sided
    bounds ``low``/``high`` (NaN: no spread, the tolerance alone decides)."""
    spread = not math.isnan(low)
    for sign, verdict, bound in ((1, REGRESSED, low), (-1, IMPROVED, high)):
        if sign * worse > threshold:
            if not spread:
                return verdict, "beyond the tolerance"
            if sign * bound > 0:
                return verdict, "beyond the tolerance and the seeds' spread"
            return UNCHANGED, "within the seeds' spread"
    return UNCHANGED, ""


def _spread(base: np.ndarray, cur: np.ndarray, paired: bool, confidence: float):
    """(mean change current − baseline, half-width of its one-sided bound, test name); the
    half-width is NaN with fewer than 2 seeds (pairs, or on either side when unpaired)."""
    change, nb, nc = float(cur.mean() - base.mean()), base.size, cur.size
    if min(nb, nc) < 2:
        return change, math.nan, f"tolerance only, n={nb}" + ("" if paired else f"/{nc}")
    if paired:
        error, freedom = (cur - base).std(ddof=1) / math.sqrt(nb), nb - 1
        name = f"paired t, n={nb}"
    else:
        vb, vc = base.var(ddof=1) / nb, cur.var(ddof=1) / nc
        error, name = math.sqrt(vb + vc), f"Welch t, n={nb}/{nc}"
        freedom = (vb + vc) ** 2 / (vb**2 / (nb - 1) + vc**2 / (nc - 1)) if error > 0 else 1
    half = float(scipy_stats.t.ppf(confidence, freedom)) * error if error > 0 else 0.0
    return change, half, name


def seed_row(cell: Cell, measure: Measure, base: CellRuns, cur: CellRuns, settings) -> Row:
    """The seed-aware test of one quality measure (see the module docstring)."""
    before, after = base.usable(measure.name), cur.usable(measure.name)
    paired = base.seeds == cur.seeds
    if paired:
        common = sorted(set(before) & set(after))
        before, after = {s: before[s] for s in common}, {s: after[s] for s in common}
    if not before or not after:
        reason = "no seed with a value on both sides" if paired else "no value on one side"
        return Row(*cell, measure.name, "none", reason=reason)
    b, c = np.array(list(before.values())), np.array(list(after.values()))
    change, half, test = _spread(b, c, paired, settings.confidence)
    tolerance = getattr(settings, measure.tolerance)
    threshold = tolerance * abs(float(b.mean())) if measure.relative else tolerance
    sign = -1.0 if measure.higher_is_better else 1.0
    verdict, reason = decide(sign * change, threshold, sign * change - half, sign * change + half)
    return Row(
        *cell, measure.name, "seeds", float(b.mean()), float(c.mean()), change, change - half,
        change + half, measure.relative, (b.size, c.size), test, verdict, reason,
    )  # fmt: skip


def count_row(cell: Cell, measure: str, base: tuple[int, int], cur: tuple[int, int]) -> Row:
    """(count, of) on each side: a larger share on the current side is a regression."""
    (kb, nb), (kc, nc) = base, cur
    grown, shrunk = kc * nb > kb * nc, kc * nb < kb * nc  # shares kc/nc vs kb/nb, exactly
    verdict = REGRESSED if grown else IMPROVED if shrunk else UNCHANGED
    reason = "a larger share of seeds" if grown else "a smaller share of seeds" if shrunk else ""
    return Row(*cell, measure, "count", kb, kc, kc - kb, seeds=(nb, nc), test="count",
               verdict=verdict, reason=reason)  # fmt: skip


def ratio_row(cell: Cell, measure: Measure, base: float, cur: float, settings) -> Row:
    """A speed figure: current / baseline against 1 ± the relative tolerance."""
    if not (math.isfinite(base) and math.isfinite(cur) and base > 0):
        return Row(*cell, measure.name, "none", base, cur, reason="no figure on both sides")
    tolerance = getattr(settings, measure.tolerance)
    verdict, reason = decide(cur / base - 1, tolerance, math.nan, math.nan)
    return Row(*cell, measure.name, "ratio", base, cur, cur / base, relative=True,
               test=f"ratio, tolerance {tolerance:g}", verdict=verdict, reason=reason)  # fmt: skip


def target_moved(base: CellRuns, cur: CellRuns, tolerance: float) -> str:
    """Why time to target is not comparable ("" when both sides have one target)."""
    b, c = base.target, cur.target
    if (math.isnan(b) and math.isnan(c)) or abs(c - b) <= tolerance * abs(b):
        return ""
    return f"target moved {b:.4g} -> {c:.4g}"


def quality_rows(cell: Cell, base: CellRuns, cur: CellRuns, settings) -> list[Row]:
    """Every quality row of a cell on both sides; time to target only against one target."""
    moved = target_moved(base, cur, settings.target_tolerance)
    rows = []
    measures = cell_measures(base)
    if measures != cell_measures(cur):
        raise UsageError(f"{'/'.join(cell)}: the two sides measure other quality metrics")
    for measure in measures:
        if measure.name == TIME_TO_TARGET_EPOCHS and moved:
            rows.append(Row(*cell, measure.name, "none", reason=moved))
        else:
            rows.append(seed_row(cell, measure, base, cur, settings))
    if moved:
        rows.append(Row(*cell, UNREACHED, "none", reason=moved))
    else:
        rows.append(count_row(cell, UNREACHED, base.unreached(), cur.unreached()))
    diverged = [(len(side.diverged), len(side.seeds)) for side in (base, cur)]
    rows.append(count_row(cell, DIVERGED, *diverged))
    return rows


@dataclass(frozen=True)
class Comparison:
    """Every row of two sides, the cells on one side only, and notes on what was not compared."""

    profile: str
    baseline: Side
    current: Side
    settings: CompareConfig
    rows: tuple[Row, ...]
    one_sided: tuple[tuple[str, str, str, str], ...]  # (side, file, problem, optimizer)
    notes: tuple[str, ...] = field(default=())

    def cell_verdicts(self) -> dict[Cell, str]:
        """Per compared cell: regressed when a row did, else improved when a row did."""
        verdicts: dict[Cell, str] = {}
        for row in self.rows:
            now = verdicts.get((row.problem, row.optimizer), UNCHANGED)
            order = (UNCHANGED, IMPROVED, REGRESSED)
            later = row.verdict if row.verdict in order else UNCHANGED
            verdicts[row.problem, row.optimizer] = max(now, later, key=order.index)
        return verdicts

    def counts(self) -> dict[str, int]:
        verdicts = list(self.cell_verdicts().values())
        return {"compared": len(verdicts)} | {
            v: verdicts.count(v) for v in (REGRESSED, IMPROVED, UNCHANGED)
        }

    @property
    def regressed(self) -> bool:
        return any(row.verdict == REGRESSED for row in self.rows)


def machine_notes(base: Mapping | None, cur: Mapping | None) -> list[str]:
    """A note when the speed figures of the two sides come from other machines or settings."""
    if base is None or cur is None:
        return []
    changed = [f"{key} {base.get(key)!r} -> {cur.get(key)!r}" for key in MACHINE_KEYS
               if base.get(key) != cur.get(key)]  # fmt: skip
    if not changed:
        return []
    return [f"speed measured in other environments ({', '.join(changed)}): a change of speed "
            "may be the machine's"]  # fmt: skip


def _one_sided(name: str, base: Mapping[Cell, Any], cur: Mapping[Cell, Any]):
    return [("baseline", name, *cell) for cell in sorted(base.keys() - cur.keys())] + [
        ("current", name, *cell) for cell in sorted(cur.keys() - base.keys())
    ]


def compare(baseline: Side, current: Side, settings: CompareConfig, profile: str) -> Comparison:
    """Compare every cell of both sides' summaries (and steps, when both have them)."""
    common = sorted(baseline.summary.keys() & current.summary.keys())
    if not common:
        names = (
            ["/".join(cell) for cell in baseline.summary],
            ["/".join(c) for c in current.summary],
        )
        raise UsageError(
            f"no (problem, optimizer) in common: {baseline.label} has {names[0]}, "
            f"{current.label} has {names[1]}"
        )
    notes = [*baseline.notes, *current.notes]
    one_sided = _one_sided("summary.csv", baseline.summary, current.summary)
    speed: list[Cell] = []
    if baseline.steps is not None and current.steps is not None:
        speed = sorted(baseline.steps.keys() & current.steps.keys())
        one_sided += _one_sided(STEPS_FILE, baseline.steps, current.steps)
        notes += machine_notes(baseline.environment, current.environment)
    else:
        lacking = [side.label for side in (baseline, current) if side.steps is None]
        notes.append(f"speed not compared: no timing/{STEPS_FILE} beside {' and '.join(lacking)}")
    rows: list[Row] = []
    for cell in sorted(set(common) | set(speed)):
        if cell in baseline.summary and cell in current.summary:
            rows += quality_rows(cell, baseline.summary[cell], current.summary[cell], settings)
        if cell in speed:
            rows += [
                ratio_row(
                    cell, m, baseline.steps[cell][m.name], current.steps[cell][m.name], settings
                )
                for m in SPEED
            ]
    return Comparison(
        profile, baseline, current, settings, tuple(rows), tuple(one_sided), tuple(notes)
    )


# ----------------------------------------------------------------------------- output
HEADER = ("problem", "optimizer", "measure", "baseline", "current", "change", "bounds", "test",
          "verdict")  # fmt: skip


def _figure(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4g}"


def _shown_change(row: Row, value: float) -> str:
    """A change as the row shows it: % of the baseline, or absolute."""
    if row.relative and row.baseline != 0:
        return f"{100 * value / abs(row.baseline):+.1f}%"
    return f"{value:+.4f}"


def display(row: Row) -> list[str]:
    """The row's cells as the tables print them (:data:`HEADER`)."""
    baseline, current, change, bounds = _figure(row.baseline), _figure(row.current), "", ""
    if row.kind == "seeds":
        change = _shown_change(row, row.change)
        if not math.isnan(row.low):
            bounds = f"[{_shown_change(row, row.low)}, {_shown_change(row, row.high)}]"
    elif row.kind == "count":
        baseline, current = f"{row.baseline:g}/{row.seeds[0]}", f"{row.current:g}/{row.seeds[1]}"
        change = f"{row.change:+g}"
    elif row.kind == "ratio":
        change = f"x{row.change:.3f}"
    verdict = f"{row.verdict} ({row.reason})" if row.reason else row.verdict
    return [row.problem, row.optimizer, row.measure, baseline, current, change, bounds, row.test,
            verdict]  # fmt: skip


def rule(settings: CompareConfig) -> str:
    """One line: the tolerances and the test (the module docstring in short)."""
    tolerances = ", ".join(
        f"{m.name} {getattr(settings, m.tolerance):g} {'relative' if m.relative else 'absolute'}"
        for m in (*QUALITY, *SPEED)
    )
    return (
        f"regression: worse than the tolerance ({tolerances}) and, with 2 or more seeds, beyond "
        f"the seeds' spread (one-sided {settings.confidence:g} t bound of the change: paired "
        "over the same seeds, else Welch; tolerance only under 2 seeds); or a larger share of "
        "diverged seeds, or of seeds missing the target"
    )


def _notes(comparison: Comparison) -> list[str]:
    cells = [f"only in the {side} {name}: {p}/{o} (not compared)"
             for side, name, p, o in comparison.one_sided]  # fmt: skip
    return [*comparison.notes, *cells]


def _sources(comparison: Comparison) -> list[str]:
    return [
        f"{name}: {side.label}" + (f" (speed: {side.steps_label})" if side.steps_label else "")
        for name, side in (("baseline", comparison.baseline), ("current", comparison.current))
    ]


def _cells_line(comparison: Comparison) -> str:
    counts = comparison.counts()
    return (
        f"{counts['compared']} cells compared: {counts[REGRESSED]} regressed, "
        f"{counts[IMPROVED]} improved, {counts[UNCHANGED]} unchanged"
    )


def render_plain(comparison: Comparison) -> str:
    """An aligned table of every row, the notes, and the counts of cells."""
    table = [list(HEADER), *(display(row) for row in comparison.rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    lines = [*_sources(comparison), f"profile: {comparison.profile}", rule(comparison.settings)]
    for line in table:
        lines.append(
            "  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip()
        )
    lines += [f"note: {note}" for note in _notes(comparison)]
    return "\n".join([*lines, _cells_line(comparison)])


def _markdown_table(rows: Sequence[Row]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        shown = display(row)
        if row.verdict == REGRESSED:
            shown[-1] = f"**{shown[-1]}**"
        lines.append("| " + " | ".join(shown) + " |")
    return lines


def render_markdown(comparison: Comparison) -> str:
    """For a pull-request comment: the counts, the rows that are not plainly unchanged, then
    every row in a collapsed block."""
    notable = [row for row in comparison.rows if row.verdict != UNCHANGED or row.reason]
    lines = [f"**bench.compare: {_cells_line(comparison)}**", ""]
    lines += [f"- {text}" for text in (*_sources(comparison), rule(comparison.settings))]
    lines += ["", *(_markdown_table(notable) if notable else ["No change beyond the tolerances."])]
    lines += ["", f"<details><summary>all {len(comparison.rows)} rows</summary>", ""]
    lines += [*_markdown_table(comparison.rows), "", "</details>"]
    notes = _notes(comparison)
    return "\n".join([*lines, *([""] if notes else []), *(f"- note: {note}" for note in notes)])


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def json_record(comparison: Comparison) -> dict[str, Any]:
    """The whole comparison as strict JSON values (NaN → null)."""
    sides = {
        name: {"summary": side.label, "steps": side.steps_label}
        for name, side in (("baseline", comparison.baseline), ("current", comparison.current))
    }
    keys = ("side", "file", PROBLEM, OPTIMIZER)
    return _json_safe(
        {
            "profile": comparison.profile,
            **sides,
            "settings": asdict(comparison.settings),
            "rule": rule(comparison.settings),
            "rows": [asdict(row) for row in comparison.rows],
            "one_sided": [dict(zip(keys, entry, strict=True)) for entry in comparison.one_sided],
            "notes": list(comparison.notes),
            "cells": comparison.counts(),
            "regressed": comparison.regressed,
        }
    )


# ----------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        description="Compare two benchmark summaries; exit 1 on a regression beyond the "
        "tolerances of params.yaml's compare section, 0 otherwise."
    )
    parser.add_argument("baseline", help="a summary.csv file or a git revision")
    parser.add_argument("current", nargs="?", help="the same (default: the working tree's summary)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--profile", help="default: params' profile")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--md", action="store_true", help="a Markdown table")
    output.add_argument("--json", action="store_true", help="a JSON record")
    args = parser.parse_args(argv)
    config = load_config(args.params)
    profile = config.profile if args.profile is None else args.profile
    if not layout.valid_profile(profile):
        raise UsageError(f"--profile {profile!r} is not a profile name")
    settings = config.compare
    baseline = load_side(args.baseline, profile, config.root)
    current = load_side(args.current, profile, config.root)
    comparison = compare(baseline, current, settings, profile)
    if args.json:
        print(json.dumps(json_record(comparison), indent=2, allow_nan=False))
    else:
        print(render_markdown(comparison) if args.md else render_plain(comparison))
    return 1 if comparison.regressed else 0


if __name__ == "__main__":
    raise SystemExit(run(main))
