"""Timing stage: step cost of every optimizer, and how the projected derivatives scale.

    python -m bench.timing [--params params.yaml] [--results results]

Writes ``results/<profile>/timing/`` (steps.csv, scaling.csv, environment.json); what is
measured and how: :mod:`bench.studies.timing`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from bench.cli import run, stage_config, stage_parser
from bench.studies.timing import timing_stage


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    config = stage_config(args)
    out = timing_stage(config, args.results, str(args.params))
    print(json.dumps({"written": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
