"""Report stage: ``results/<profile>`` → ``reports/<profile>/``.

Writes ``report.md`` with PNG figures beside it, a self-contained ``index.html`` (figures as base64
``data:`` URIs, inline CSS, no external reference), and ``headline.md`` (the README's headline
table, :func:`headline_table`). The whole directory is built in a staging directory next to it and
swapped in only when complete, so a failing report leaves the previous one in place.

Reads ``summary.csv`` (written by ``bench.aggregate``) for every number in the tables and the runs
(history.csv, probe.csv, metrics.json provenance) for the figures. Absent pieces (an optimizer not
run on a problem, no probe data, no η_s diagnostics) are stated as absent.

    python -m bench.report --profile default --results results --reports reports
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench import figures, invariance_report, timing_report
from bench.aggregate import CONFIDENCE, TARGET_RULE, Run, load_runs, statistics

FIGURES = "figures"  # subdirectory of reports/<profile>/ holding every PNG (dvc.yaml plots)
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
PROBE_EXPECTED = ("sgd", "adam", "kfac")
PROVENANCE_KEYS = (
    "git_commit", "git_dirty", "params_hash", "hobench", "torch", "python", "numpy",
    "device", "threads", "cpu", "cpu_capability", "hostname", "created",
)  # fmt: skip
CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}img{max-width:100%}
code{background:#f3f3f3;padding:0 .2em}.note{color:#666;font-size:.85em}"""


# ----------------------------------------------------------------------------- formatting
def _number(value: float, percent: bool = False, digits: int = 4) -> str:
    return f"{100 * value:.2f}" if percent else f"{value:.{digits}g}"


def mean_std(row: pd.Series, percent: bool = False, show_diverged: bool = True) -> str:
    """'mean ± std' over the non-diverged seeds, with the diverged count beside it."""
    runs, diverged, n = int(row["runs"]), int(row["diverged_runs"]), int(row["n"])
    if n == 0:
        return f"diverged ({diverged}/{runs})" if diverged == runs else "—"
    text = _number(row["mean"], percent)
    text += f" ± {_number(row['std'], percent, digits=2)}" if n > 1 else " (n=1)"
    return text + (f" ({diverged}/{runs} diverged)" if diverged and show_diverged else "")


def interval(row: pd.Series, percent: bool = False) -> str:
    if int(row["n"]) < 2:
        return f"undefined (n={int(row['n'])})"
    return f"[{_number(row['ci_low'], percent)}, {_number(row['ci_high'], percent)}]"


def headline_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Problem × optimizer: seeds, final training loss and test accuracy (%) as mean ± std over
    the non-diverged seeds, diverged counts beside them."""
    stats = statistics(summary).set_index(["problem", "optimizer", "metric"])
    stalled = stalled_cells(summary)
    rows = []
    for problem, optimizer in stats.index.droplevel("metric").unique().sort_values():
        loss = stats.loc[(problem, optimizer, "final_train_loss")]
        accuracy = stats.loc[(problem, optimizer, "final_test_accuracy")]
        rows.append(
            {
                "problem": problem,
                "optimizer": optimizer + (STALLED_MARK if (problem, optimizer) in stalled else ""),
                "seeds": str(int(loss["runs"])),
                "final training loss": mean_std(loss),
                "test accuracy (%)": mean_std(accuracy, percent=True),
            }
        )
    return pd.DataFrame(rows)


STALLED_MARK = " (did not train)"
STALLED_NOTE = (
    "(did not train): no non-diverged run lowered the training loss below its initial value."
)
NO_STEP_NOTE = (
    " For {names}, no curvature recomputation gave a usable step (usable_solves = 0 in every "
    "run: the S×S step needs H̄ ≻ 0 without the cubic term, and H̄ was indefinite each time), "
    "so the weights never moved."
)


def stalled_cells(summary: pd.DataFrame) -> set[tuple[str, str]]:
    """(problem, optimizer) cells with a non-diverged run, none of which lowered the loss."""
    wide = summary.set_index(["problem", "optimizer", "seed", "metric"])["value"].unstack("metric")
    if "loss_decreased" not in wide.columns:
        return set()
    stalled = set()
    for key, cell in wide.groupby(level=["problem", "optimizer"]):
        kept = cell[~(cell["diverged"] > 0.5)]
        if len(kept) and not (kept["loss_decreased"] > 0.5).any():
            stalled.add(key)
    return stalled


def _never_stepped(summary: pd.DataFrame, cells: set[tuple[str, str]]) -> list[str]:
    rows = summary[summary["metric"] == "usable_solves"]
    names = set()
    for (problem, optimizer), values in rows.groupby(["problem", "optimizer"])["value"]:
        if (problem, optimizer) in cells and (values == 0).all():
            names.add(optimizer)
    return sorted(names)


def headline_table(summary: pd.DataFrame) -> str:
    """The README's headline table (:func:`headline_frame`) as Markdown, ending in a newline.

    Cells in which no run lowered the training loss are marked and explained under the table.
    """
    frame = headline_frame(summary)
    lines = ["| " + " | ".join(frame.columns) + " |", "|---|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in frame.to_numpy().tolist()]
    if stalled_cells(summary):
        lines += ["", headline_note(summary)]
    return "\n".join(lines) + "\n"


def headline_note(summary: pd.DataFrame) -> str:
    """The sentence under the headline that explains its "(did not train)" marks."""
    never = _never_stepped(summary, stalled_cells(summary))
    return STALLED_NOTE + (NO_STEP_NOTE.format(names=", ".join(never)) if never else "")


def readme_headline(readme: str) -> str | None:
    """The text between the headline markers of the README (None when the markers are absent)."""
    match = re.search(
        re.escape(HEADLINE_START) + r"\n(.*?)" + re.escape(HEADLINE_END), readme, re.S
    )
    return None if match is None else match.group(1)


# ----------------------------------------------------------------------------- document
class Document:
    """A list of blocks rendered both to Markdown and to self-contained HTML."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []
        self.root: Path | None = None  # figure paths in Markdown are relative to it

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str, note: bool = False) -> None:
        self.blocks.append(("paragraph", text, note))

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(("table", frame))

    def figure(self, path: Path, alt: str) -> None:
        self.blocks.append(("figure", path, alt))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            if block[0] == "heading":
                out.append("#" * block[1] + " " + block[2])
            elif block[0] == "paragraph":
                out.append(f"*{block[1]}*" if block[2] else block[1])
            elif block[0] == "table":
                frame = block[1].astype(str).map(lambda cell: cell.replace("|", "\\|"))
                rows = [list(frame.columns), ["---"] * frame.shape[1], *frame.to_numpy().tolist()]
                out.append("\n".join("| " + " | ".join(row) + " |" for row in rows))
            else:
                path = block[1]
                relative = path.relative_to(self.root) if self.root is not None else path.name
                out.append(f"![{block[2]}]({Path(relative).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for block in self.blocks:
            if block[0] == "heading":
                body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif block[0] == "paragraph":
                body.append(f"<p{' class=note' if block[2] else ''}>{_inline(block[1])}</p>")
            elif block[0] == "table":
                head = "".join(f"<th>{_inline(str(c))}</th>" for c in block[1].columns)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>"
                    for row in block[1].to_numpy().tolist()
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            else:
                data = base64.b64encode(block[1].read_bytes()).decode("ascii")
                alt = html.escape(block[2])
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"></figure>'
                )
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def _inline(text: str) -> str:
    """Escape, then `code` and **bold** spans (the only inline Markdown the report uses)."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


# ----------------------------------------------------------------------------- sections
def provenance_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Each provenance key with its distinct values across runs and how many runs have each."""
    rows = []
    for key in PROVENANCE_KEYS:
        counts = Counter(
            str((run.metrics.get("provenance") or {}).get(key, "absent")) for run in runs
        )
        if key == "created" and len(counts) > 1:
            present = sorted(value for value in counts if value != "absent")
            value = f"{present[0]} … {present[-1]}" if present else "absent"
        elif key == "params_hash" and len(counts) > 1:
            value = (
                f"{len(counts)} distinct values: each run hashes its own cell (problem, optimizer, "
                "seed, the train and optimizer sections, its tuned hyperparameters, the data "
                "file's digest); see its metrics.json"
            )
        else:
            value = "; ".join(
                f"{v} ({n} runs)" if len(counts) > 1 else v for v, n in counts.items()
            )
        rows.append({"key": key, "value": value})
    return pd.DataFrame(rows)


def regenerate_note(runs: Sequence[Run]) -> str:
    """'regenerate: `dvc repro report` · commit … · params …' from the runs' provenance."""
    parts = ["regenerate: `dvc repro report`"]
    for key, label, width in (("git_commit", "commit", 10), ("params_hash", "params", 12)):
        values = {str((r.metrics.get("provenance") or {}).get(key, "absent")) for r in runs}
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


def final_metrics_frame(cell: pd.DataFrame, optimizers: Sequence[str]) -> pd.DataFrame:
    """One row per optimizer from :func:`statistics` rows indexed by (optimizer, metric)."""
    rows = []
    for optimizer in optimizers:
        loss, accuracy = (
            cell.loc[(optimizer, "final_train_loss")],
            cell.loc[(optimizer, "final_test_accuracy")],
        )
        rows.append(
            {
                "optimizer": optimizer,
                "seeds": int(loss["runs"]),
                "diverged": int(loss["diverged_runs"]),
                "final training loss": mean_std(loss),
                f"{CONFIDENCE:.0%} interval": interval(loss),
                "final test loss": mean_std(cell.loc[(optimizer, "final_test_loss")]),
                "test accuracy (%)": mean_std(accuracy, percent=True),
                f"{CONFIDENCE:.0%} interval (%)": interval(accuracy, percent=True),
                "best test accuracy (%)": mean_std(
                    cell.loc[(optimizer, "best_test_accuracy")], percent=True
                ),
                "wall-clock (s)": mean_std(cell.loc[(optimizer, "wall_clock")]),
            }
        )
    return pd.DataFrame(rows)


def time_to_target_frame(cell: pd.DataFrame, optimizers: Sequence[str]) -> pd.DataFrame:
    """Epochs and seconds to the training-loss target; 'not reached' when no run reached it."""
    rows = []
    for optimizer in optimizers:
        epochs = cell.loc[(optimizer, "time_to_target_epochs")]
        seconds = cell.loc[(optimizer, "time_to_target_seconds")]
        runs, diverged, reached = (int(epochs[k]) for k in ("runs", "diverged_runs", "n"))
        unreached = f"diverged ({diverged}/{runs})" if diverged == runs else "not reached"
        rows.append(
            {
                "optimizer": optimizer,
                "non-diverged runs reaching it": f"{reached}/{runs - diverged}"
                + (f" ({diverged} diverged)" if diverged else ""),
                "epochs": mean_std(epochs, show_diverged=False) if reached else unreached,
                "seconds": mean_std(seconds, show_diverged=False) if reached else unreached,
            }
        )
    return pd.DataFrame(rows)


def target_sentence(summary: pd.DataFrame, problem: str) -> str:
    rows = summary[summary["problem"] == problem].set_index("metric")["value"]
    target, from_params = (
        rows.loc[["train_loss_target"]],
        rows.loc[["train_loss_target_from_params"]],
    )
    source = (
        "from params `aggregate.train_loss_target`"
        if float(from_params.max()) > 0.5
        else f"rule: {TARGET_RULE}"
    )
    return f"Training-loss target {float(target.iloc[0]):.4g} ({source})."


def _problem_section(
    document: Document,
    runs: Sequence[Run],
    stats: pd.DataFrame,
    summary: pd.DataFrame,
    out_dir: Path,
    palette: dict,
    every_optimizer: Sequence[str],
) -> None:
    problem, note = runs[0].problem, regenerate_note(runs)
    out_dir = out_dir / FIGURES
    present = sorted({run.optimizer for run in runs})
    absent = [o for o in every_optimizer if o not in present]
    cell = stats[stats["problem"] == problem].set_index(["optimizer", "metric"])
    document.heading(2, f"Problem `{problem}`")
    document.paragraph(
        f"Optimizers run: {', '.join(present)}."
        + (f" Absent on this problem: {', '.join(absent)}." if absent else "")
    )
    document.heading(3, "Final metrics")
    document.table(final_metrics_frame(cell, present))
    document.paragraph(note, note=True)
    document.heading(3, "Time to target")
    document.paragraph(target_sentence(summary, problem))
    document.table(time_to_target_frame(cell, present))
    document.paragraph("Mean ± std over the runs that reached the target. " + note, note=True)

    stem = figures.file_stem(problem)
    variants = [o for o in figures.ABLATION if o in present]
    probed = sorted(set(PROBE_EXPECTED) | {r.optimizer for r in runs if r.probe is not None})
    plots = [
        ("Training loss", figures.training_loss(runs, out_dir / f"loss_{stem}.png", palette), ""),
        (
            "Test accuracy",
            figures.test_accuracy(runs, out_dir / f"accuracy_{stem}.png", palette),
            "",
        ),
        (
            "Per-subset learning rates η_s of our optimizers",
            figures.learning_rates(runs, out_dir / f"eta_{stem}.png"),
            "Absent: no run on this problem has `diag/eta/<subset>` history columns.",
        ),
        (
            "Ablations: " + " vs ".join(figures.ABLATION),
            figures.ablation(runs, out_dir / f"ablation_{stem}.png", palette),
            "Absent: none of the ablation variants was run on this problem.",
        ),
        (
            "Learning-rate probe η*_s = (H̄⁻¹ḡ)_s along other optimizers",
            figures.probe(runs, out_dir / f"probe_{stem}.png"),
            "Absent: no probe.csv on this problem.",
        ),
    ]
    for title, path, missing in plots:
        document.heading(3, title)
        if path is None:
            document.paragraph(missing)
            continue
        document.figure(path, f"{problem}: {title}")
        if title.startswith("Ablations"):
            frame = final_metrics_frame(cell, variants)
            document.table(frame[["optimizer", "seeds", "diverged", "final training loss",
                                  "test accuracy (%)", "wall-clock (s)"]])  # fmt: skip
            missing_variants = [o for o in figures.ABLATION if o not in present]
            if missing_variants:
                document.paragraph(f"Absent variants: {', '.join(missing_variants)}.")
        if title.startswith("Learning-rate probe"):
            for optimizer in probed:
                cell_runs = [run for run in runs if run.optimizer == optimizer]
                document.paragraph(figures.probe_sentence(optimizer, cell_runs))
        document.paragraph(note, note=True)


def build_report(results: Path, profile: str, out_dir: Path) -> Document:
    """Write figures, report.md, index.html and headline.md of ``profile`` into ``out_dir``."""
    summary_path = Path(results) / profile / "summary.csv"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} is missing: run `python -m bench.aggregate` first")
    summary = pd.read_csv(summary_path)
    runs = load_runs(results, profile)
    in_summary = set(summary[["problem", "optimizer", "seed"]].itertuples(index=False, name=None))
    if in_summary != {(run.problem, run.optimizer, run.seed) for run in runs}:
        raise ValueError(f"{summary_path} does not list the runs on disk: rerun bench.aggregate")
    stats = statistics(summary)
    note = regenerate_note(runs)
    all_optimizers = sorted({run.optimizer for run in runs})
    palette = figures.colors(all_optimizers)
    document = Document()
    document.root = out_dir
    (out_dir / FIGURES).mkdir(parents=True, exist_ok=True)
    document.heading(1, f"hobench report — profile `{profile}`")
    document.paragraph(
        f"{len(runs)} runs; problems: {', '.join(sorted({r.problem for r in runs}))}; "
        f"optimizers: {', '.join(all_optimizers)}. Everything below is generated from "
        f"`results/{profile}` ({note}; by hand: `python -m bench.aggregate --profile {profile}` "
        f"then `python -m bench.report --profile {profile}`)."
    )
    document.paragraph(
        "Statistics are over the non-diverged seeds; diverged runs are counted beside them and "
        "drawn alone (dotted) in the figures, never averaged in or dropped. ± is the sample std; "
        f"the {CONFIDENCE:.0%} interval is mean ± t·std/√n (Student t, n−1 dof), undefined "
        "for n = 1."
    )
    document.heading(2, "Headline")
    document.table(headline_frame(summary))
    if stalled_cells(summary):
        document.paragraph(headline_note(summary))
    document.paragraph(note + " · the README copy is `headline.md`", note=True)
    for problem in sorted({run.problem for run in runs}):
        problem_runs = [run for run in runs if run.problem == problem]
        _problem_section(document, problem_runs, stats, summary, out_dir, palette, all_optimizers)
    invariance_report.add_section(document, Path(results), profile, out_dir / FIGURES)
    timing_report.add_section(document, Path(results), profile, out_dir / FIGURES)
    document.heading(2, "Provenance")
    document.paragraph("Collected from the `provenance` record of every run's metrics.json.")
    document.table(provenance_table(runs))
    (out_dir / "report.md").write_text(document.markdown())
    (out_dir / "headline.md").write_text(headline_table(summary))
    (out_dir / "index.html").write_text(document.html(f"hobench report — {profile}"))
    return document


def write_report(results: Path, reports: Path, profile: str) -> Path:
    """Build into a staging directory beside ``reports/<profile>`` and swap it in when complete."""
    target = Path(reports) / profile
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{profile}.building-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the report is meant to be read
    try:
        build_report(Path(results), profile, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = target.parent / f".{profile}.previous-{os.getpid()}"
    if target.exists():
        os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        if backup.exists():
            os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="profile name, e.g. default")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    target = write_report(args.results, args.reports, args.profile)
    print(f"report: {target / 'report.md'}, {target / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
