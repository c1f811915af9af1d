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
    GRID_DIVERGED,
    GRID_LAYOUT,
    GRID_LM,
    GRID_PROBLEMS,
    GRID_SEEDS,
    GRID_SHAPE,
    LAYOUT,
    LM_PROBLEM,
    MIXED_LAYOUT,
    PROBE_EXPECTED_PATTERN,
    SEEDS,
    expected_edges,
    register_lm_problem,
    tune_record,
    write_params,
    write_results_tree,
    write_study_files,
    write_tune_files,
)

from bench import aggregate, report
from bench.cli import run
from bench.errors import UsageError
from bench.reporting import document, figures, tables, tuning
from bench.reporting import report as reporting

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KINDS = ("loss", "accuracy", "eta", "ablation", "probe")  # the figures of each fixture problem
FIGURE_COUNT = len(KINDS) * len(LAYOUT) + 1  # and the performance profile


def _seed() -> int:
    value = int(os.environ.get("HOBENCH_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"fixture noise seed: replay with HOBENCH_SEED={value}")
    return value


PARAMS_PROBE = ("sgd", "adam", "kfac")  # params' train.probe.optimizers in these reports


def _build(
    root: Path, params_probe=PARAMS_PROBE, tune=True, studies=False, **tree
) -> tuple[Path, Path, dict]:
    results, reports = root / "results", root / "reports"
    written = write_results_tree(results, seed=_seed(), **tree)
    cells = {"layout": tree.get("layout", LAYOUT), "seeds": tree.get("seeds", SEEDS)}
    if tune:
        write_tune_files(results, layout=cells["layout"])
    if studies:
        write_study_files(results, layout=cells["layout"])
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
        for kind in KINDS:
            assert (out / "figures" / f"{kind}_{problem}.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "figures" / "performance_profile.png").read_bytes().startswith(PNG_MAGIC)
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
    assert len(sources) == len(re.findall(r"<img ", page)) == FIGURE_COUNT
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert re.findall(r"src=\"([^\"]*)\"", page) == sources  # no other sourced element


def _parse_mean_std(cell: str) -> tuple[float, float]:
    match = re.match(r"\**([-0-9.e+]+) ± ([-0-9.e+]+)", cell)
    assert match, cell
    return float(match.group(1)), float(match.group(2))


def _headline_rows(table: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return split[0], split[2:]


def test_headline_table_is_the_generated_file_and_has_the_right_numbers(built):
    results, out, written = built
    summary = pd.read_csv(results / "default" / "summary.csv")
    ranking = (out / "headline.md").read_text().strip().splitlines()[-1]
    assert ranking.startswith("Time to target, performance profile over 2 problems")
    table = tables.headline_table(summary, ranking)
    assert (out / "headline.md").read_text() == table
    header, rows = _headline_rows(table)
    assert header[:2] == ["optimizer", "mean rank"] and header[-1] == "marks"
    assert len(rows) == len({o for _, o, _ in written})
    for row in rows:
        optimizer = row[0]
        for problem in LAYOUT:
            cell = [m for (p, o, _), m in written.items() if p == problem and o == optimizer]
            kept = [m for m in cell if not m["diverged"]]
            loss = np.array([m["final_train_loss"] for m in kept])
            accuracy = 100 * np.array([m["final_test_accuracy"] for m in kept])
            mean, std = _parse_mean_std(row[header.index(f"{problem} loss")])
            assert mean == pytest.approx(loss.mean(), rel=1e-3)
            assert std == pytest.approx(loss.std(ddof=1), rel=1e-1)
            mean, std = _parse_mean_std(row[header.index(f"{problem} acc. (%)")])
            assert mean == pytest.approx(accuracy.mean(), abs=0.006)
            assert std == pytest.approx(accuracy.std(ddof=1), abs=0.006)
            diverged = len(cell) - len(kept)
            mark = f"(diverged {diverged}/{len(cell)})"
            assert (mark in row[-1] and problem in row[-1]) == (diverged > 0), row
    ranks = [float(row[1]) for row in rows]
    assert ranks == sorted(ranks)  # ordered by mean rank


def test_headline_ranks_marks_and_bolds_the_best_of_each_column():
    summary = _summary(
        {
            ("p", "sgd"): [(0, 1, None, 0.5, 0.9), (0, 1, None, 0.7, 0.7)],
            ("p", "adam"): [(0, 1, None, 0.2, 0.6), (0, 1, None, 0.4, 0.6)],
            ("q", "sgd"): [(0, 1, None, 0.1, 0.5), (0, 1, None, 0.1, 0.5)],
            ("q", "adam"): [(1, 0, None, 9.0, 0.1), (0, 1, None, 0.3, 0.4)],
        }
    )
    header, rows = _headline_rows(tables.headline_table(summary))
    # adam: rank 1 on p, 2 on q → 1.5; sgd: 2 on p, 1 on q → 1.5; ties by name
    assert [(r[0], r[1]) for r in rows] == [("adam", "1.5"), ("sgd", "1.5")]
    adam, sgd = rows
    assert adam[header.index("p loss")].startswith("**0.3 ±")
    assert sgd[header.index("p acc. (%)")].startswith("**80.00 ±")
    assert sgd[header.index("q loss")].startswith("**0.1 ±")
    assert adam[header.index("q loss")] == "0.3 (n=1)" and adam[-1] == "(diverged 1/2) q"
    assert sgd[-1] == ""


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
    assert "kfac" not in markdown  # a probe optimizer of params that was not run: no row


def test_sections_only_for_what_ran(tmp_path, built):
    """No η, ablation, probe, comparison, tuning or study section without its data; the intro
    names the studies left out; the contents list only the sections there."""
    layout = {"digits_mlp": ("sgd", "adam"), "mnist1d_mlp": ("sgd", "adam")}
    _, out, _ = _build(tmp_path, tune=False, layout=layout, diverged=(), probe_optimizers=())
    markdown = (out / "report.md").read_text()
    for absent in ("η_s of our", "Ablations", "probe η*", "Ours against", "Tuning", "Absent",
                   "## Reparameterization invariance", "## Timing"):  # fmt: skip
        assert absent not in markdown, absent
    assert "Not in this report (no results yet): invariance" in markdown
    for problem in layout:
        assert not (out / "figures" / f"eta_{problem}.png").exists()
        assert not (out / "figures" / f"ablation_{problem}.png").exists()
    _, full, _ = built
    text = (full / "report.md").read_text()
    assert "partitioned_newton_order2" not in text and "Absent" not in text
    assert (full / "figures" / "eta_digits_mlp.png").exists()
    assert "### Ablations: ours and its variants" in text and "## Tuning" in text


def test_ablation_section_needs_a_variant(tmp_path):
    layout = {"digits_mlp": ("sgd", "partitioned_newton")}
    _, out, _ = _build(tmp_path, layout=layout, diverged=())
    markdown = (out / "report.md").read_text()
    assert "Ablations" not in markdown and "η_s of our optimizers" in markdown
    assert "| partitioned_newton − sgd |" in markdown


def test_all_seeds_diverged_is_shown_as_diverged(tmp_path):
    diverged = tuple(("digits_mlp", "adam", seed, 1, float("nan")) for seed in (0, 1))
    layout = {"digits_mlp": ("sgd", "adam")}
    results, out, _ = _build(tmp_path, layout=layout, seeds=(0, 1), diverged=diverged)
    headline = (out / "headline.md").read_text()
    assert "| adam | 2.0 | — | — | (diverged 2/2) digits_mlp |" in headline
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

    monkeypatch.setattr(figures, "save_png", broken)
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
  var links = document.querySelectorAll('a[href^="#"]'), broken = 0;
  links.forEach(function (a) {
    if (!document.getElementById(decodeURIComponent(a.getAttribute("href").slice(1)))) {
      broken += 1; } });
  document.body.setAttribute("data-links", links.length);
  document.body.setAttribute("data-broken-links", broken);
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
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="/usr/bin/chromium is absent (apt-get install chromium); in CI it must be there",
)
@pytest.mark.parametrize("report_tree", ["built", "grid"])
def test_index_html_renders_in_headless_chromium(report_tree, request, tmp_path):
    """Every figure decodes (naturalWidth > 0), every contents link reaches an element id, no
    error event, and the screenshot shows a page with figures: the MLP fixture's report and
    the default grid's (CNNs, a transformer, both studies)."""
    _, out, _ = request.getfixturevalue(report_tree)
    figure_count = len(list((out / "figures").glob("*.png")))
    assert report_tree != "built" or figure_count == FIGURE_COUNT
    page = tmp_path / "index.html"
    shutil.copy(out / "index.html", page)
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE_SCRIPT + "</body>"))

    dump = _chromium(probed, tmp_path / "profile-dom", "--dump-dom")
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dump.stdout)]
    assert len(widths) == figure_count and all(w > 0 for w in widths), widths
    links = int(re.search(r'data-links="(\d+)"', dump.stdout).group(1))
    assert links == len(re.findall(r'<a href="#', page.read_text())) > 10
    assert 'data-broken-links="0"' in dump.stdout
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


def _summary(cells: dict[tuple[str, str], list[tuple]]) -> pd.DataFrame:
    """(problem, optimizer) → per seed (diverged, loss_decreased, usable_solves or None[, final
    loss, final accuracy])."""
    rows = []
    for (problem, optimizer), seeds in cells.items():
        for seed, (diverged, decreased, solves, *finals) in enumerate(seeds):
            loss, accuracy = finals or (1.0 + seed, 0.5)
            values = {
                "diverged": diverged,
                "loss_decreased": decreased,
                "final_train_loss": loss,
                "final_test_accuracy": accuracy,
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
    _, rows = _headline_rows(table)
    marks = {row[0]: row[-1] for row in rows}
    assert marks == {"sgd": "", "half": "", "newton2": "(did not train) p",
                     "stuck": "(did not train) p", "boom": "(diverged 2/2) p"}  # fmt: skip
    assert [row[0] for row in rows][-3:] == ["boom", "newton2", "stuck"]  # ranked last
    note = next(line for line in table.splitlines() if line.startswith("(did not train)"))
    assert "For newton2, no curvature" in note and "stuck" not in note
    clean = _summary({("p", "sgd"): [(0, 1, None), (0, 1, None)]})
    assert "(did not train)" not in tables.headline_table(clean)


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
    assert figures and page.count("<img") == len(figures)  # the default pipeline declares them
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


def test_contents_links_resolve_in_html_and_markdown(built):
    _, out, _ = built
    page = (out / "index.html").read_text()
    ids = re.findall(r'<h[1-6] id="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # unique anchors
    links = re.findall(r'<a href="#([^"]+)"', page)
    assert links and set(links) <= set(ids)
    assert len(links) == len([i for i in ids if i != "contents"]) - 1  # all but the title
    markdown = (out / "report.md").read_text()
    md_links = re.findall(r"^\s*- \[[^\]]*\]\(#([^)]+)\)$", markdown, re.M)
    assert md_links == links
    headings = [line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("#")]
    slugs = [b.anchor for b in document.anchored([document.Heading(2, h) for h in headings])]
    assert set(md_links) <= set(slugs)
    assert "problem-digits_mlp" in links and "final-metrics-1" in links  # repeated: -1


def test_slug_follows_githubs_rule():
    assert document.slug("Problem `digits_mlp`") == "problem-digits_mlp"
    assert document.slug("Ours against the baselines (paired)") == (
        "ours-against-the-baselines-paired"
    )
    assert document.slug("Learning-rate probe η*_s = x") == "learning-rate-probe-η_s--x"


def test_comparisons_are_in_the_report_with_the_rule(built):
    _, out, _ = built
    markdown = (out / "report.md").read_text()
    part = markdown.split("## Problem `digits_mlp`", 1)[1].split("## Problem", 1)[0]
    assert "paired by seed" in part and "Student t" in part
    rows = [line for line in part.splitlines() if re.match(r"\| \w+ − \w+ \|", line)]
    ours = ("partitioned_newton", "partitioned_newton_diag", "cauchy")
    assert len(rows) == len(ours) * 2  # against sgd and adam
    adam = next(row for row in rows if row.startswith("| partitioned_newton − adam |"))
    assert "| 2 (1 dropped) |" in adam  # adam diverged on seed 1 of digits_mlp
    pattern = r"−?[0-9.e+-]+ \[−?[0-9.e+-]+, −?[0-9.e+-]+\], (lower|higher|no clear difference)"
    assert len(re.findall(pattern, adam)) == 2, adam


def test_time_to_target_and_profile_sections(built):
    _, out, _ = built
    markdown = (out / "report.md").read_text()
    sentences = re.findall(
        r"^Training-loss target [0-9.e+-]+ \(rule: the median, over", markdown, re.M
    )
    assert len(sentences) == len(LAYOUT)
    part = markdown.split("## Performance profile across problems", 1)[1].split("\n## ", 1)[0]
    assert "| optimizer | score | ρ(1) | ρ(2) | ρ(4) | ρ(8) | ρ(16) |" in part
    assert "figures/performance_profile.png" in part
    headline = (out / "headline.md").read_text()
    assert "Time to target, performance profile over 2 problems" in headline
    assert "seconds" not in headline  # they change every run: not in the generated headline


def test_tuning_section_lists_the_choices_at_an_edge(built):
    _, out, _ = built
    markdown = (out / "report.md").read_text()
    part = markdown.split("## Tuning: choices at an edge of their grid", 1)[1].split("\n## ", 1)[0]
    rows = {
        tuple(c.strip() for c in line.strip("|").split("|")[:3])
        for line in part.splitlines()
        if line.startswith("| ") and not line.startswith(("| problem", "| ---"))
    }
    assert rows == expected_edges()
    cells = {(p, o) for p, o, _ in expected_edges()}
    total = sum(len(o) for o in LAYOUT.values())
    assert f"{len(cells)} of {total} tune cells" in part


def test_at_edge_is_computed_when_the_file_lacks_it():
    for with_key in (True, False):
        record = tune_record("p", "kfac", with_key)  # lr inside its grid, damping at the low end
        assert tuning.at_edge(record) == ["damping"]
        (edge,) = tuning.edges(record)
        assert (edge.hyperparameter, edge.chosen, edge.side) == ("damping", 0.03, "smallest")
    record = tune_record("p", "adam", with_key=False)
    assert [e.side for e in tuning.edges(record)] == ["largest"]
    assert tuning.edges(tune_record("p", "sgd", with_key=False)) == []


def test_subset_tick_labels_are_short_and_distinct():
    assert figures.short_subset("3.weight") == "3.w" and figures.short_subset("0.bias") == "0.b"
    # a per-module subset reads as its module, a block as the path its tensors share
    assert figures.subset_label("blocks.1.ln1.weight+blocks.1.ln1.bias") == "blocks.1.ln1"
    assert figures.subset_label("blocks.0.ln1.weight+blocks.0.attn.qkv.bias") == "blocks.0"
    assert figures.subset_label("1.weight+1.bias+3.weight") == "1.w…3.w (3)"  # nothing shared
    qkv = figures.short_subset("blocks.0.attn.qkv.weight+blocks.0.attn.qkv.bias")
    assert qkv == "…0.attn.qkv"  # whole components dropped from the left
    long = figures.short_subset("encoder.layers.11.attention.query.weight")
    assert long == "…query.w" and len(long) <= figures.LABEL_WIDTH
    odd = figures.short_subset("averyveryverylongcomponentname.weight")
    assert odd.startswith("…") and odd.endswith("name.w") and len(odd) == figures.LABEL_WIDTH
    names = ["a.b.c.d.e.f.x.weight", "a.b.c.d.e.g.x.weight", "head.weight"]
    labels = figures.tick_labels(names)
    assert len(set(labels)) == 3 and labels[2] == "head.w"


def test_a_language_models_sections_use_its_perplexity_lower_is_better(tmp_path, monkeypatch):
    """A classifier and a language model in one report: each problem's tables, figure,
    comparisons and headline column show its own metric, the best by its own direction."""
    register_lm_problem(monkeypatch)
    results, out, written = _build(tmp_path, layout=MIXED_LAYOUT, diverged=())
    markdown = (out / "report.md").read_text()
    assert (out / "figures" / f"perplexity_{LM_PROBLEM}.png").read_bytes().startswith(PNG_MAGIC)
    assert not (out / "figures" / f"accuracy_{LM_PROBLEM}.png").exists()
    assert (out / "figures" / "accuracy_digits_mlp.png").is_file()
    assert not (out / "figures" / "perplexity_digits_mlp.png").exists()
    lm_section = markdown.split(f"## Problem `{LM_PROBLEM}`")[1].split("\n## ")[0]
    classifier = markdown.split("## Problem `digits_mlp`")[1].split("\n## ")[0]
    assert "### Test perplexity" in lm_section and "accuracy" not in lm_section
    assert "### Test accuracy" in classifier and "perplexity" not in classifier
    assert "the final test perplexity (lower is better)" in lm_section
    assert "the final test accuracy (higher is better)" in classifier
    header = next(line for line in lm_section.splitlines() if line.startswith("| optimizer |"))
    assert header.split(" | ")[3:9] == [
        "final training loss", "95% interval", "final test loss", "test perplexity",
        "95% interval (perplexity)", "best test perplexity",
    ]  # fmt: skip
    assert "| test perplexity [95% interval] |" in lm_section
    # the headline: the language model's column holds mean ± std of the final perplexity, its
    # lowest mean in bold; the classifier's its accuracy (%), the highest in bold
    header, rows = _headline_rows((out / "headline.md").read_text())
    column = {"digits_mlp": "digits_mlp acc. (%)", LM_PROBLEM: f"{LM_PROBLEM} ppl."}
    for problem, metric, pick, scale in (
        (LM_PROBLEM, "final_test_perplexity", min, 1.0),
        ("digits_mlp", "final_test_accuracy", max, 100.0),
    ):
        means = {}
        for row in rows:
            values = scale * np.array(
                [m[metric] for (p, o, _), m in written.items() if p == problem and o == row[0]]
            )
            mean, _ = _parse_mean_std(row[header.index(column[problem])])
            assert mean == pytest.approx(values.mean(), rel=1e-3, abs=0.006)
            means[row[0]] = values.mean()
        bold = [row[0] for row in rows if row[header.index(column[problem])].startswith("**")]
        assert bold == [pick(means, key=means.get)]
    assert "highest test accuracy, lowest test perplexity" in (out / "headline.md").read_text()


# ----------------------------------------------------------------------------- the default grid
GRID_PROBES = PARAMS_PROBE  # probe.csv written for these (the default grid runs none: ablations)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The default grid of issue 12 (fixtures_results.GRID_*): an MLP, LeNet-5, a BatchNorm CNN
    and a character-level transformer (perplexity), sgd / adam / kfac / ours, five seeds, the
    tune files and both studies, ours losing on the transformer and on one CNN's loss."""
    return _build(
        tmp_path_factory.mktemp("grid"), studies=True, layout=GRID_LAYOUT, seeds=GRID_SEEDS,
        diverged=GRID_DIVERGED, probe_optimizers=GRID_PROBES, shape=GRID_SHAPE,
    )  # fmt: skip


def _section(markdown: str, problem: str) -> str:
    return markdown.split(f"## Problem `{problem}`", 1)[1].split("\n## ", 1)[0]


def _kept(written: dict, problem: str, optimizer: str, key: str) -> np.ndarray:
    """The values of ``key`` over the non-diverged seeds of one cell, from the files written."""
    return np.array(
        [m[key] for (p, o, _), m in written.items() if (p, o) == (problem, optimizer)
         and not m["diverged"]]
    )  # fmt: skip


def test_grid_tables_and_figures_use_each_problems_own_metric(grid):
    _, out, _ = grid
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Problem `digits_mlp`") < markdown.index("## Problem `mnist5k_lenet5`")
    assert markdown.index("## Problem `mnist5k_bnresnet`") < markdown.index(
        f"## Problem `{GRID_LM}`"
    )
    for problem in GRID_PROBLEMS:
        section = _section(markdown, problem)
        own, other = (
            ("perplexity", "accuracy") if problem == GRID_LM else ("accuracy", "perplexity")
        )
        assert other not in section, (problem, other)
        assert f"### Test {own}" in section and f"| test {own}" in section
        assert (out / "figures" / f"{own}_{problem}.png").read_bytes().startswith(PNG_MAGIC)
        assert not (out / "figures" / f"{other}_{problem}.png").exists()
        direction = "lower" if own == "perplexity" else "higher"
        assert f"the final test {own} ({direction} is better)" in section
    header, _ = _headline_rows((out / "headline.md").read_text())
    assert header[2:-1] == [
        "digits_mlp loss",
        "digits_mlp acc. (%)",
        "mnist5k_lenet5 loss",
        "mnist5k_lenet5 acc. (%)",
        "mnist5k_bnresnet loss",
        "mnist5k_bnresnet acc. (%)",
        f"{GRID_LM} loss",
        f"{GRID_LM} ppl.",
    ]  # fmt: skip  (params' order)


def _verdict(headline: str, problem: str) -> str:
    (line,) = [line for line in headline.splitlines() if line.startswith(f"- `{problem}` (")]
    return line


def test_grid_headline_names_each_problems_winners_with_their_seeds(grid):
    """The winners on each problem's metric (by its direction) and on training loss, computed
    here from the files written, with the number of seeds behind each mean."""
    _, out, written = grid
    headline = (out / "headline.md").read_text()
    for problem in GRID_PROBLEMS:
        line = _verdict(headline, problem)
        metric, higher = ("perplexity", False) if problem == GRID_LM else ("accuracy", True)
        for key, name, pick in ((f"final_test_{metric}", f"test {metric}", max if higher else min),
                                ("final_train_loss", "training loss", min)):  # fmt: skip
            means = {o: _kept(written, problem, o, key).mean() for o in GRID_LAYOUT[problem]}
            winner = pick(means, key=means.get)
            kept = len(_kept(written, problem, winner, key))
            seeds = f"over {kept} seeds" if kept == len(GRID_SEEDS) else (
                f"over {kept} of {len(GRID_SEEDS)} seeds ({len(GRID_SEEDS) - kept} diverged)"
            )  # fmt: skip
            word = "highest" if pick is max else "lowest"
            assert re.search(
                rf"{word} {name}: \*\*{winner}\*\*, [0-9.]+ ± [0-9.]+ (% )?{re.escape(seeds)}", line
            ), (line, winner, seeds)


def test_grid_headline_says_plainly_where_ours_loses(grid):
    """Ours (partitioned_newton) wins both on the MLP, loses both to Adam on the transformer and
    the training loss to K-FAC on the BatchNorm CNN; the paired difference and its interval are
    those of the per-seed differences of the files written (Student t)."""
    from scipy import stats

    _, out, written = grid
    headline = (out / "headline.md").read_text()
    assert _verdict(headline, "digits_mlp").endswith("Ours (`partitioned_newton`): best on both.")
    cnn = _verdict(headline, "mnist5k_bnresnet")
    assert "Ours (`partitioned_newton`, 1 of 5 seeds diverged): test accuracy: best; " in cnn
    assert "training loss: 2nd of 4, loses to kfac, " in cnn and "4 seed pairs" in cnn
    line = _verdict(headline, GRID_LM)
    assert "test perplexity: 4th of 4, loses to adam, " in line
    assert "training loss: 4th of 4, loses to adam, " in line
    assert "also loses to kfac, sgd (their paired intervals exclude 0)" in line
    ours, adam = (
        _kept(written, GRID_LM, o, "final_test_perplexity") for o in ("partitioned_newton", "adam")
    )
    d = ours - adam  # no seed diverged on the transformer: every seed pairs
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    found = re.search(
        r"test perplexity: 4th of 4, loses to adam, ([0-9.]+) higher \(paired 95% interval "
        r"\[([0-9.]+), ([0-9.]+)\], 5 seed pairs\)", line
    )  # fmt: skip
    assert found, line
    assert [float(v) for v in found.groups()] == pytest.approx(
        [d.mean(), d.mean() - half, d.mean() + half],
        rel=5e-3,  # 3 significant digits
    )
    assert "Per problem, on its own metric and on the training loss" in headline
    report = (out / "report.md").read_text().split("## Problem", 1)[0]
    assert line in report  # the report's headline section has the same lines


def test_grid_report_without_variants_has_no_ablation_and_no_empty_table(grid):
    """The ablation figure and table need a variant of ours: none in the default grid; the probe,
    invariance, tuning and timing sections are there with the four optimizers; every table of
    the report has at least one row."""
    _, out, _ = grid
    markdown = (out / "report.md").read_text()
    assert "Ablations" not in markdown and "partitioned_newton_diag" not in markdown
    assert not list((out / "figures").glob("ablation_*.png"))
    for heading in ("## Reparameterization invariance", "## Timing", "## Tuning", "## Performance"):
        assert heading in markdown, heading
    assert "Not in this report" not in markdown
    invariance = markdown.split("## Reparameterization invariance", 1)[1].split("\n## ", 1)[0]
    assert "| kfac |" in invariance and "not exercised" in invariance
    assert f"per_tensor: digits_mlp, mnist5k_lenet5, mnist5k_bnresnet; per_module: {GRID_LM}" in (
        invariance
    )  # the partition the maps are constant on
    assert (
        "| mnist5k_bnresnet | 1.0e-16 | 2.0e-16 | 1.0e-16 | 4.0e-16 | newton | 0.bias, "
        in (invariance)
        and "| digits_mlp | 1.0e-16 | 2.0e-16 | 1.0e-16 | 4.0e-16 | newton | none |" in invariance
    )
    columns = next(line for line in invariance.splitlines() if line.startswith("| optimizer"))
    assert columns == "| optimizer | " + " | ".join(GRID_PROBLEMS) + " |"  # params' order
    tuning_part = markdown.split("## Tuning", 1)[1].split("\n## ", 1)[0]
    rows = {
        tuple(c.strip() for c in line.strip("|").split("|")[:3])
        for line in tuning_part.splitlines()
        if line.startswith("| ") and not line.startswith(("| problem", "| ---"))
    }
    assert rows == expected_edges(GRID_LAYOUT)  # valid_perplexity is no hyperparameter
    assert markdown.count("Along **kfac**") == len(GRID_PROBLEMS)
    tables_md = re.findall(r"((?:^\|.*\|\n)+)", markdown, re.M)
    assert tables_md and all(t.count("\n") >= 3 for t in tables_md)  # header, rule, ≥ 1 row
    for problem in GRID_PROBLEMS:
        assert (out / "figures" / f"eta_{problem}.png").is_file()
        assert (out / "figures" / f"probe_{problem}.png").is_file()


def test_grid_report_says_what_kfac_preconditions_next_to_its_results(grid, built):
    """Per problem, in the final-metrics section: the count of K-FAC's preconditioned tensors
    out of the model's trainable ones (counted here on the registered model), none left to
    plain SGD on these four models; no such sentence where K-FAC did not run."""
    from bench.problems import get_problem

    _, out, _ = grid
    markdown = (out / "report.md").read_text()
    for problem in GRID_PROBLEMS:
        final = _section(markdown, problem).split("### Final metrics", 1)[1].split("\n### ", 1)[0]
        tensors = sum(1 for p in get_problem(problem).make_model(0).parameters() if p.requires_grad)
        sentence = f"K-FAC preconditions {tensors} of {tensors} parameter tensors of `{problem}`"
        assert sentence in final, final
        assert "none takes plain momentum-SGD steps" in final
    types = {"mnist5k_bnresnet": "BatchNorm2d", GRID_LM: "LayerNorm"}
    for problem, norm in types.items():
        assert f"one 2×2 block per unit for {norm}" in _section(markdown, problem)
    assert "Kronecker factors for Embedding, Linear" in _section(markdown, GRID_LM)
    probe = _section(markdown, GRID_LM).split("Along **sgd**", 1)[1].split("\n", 1)[0]
    assert "blocks.0.attn.qkv (" in probe and "+" not in probe  # a module, not its tensors
    assert "K-FAC preconditions" not in (built[1] / "report.md").read_text()  # no kfac run


def test_coverage_sentence_names_what_takes_plain_sgd_steps():
    from bench.reporting import coverage
    from optimizers.baselines import KfacCoverage

    found = KfacCoverage(
        kronecker=("head.weight", "head.bias"), unit_wise=("norm.weight",),
        plain=("scale", "conv.weight"),
        module_types={"scale": "Net", "conv.weight": "Conv1d", "norm.weight": "LayerNorm",
                      "head.weight": "Linear", "head.bias": "Linear"},
        sizes={"scale": 4, "conv.weight": 36, "norm.weight": 4, "head.weight": 50, "head.bias": 6},
    )  # fmt: skip
    sentence = coverage.coverage_sentence("p", found)
    assert sentence.startswith("K-FAC preconditions 3 of 5 parameter tensors of `p` (60.0% of")
    assert "Kronecker factors for Linear (2 tensors)" in sentence
    assert "one 2×2 block per unit for LayerNorm (1 tensor)" in sentence
    assert (
        "the 2 tensors of Net, Conv1d (`scale`, `conv.weight`) take plain momentum-SGD" in sentence
    )
    assert "unknown" in coverage.coverage_sentence("p", None)


def test_grid_headline_goes_into_the_readme_as_it_is(grid, tmp_path):
    """`make readme` copies the grid's headline (table, verdict list, ranking) between the
    markers unchanged, and --check then passes."""
    from bench.reporting import readme as sync

    _, out, _ = grid
    for name in ("results/derivative_cost.json", "results/step_cost.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "reports" / "default").mkdir(parents=True)
    shutil.copy(out / "headline.md", tmp_path / "reports" / "default" / "headline.md")
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    assert sync.main(["--readme", str(readme)]) == 0
    assert tables.readme_headline(readme.read_text()) == (out / "headline.md").read_text()
    assert sync.main(["--check", "--readme", str(readme)]) == 0


def test_verdicts_say_within_noise_diverged_did_not_train_and_no_interval():
    """The branches the grid fixture does not reach: ours behind within noise (and the winner's
    runner-up within noise), ours diverged on every seed, ours did not train, one seed pair."""
    from bench.reporting import verdicts

    ours = "partitioned_newton"
    summary = _summary(
        {
            ("p", "sgd"): [(0, 1, None, 0.50, 0.90), (0, 1, None, 0.60, 0.80),
                           (0, 1, None, 0.55, 0.85)],
            ("p", ours): [(0, 1, None, 0.52, 0.86), (0, 1, None, 0.58, 0.84),
                          (0, 1, None, 0.56, 0.83)],
            ("q", "sgd"): [(0, 1, None, 0.5, 0.9), (0, 1, None, 0.6, 0.8)],
            ("q", ours): [(1, 0, None, float("nan"), 0.1), (1, 0, None, float("nan"), 0.1)],
            ("r", "sgd"): [(0, 1, None, 0.5, 0.9), (0, 1, None, 0.6, 0.8)],
            ("r", ours): [(0, 0, 0, 2.3, 0.1), (0, 0, 0, 2.3, 0.1)],
        }
    )  # fmt: skip
    p, q, r = verdicts.verdict_lines(summary)
    assert "highest test accuracy: **sgd**, 85.00 ± 5.00 % over 3 seeds" in p
    assert f"({ours} within noise: paired 95% interval [" in p  # the runner-up
    assert (
        "test accuracy: 2nd of 2, behind sgd within noise, 0.67 points lower (paired 95% interval ["
        in p
    )
    assert "training loss: 2nd of 2, behind sgd within noise, 0.00333 higher (paired" in p
    assert q.endswith(f"Ours (`{ours}`) diverged on every seed (2/2).")
    assert r.endswith(
        f"Ours (`{ours}`) did not train (no non-diverged run lowered its training loss)."
    )
    assert "lowest training loss: **sgd**" in r  # the cell that did not train is no winner

    def trained(*finals):  # (final loss, final accuracy) per seed, none diverged
        return [(0, 1, None, loss, accuracy) for loss, accuracy in finals]

    beaten = _summary(
        {
            ("t", "sgd"): trained((0.5, 0.95), (0.6, 0.75), (0.55, 0.85)),
            ("t", ours): trained((0.52, 0.80), (0.58, 0.80), (0.56, 0.81)),
            ("t", "adam"): trained((0.6, 0.82), (0.7, 0.82), (0.65, 0.83)),
        }
    )
    (line,) = verdicts.verdict_lines(beaten)
    assert "test accuracy: 3rd of 3, behind sgd within noise, " in line  # of the winner, but
    assert "; also loses to adam (its paired interval excludes 0); training loss: 2nd of 3" in line
    single = _summary(
        {("s", "sgd"): [(0, 1, None, 0.3, 0.9)], ("s", ours): [(0, 1, None, 0.4, 0.8)]}
    )
    (line,) = verdicts.verdict_lines(single)
    assert (
        "**sgd**, 90.00 % (n=1) over 1 seed;" in line
        and "training loss: 2nd of 2, behind sgd, 0.100 higher (1 seed pair: no interval)" in line
    )


def test_invariance_section_names_the_problems_without_a_record(tmp_path):
    from bench.reporting import invariance_section

    write_study_files(tmp_path, layout={"digits_mlp": ("sgd", "partitioned_newton")})
    figures_dir = tmp_path / "figures"
    figures_dir.mkdir()
    found = invariance_section.section(tmp_path, "default", figures_dir, ("digits_mlp", GRID_LM))
    text = document.Document("t", [found]).markdown()
    assert f"No invariance record yet for `{GRID_LM}` (`dvc repro invariance`)." in text
    assert "| optimizer | digits_mlp |" in text
    whole = invariance_section.section(tmp_path, "default", figures_dir, ("digits_mlp",))
    assert "No invariance record" not in document.Document("t", [whole]).markdown()
