"""Timing stage: step cost of every optimizer, and how the projected derivatives scale.

    python -m bench.timing [--params params.yaml] [--results results]

Writes ``results/<profile>/timing/`` (steps.csv, scaling.csv, environment.json); what is
measured and how: :mod:`bench.studies.timing`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bench.cli import ArgumentParser, run
from bench.config import load_pipeline_config
from bench.studies.timing import timing_stage


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--results", type=Path, default=None, help="default: <project>/results")
    args = parser.parse_args(argv)
    config = load_pipeline_config(args.params)
    results = config.project_path(args.results, "results")
    out = timing_stage(config, results, args.params)
    print(json.dumps({"written": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
