"""The README's numbers are generated: its blocks must equal what the commands render."""

from __future__ import annotations

import json
from pathlib import Path

from bench.derivative_cost import readme_block

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
