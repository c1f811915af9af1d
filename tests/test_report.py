"""The report stage on a synthetic results tree: files, self-contained HTML, headline table,
absent pieces, atomicity, and a headless-Chromium rendering check.

The fixture's noise seed is drawn fresh and printed; replay with HOBENCH_SEED=<seed>.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_results import (
    LAYOUT,
    PROBE_EXPECTED_PATTERN,
    SEEDS,
    write_params,
    write_results_tree,
)

from bench import aggregate, report
from bench.cli import run
from bench.errors import UsageError
from bench.reporting import figures, tables
from bench.reporting import report as reporting

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _seed() -> int:
    value = int(os.environ.get("HOBENCH_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"fixture noise seed: replay with HOBENCH_SEED={value}")
    return value


def _build(root: Path, params_probe=None, **tree) -> tuple[Path, Path, dict]:
    results, reports = root / "results", root / "reports"
    written = write_results_tree(results, seed=_seed(), **tree)
    cells = {"layout": tree.get("layout", LAYOUT), "seeds": tree.get("seeds", SEEDS)}
    params = write_params(root / "params.yaml", probe_optimizers=params_probe, **cells)
    options = ["--profile", "default", "--params", str(params), "--results", str(results)]
    assert aggregate.main(options) == 0
    assert report.main([*options, "--reports", str(reports)]) == 0
    return results, reports / "default", written


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, dict]:
    return _build(tmp_path_factory.mktemp("report"))


def test_report_files_exist_and_list_every_optimizer(built):
    _, out, written = built
    markdown = (out / "report.md").read_text()
    page = (out / "index.html").read_text()
    for optimizer in {o for _, o, _ in written}:
        assert optimizer in markdown and optimizer in page, optimizer
    for problem in LAYOUT:
        assert f"Problem `{problem}`" in markdown
        for kind in ("loss", "accuracy", "eta", "ablation", "probe"):
            assert (out / "figures" / f"{kind}_{problem}.png").read_bytes().startswith(PNG_MAGIC)
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (out / target).is_file(), target
    assert markdown.count("regenerate: `dvc repro report`") >= 2 * 8
    assert "## Provenance" in markdown and "feedc0ffee" in markdown and "Synthetic CPU" in markdown


def test_html_is_self_contained(built):
    _, out, _ = built
    page = (out / "index.html").read_text()
    assert not re.search(r"https?://", page, re.IGNORECASE)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    sources = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert len(sources) == len(re.findall(r"<img ", page)) == 5 * len(LAYOUT)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert re.findall(r"src=\"([^\"]*)\"", page) == sources  # no other sourced element


def _parse_mean_std(cell: str) -> tuple[float, float]:
    match = re.match(r"([-0-9.e+]+) ± ([-0-9.e+]+)", cell)
    assert match, cell
    return float(match.group(1)), float(match.group(2))


def test_headline_table_is_the_generated_file_and_has_the_right_numbers(built):
    results, out, written = built
    summary = pd.read_csv(results / "default" / "summary.csv")
    table = tables.headline_table(summary)
    assert (out / "headline.md").read_text() == table
    rows = [line.split(" | ") for line in table.strip().splitlines()[2:]]
    assert len(rows) == len({(p, o) for p, o, _ in written})
    for row in rows:
        problem, optimizer = row[0].lstrip("| "), row[1]
        cell = [m for (p, o, _), m in written.items() if p == problem and o == optimizer]
        kept = [m for m in cell if not m["diverged"]]
        loss = np.array([m["final_train_loss"] for m in kept])
        accuracy = 100 * np.array([m["final_test_accuracy"] for m in kept])
        mean, std = _parse_mean_std(row[3])
        assert mean == pytest.approx(loss.mean(), rel=1e-3)
        assert std == pytest.approx(loss.std(ddof=1), rel=1e-1)
        mean, std = _parse_mean_std(row[4])
        assert mean == pytest.approx(accuracy.mean(), abs=0.006)
        assert std == pytest.approx(accuracy.std(ddof=1), abs=0.006)
        diverged = len(cell) - len(kept)
        assert (f"({diverged}/{len(cell)} diverged)" in row[3]) == (diverged > 0)


def test_readme_headline_markers_are_parsed():
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    readme = f"intro\n{tables.HEADLINE_START}\n{table}{tables.HEADLINE_END}\nmore\n"
    assert tables.readme_headline(readme) == table
    assert tables.readme_headline("no markers here") is None


def test_readme_headline_equals_the_generated_file():
    readme = (ROOT / "README.md").read_text()
    block = tables.readme_headline(readme)
    generated = ROOT / "reports" / "default" / "headline.md"
    assert block is not None, "README.md lacks the <!-- headline:start/end --> markers"
    assert generated.is_file(), f"{generated} is missing: the default report is committed"
    assert block == generated.read_text(), "README headline differs from headline.md: make readme"


def test_probe_sentence_names_the_over_and_under_stepped_subsets(built):
    _, out, _ = built
    markdown = (out / "report.md").read_text()
    sentences = [line for line in markdown.splitlines() if line.startswith("Along **sgd**")]
    assert len(sentences) == len(LAYOUT)
    for sentence in sentences:
        under = re.search(r"under-steps \(median[^)]*\) (.*?);", sentence).group(1)
        over = re.search(r"over-steps \(median[^)]*\) (.*?);", sentence).group(1)
        right = re.search(r"about right \([^)]*\): (.*)\.$", sentence).group(1)
        found = {
            "under": re.findall(r"([\w.]+) \(", under),
            "over": re.findall(r"([\w.]+) \(", over),
            "right": right.split(", "),
        }
        expected = {
            kind: sorted(s for s, k in PROBE_EXPECTED_PATTERN.items() if k == kind)
            for kind in found
        }
        assert {kind: sorted(names) for kind, names in found.items()} == expected, sentence
    assert "**adam**: absent (no probe.csv in its runs)." in markdown
    assert "**kfac**: absent (not run on this problem)." in markdown


def test_missing_pieces_are_reported_as_absent(tmp_path, built):
    layout = {"digits_mlp": ("sgd", "adam"), "mnist1d_mlp": ("sgd", "adam")}
    _, out, _ = _build(tmp_path, layout=layout, diverged=(), probe_optimizers=())
    markdown = (out / "report.md").read_text()
    for problem in layout:
        part = markdown.split(f"## Problem `{problem}`", 1)[1].split("## Problem", 1)[0]
        assert "Absent: no run on this problem has `diag/eta/<subset>` history columns." in part
        assert "Absent: none of the ablation variants was run on this problem." in part
        assert "Absent: no probe.csv on this problem." in part
        assert not (out / "figures" / f"eta_{problem}.png").exists()
    _, full, _ = built  # every ablation variant of params but partitioned_newton_order2
    assert "Absent variants: partitioned_newton_order2." in (full / "report.md").read_text()
    assert (full / "figures" / "eta_digits_mlp.png").exists()


def test_all_seeds_diverged_is_shown_as_diverged(tmp_path):
    diverged = tuple(("digits_mlp", "adam", seed, 1, float("nan")) for seed in (0, 1))
    layout = {"digits_mlp": ("sgd", "adam")}
    results, out, _ = _build(tmp_path, layout=layout, seeds=(0, 1), diverged=diverged)
    headline = (out / "headline.md").read_text()
    assert "| digits_mlp | adam | 2 | diverged (2/2) | diverged (2/2) |" in headline
    summary = json.loads((results / "default" / "summary.json").read_text())
    assert summary["digits_mlp"]["adam"]["final_train_loss_mean"] is None
    assert summary["digits_mlp"]["adam"]["diverged_runs"] == 2


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_failing_report_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    results, out, _ = _build(tmp_path, layout={"digits_mlp": LAYOUT["digits_mlp"]})
    before = _files(out)

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "probe", broken)
    argv = ["--params", str(tmp_path / "params.yaml"), "--results", str(results)]
    with pytest.raises(RuntimeError, match="figure failed"):
        report.main([*argv, "--reports", str(out.parent)])
    assert _files(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["default"]  # no staging left


def test_report_without_summary_asks_for_the_aggregate_stage(tmp_path):
    written = write_results_tree(tmp_path / "results", seed=_seed(), seeds=(0,))
    with pytest.raises(UsageError, match="bench.aggregate"):
        reporting.write_report(tmp_path / "results", tmp_path / "reports", "default", written, ())
    assert not (tmp_path / "reports").exists()


def test_user_errors_exit_2_and_leave_the_report_as_it_was(tmp_path, capsys):
    results, out, _ = _build(tmp_path, layout={"digits_mlp": ("sgd", "adam")})
    before = _files(out)
    params = tmp_path / "params.yaml"
    argv = ["--params", str(params), "--results", str(results), "--reports", str(out.parent)]
    assert run(report.main, ["--profile", "paper", *argv]) == 2  # not params' profile
    assert "--profile 'paper' differs from profile 'default'" in capsys.readouterr().err
    layout = {"digits_mlp": ("sgd", "adam")}
    write_results_tree(results, seed=_seed(), layout=layout, seeds=(7,))
    write_params(params, layout=layout, seeds=(*SEEDS, 7))  # a params cell the summary lacks
    assert run(report.main, argv) == 2
    assert "does not list the runs of params' cells" in capsys.readouterr().err
    (results / "default" / "summary.csv").unlink()
    assert run(report.main, argv) == 2
    err = capsys.readouterr().err
    assert "summary.csv is missing" in err and "Traceback" not in err
    assert _files(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["default"]


def test_the_report_reads_only_the_cells_of_params(tmp_path, capsys):
    """Runs of no params cell (a removed optimizer section, a dropped seed) are not reported; a
    params cell without its run is a user error naming it, the previous report left in place."""
    layout = {"digits_mlp": ("sgd", "adam")}
    results, out, _ = _build(tmp_path, layout=layout, seeds=(0, 1), diverged=())
    params = write_params(tmp_path / "params.yaml", layout={"digits_mlp": ("sgd",)}, seeds=(1,))
    argv = ["--params", str(params), "--results", str(results), "--reports", str(out.parent)]
    assert aggregate.main(argv[:4]) == 0 and report.main(argv) == 0
    markdown = (out / "report.md").read_text()
    assert "1 runs; problems: digits_mlp; optimizers: sgd." in markdown
    assert "adam" not in (out / "headline.md").read_text()
    before = _files(out)
    write_params(params, layout={"digits_mlp": ("sgd", "cauchy")}, seeds=(1,))
    assert run(report.main, argv) == 2
    err = capsys.readouterr().err
    assert "digits_mlp/cauchy/1" in err and "Traceback" not in err
    assert _files(out) == before


def test_probe_sentences_follow_params_probe_optimizers(tmp_path):
    _, out, _ = _build(tmp_path, params_probe=("adam",), layout={"digits_mlp": ("sgd", "adam")})
    markdown = (out / "report.md").read_text()
    assert "**adam**: absent (no probe.csv in its runs)." in markdown
    assert "Along **sgd**" in markdown  # it has probe data, listed whatever params say
    assert "kfac" not in markdown


# ----------------------------------------------------------------------------- browser
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]
# Test-only probe injected into a copy of the page: after load, record each image's decoded width
# and every error event (resource or script) in the DOM, which --dump-dom then prints.
PROBE_SCRIPT = """<script>
var errors = [];
window.addEventListener("error", function (e) { errors.push(String(e.message || e.target.src)); },
                        true);
window.addEventListener("load", function () {
  document.querySelectorAll("img").forEach(function (img) {
    img.setAttribute("data-natural-width", img.naturalWidth); });
  document.body.setAttribute("data-errors", errors.length);
});
</script>"""


def _chromium(page: Path, profile_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _page_errors(stderr: str, page: Path) -> list[str]:
    """Console messages and error lines about the page (Chromium's dbus noise is not the page's)."""
    return [
        line
        for line in stderr.splitlines()
        if ":CONSOLE" in line or ("ERROR" in line and (page.name in line or "data:" in line))
    ]


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium)"
)
def test_index_html_renders_in_headless_chromium(built, tmp_path):
    _, out, _ = built
    page = tmp_path / "index.html"
    shutil.copy(out / "index.html", page)
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE_SCRIPT + "</body>"))

    dump = _chromium(probed, tmp_path / "profile-dom", "--dump-dom")
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dump.stdout)]
    assert len(widths) == 5 * len(LAYOUT) and all(w > 0 for w in widths), widths
    assert 'data-errors="0"' in dump.stdout
    assert _page_errors(dump.stderr, probed) == []

    shot = tmp_path / "shot.png"
    run = _chromium(
        page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,3000"
    )
    assert _page_errors(run.stderr, page) == []
    assert shot.stat().st_size > 0
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels.std() > 0.05  # not a blank page
    # figures are there: many distinct colours (text alone is greyscale)
    colourful = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max(axis=2) > 0.15
    assert colourful.mean() > 0.002


def _summary(cells: dict[tuple[str, str], list[tuple[float, float, float | None]]]):
    """(problem, optimizer) → per seed (diverged, loss_decreased, usable_solves or None)."""
    rows = []
    for (problem, optimizer), seeds in cells.items():
        for seed, (diverged, decreased, solves) in enumerate(seeds):
            values = {
                "diverged": diverged,
                "loss_decreased": decreased,
                "final_train_loss": 1.0 + seed,
                "final_test_accuracy": 0.5,
            }
            if solves is not None:
                values["usable_solves"] = solves
            rows += [(problem, optimizer, seed, k, float(v)) for k, v in values.items()]
    return pd.DataFrame(rows, columns=["problem", "optimizer", "seed", "metric", "value"])


def test_headline_marks_cells_that_did_not_train_and_says_why():
    summary = _summary(
        {
            ("p", "sgd"): [(0, 1, None), (0, 1, None)],
            ("p", "newton2"): [(0, 0, 0), (0, 0, 0)],  # never solved: weights never moved
            ("p", "stuck"): [(0, 0, None), (0, 0, None)],  # did not train, no solver counts
            ("p", "half"): [(0, 1, 3), (0, 0, 0)],  # one seed trained: not marked
            ("p", "boom"): [(1, 0, None), (1, 0, None)],  # diverged, reported as such
        }
    )
    assert tables.stalled_cells(summary) == {("p", "newton2"), ("p", "stuck")}
    table = tables.headline_table(summary)
    assert "| p | newton2 (did not train) |" in table and "| p | stuck (did not train) |" in table
    assert "| p | half |" in table and "| p | boom |" in table and "| p | sgd |" in table
    note = table.strip().splitlines()[-1]
    assert note.startswith("(did not train)") and "For newton2, no curvature" in note
    assert "stuck" not in note
    clean = _summary({("p", "sgd"): [(0, 1, None), (0, 1, None)]})
    assert "did not train" not in tables.headline_table(clean)


def test_provenance_summarises_per_cell_params_hashes(built):
    _, out, _ = built
    markdown = (out / "report.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| params_hash |"))
    assert "distinct values: each run hashes its own cell" in row or row.count("(") == 0
    assert row.count(" runs)") == 0  # never one entry per run


def test_markdown_figure_links_resolve_inside_the_report_directory(built):
    _, out, _ = built
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    assert links and all(link.startswith("figures/") for link in links), links
    for link in links:
        assert (out / link).read_bytes().startswith(PNG_MAGIC), link


def test_dvc_plots_show_renders_the_committed_figures_offline(tmp_path):
    """`dvc plots show` with the committed template: every figure, no URL to fetch."""
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run(
        [str(dvc), "plots", "show", "-o", str(tmp_path / "plots")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "plots" / "index.html").read_text()
    figures = sorted((ROOT / "reports" / "default" / "figures").glob("*.png"))
    assert figures and page.count("<img") == len(figures)
    assert not re.search(r"""(src|href)=["']?https?://""", page), "the page fetches from the web"
    assert "failed" not in result.stderr.lower(), result.stderr


def test_figures_are_deterministic_palette_pngs(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    rng = np.random.default_rng()
    figure, axes = plt.subplots()
    axes.plot(rng.normal(size=50))
    paths = [figures.save_png(figure, tmp_path / f"{i}.png") for i in range(2)]
    plt.close(figure)
    assert paths[0].read_bytes() == paths[1].read_bytes()  # same figure, same bytes
    with Image.open(paths[0]) as image:
        assert image.format == "PNG" and image.mode == "P"
