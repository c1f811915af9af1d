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
suite fails on the same condition. A missing source file or marker is a usage error (status 2,
nothing written).

    python -m bench.reporting.readme            # rewrite the blocks in place (atomically)
    python -m bench.reporting.readme --check    # verify only
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench import layout
from bench.cli import ArgumentParser, run
from bench.errors import UsageError
from bench.io import write_bytes_atomic
from bench.reporting.tables import HEADLINE_END, HEADLINE_MD, HEADLINE_START
from bench.studies import derivative_cost, step_cost

ROOT = Path(__file__).resolve().parents[2]
COST_START, COST_END = "<!-- derivative-cost:start -->", "<!-- derivative-cost:end -->"
STEP_START, STEP_END = "<!-- step-cost:start -->", "<!-- step-cost:end -->"
HEADLINE_PROFILE = "default"  # the README cites the default profile's report


def replace_block(text: str, start: str, end: str, body: str) -> str:
    """``text`` with everything between the ``start`` and ``end`` lines replaced by ``body``."""
    if start not in text or end not in text or text.index(end) < text.index(start):
        raise UsageError(f"README lacks the markers {start} … {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = body if body.endswith("\n") else body + "\n"
    return f"{head}{start}\n{body}{end}{tail}"


def _source(path: Path, command: str) -> str:
    """The text of a block's source file; UsageError naming the command that writes it."""
    if not path.is_file():
        raise UsageError(f"{path} is missing: run `{command}` first")
    return path.read_text()


def render(readme: str, root: Path = ROOT) -> str:
    """The README with its generated blocks refreshed from their source files."""
    headline_md = layout.report_dir(HEADLINE_PROFILE, root / layout.REPORTS) / HEADLINE_MD
    headline = _source(headline_md, "make repro")
    cost_json = _source(root / "results" / "derivative_cost.json", "make derivative-cost")
    step_json = _source(root / "results" / "step_cost.json", "make step-cost")
    cost = derivative_cost.readme_block(json.loads(cost_json))
    step = step_cost.readme_block(json.loads(step_json))
    readme = replace_block(readme, HEADLINE_START, HEADLINE_END, headline)
    readme = replace_block(readme, STEP_START, STEP_END, step.strip() + "\n")
    return replace_block(readme, COST_START, COST_END, cost.strip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify, exit 1 if stale")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    if not args.readme.is_file():
        raise UsageError(f"--readme {args.readme}: no such file")
    current = args.readme.read_text()
    try:
        refreshed = render(current, args.readme.resolve().parent)
    except UsageError as error:  # name the README whose block could not be refreshed
        raise UsageError(f"{args.readme}: {error}") from None
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
    raise SystemExit(run(main))
