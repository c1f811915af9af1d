"""Refresh the README's generated blocks from the files that hold their numbers.

The README carries three tables that are generated, never typed:

* ``<!-- headline:start -->`` … ``<!-- headline:end -->``: ``reports/default/headline.md``,
  written by the ``report`` stage of ``dvc repro`` (the default profile);
* ``<!-- derivative-cost:start -->`` … ``<!-- derivative-cost:end -->``: rendered from
  ``results/derivative_cost.json``, written by ``make derivative-cost``;
* ``<!-- step-cost:start -->`` … ``<!-- step-cost:end -->``: rendered from
  ``results/step_cost.json``, written by ``make step-cost``.

Stages write only their own outputs, so the README is refreshed by this separate command
(``make readme``); ``--check`` exits with status 1 when a block is out of date, and the test
suite fails on the same condition.

    python -m bench.readme            # rewrite the blocks in place (atomically)
    python -m bench.readme --check    # verify only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import step_cost
from bench.derivative_cost import readme_block
from bench.io import write_bytes_atomic
from bench.report import HEADLINE_END, HEADLINE_START

ROOT = Path(__file__).resolve().parents[1]
COST_START, COST_END = "<!-- derivative-cost:start -->", "<!-- derivative-cost:end -->"
STEP_START, STEP_END = "<!-- step-cost:start -->", "<!-- step-cost:end -->"


def replace_block(text: str, start: str, end: str, body: str) -> str:
    """``text`` with everything between the ``start`` and ``end`` lines replaced by ``body``."""
    if start not in text or end not in text or text.index(end) < text.index(start):
        raise ValueError(f"README lacks the markers {start} … {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = body if body.endswith("\n") else body + "\n"
    return f"{head}{start}\n{body}{end}{tail}"


def render(readme: str, root: Path = ROOT) -> str:
    """The README with both generated blocks refreshed from their source files."""
    headline = (root / "reports" / "default" / "headline.md").read_text()
    cost = readme_block(json.loads((root / "results" / "derivative_cost.json").read_text()))
    step = step_cost.readme_block(json.loads((root / "results" / "step_cost.json").read_text()))
    readme = replace_block(readme, HEADLINE_START, HEADLINE_END, headline)
    readme = replace_block(readme, STEP_START, STEP_END, step.strip() + "\n")
    return replace_block(readme, COST_START, COST_END, cost.strip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify, exit 1 if stale")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    try:
        refreshed = render(current, args.readme.resolve().parent)
    except FileNotFoundError as error:
        print(
            f"{error.filename} is missing: run `make repro` (headline), `make derivative-cost` "
            "or `make step-cost` first",
            file=sys.stderr,
        )
        return 1
    except ValueError as error:  # missing markers
        print(f"{args.readme}: {error}", file=sys.stderr)
        return 1
    if refreshed == current:
        print(f"{args.readme}: generated blocks are up to date")
        return 0
    if args.check:
        print(f"{args.readme}: generated blocks are stale; run `make readme`", file=sys.stderr)
        return 1
    write_bytes_atomic(args.readme, refreshed.encode("utf-8"))
    print(f"{args.readme}: generated blocks refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
