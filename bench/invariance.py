"""Invariance stage: per-tensor affine reparameterization θ_s = a_s θ̃_s + b_s (METHOD.md §6).

    python -m bench.invariance --problem digits_mlp [--params params.yaml] [--results results]

Writes ``results/<profile>/invariance/<problem>.json``; the study (the twin model, the deviations
per step, the scaling laws): :mod:`bench.studies.invariance`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.cli import run, stage_config, stage_parser
from bench.studies.invariance import invariance_cell


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--problem", required=True)
    args = parser.parse_args(argv)
    config = stage_config(args)
    path = invariance_cell(config, args.problem, args.results)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
