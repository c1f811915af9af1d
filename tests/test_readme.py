"""The README's numbers are generated: its blocks must equal what the commands render."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import run
from bench.errors import UsageError
from bench.reporting import readme as sync
from bench.studies.derivative_cost import readme_block

ROOT = Path(__file__).resolve().parents[1]


def _between(text: str, name: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    assert start in text and end in text, f"README.md lacks the {name} markers"
    return text[text.index(start) + len(start) : text.index(end)].strip()


def test_derivative_cost_table_is_the_rendered_result():
    readme = (ROOT / "README.md").read_text()
    result = json.loads((ROOT / "results" / "derivative_cost.json").read_text())
    assert _between(readme, "derivative-cost") == readme_block(result).strip()


def test_readme_names_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make repro" in readme and "make test" in readme


SOURCES = ("reports/default/headline.md", "results/derivative_cost.json", "results/step_cost.json")


def _copy_sources(root: Path) -> None:
    for name in SOURCES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text((ROOT / name).read_text())


def test_readme_sync_replaces_only_the_block_and_check_detects_staleness(tmp_path):
    text = "intro\n<!-- x:start -->\nold\n<!-- x:end -->\nafter\n"
    assert sync.replace_block(text, "<!-- x:start -->", "<!-- x:end -->", "new") == (
        "intro\n<!-- x:start -->\nnew\n<!-- x:end -->\nafter\n"
    )
    with pytest.raises(UsageError, match="lacks the markers"):
        sync.replace_block("no markers", "<!-- x:start -->", "<!-- x:end -->", "new")
    # A copy of the README with a tampered headline: --check fails, a refresh repairs it.
    _copy_sources(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    assert sync.main(["--check", "--readme", str(readme)]) == 0
    start = "<!-- headline:start -->\n"
    readme.write_text(readme.read_text().replace(start, start + "a typed number\n"))
    assert sync.main(["--check", "--readme", str(readme)]) == 1
    assert sync.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == (ROOT / "README.md").read_text()


def test_readme_sync_explains_a_missing_source_or_marker(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    assert run(sync.main, ["--readme", str(readme)]) == 2  # no reports/ or results/ beside it
    err = capsys.readouterr().err
    assert "headline.md is missing: run `make repro`" in err and "Traceback" not in err
    assert readme.read_text() == (ROOT / "README.md").read_text()
    _copy_sources(tmp_path)
    readme.write_text("no markers at all\n")
    assert run(sync.main, ["--check", "--readme", str(readme)]) == 2
    assert "lacks the markers" in capsys.readouterr().err
    assert readme.read_text() == "no markers at all\n"
    assert run(sync.main, ["--readme", str(tmp_path / "absent.md")]) == 2
    assert "--readme" in capsys.readouterr().err


def test_make_readme_runs_the_module():
    makefile = (ROOT / "Makefile").read_text()
    assert "-m bench.reporting.readme" in makefile.split("\nreadme:", 1)[1].split("\n\n", 1)[0]
