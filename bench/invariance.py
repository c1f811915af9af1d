"""Invariance stage: per-tensor affine reparameterization θ_s = a_s θ̃_s + b_s (METHOD.md §6).

    python -m bench.invariance --problem digits_mlp [--params params.yaml] [--results results]

Writes ``results/<profile>/invariance/<problem>.json``; the study (the twin model, the deviations
per step, the scaling laws): :mod:`bench.studies.invariance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.cli import ArgumentParser, run
from bench.config import load_pipeline_config
from bench.studies.invariance import invariance_cell


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--results", type=Path, default=None, help="default: <project>/results")
    args = parser.parse_args(argv)
    config = load_pipeline_config(args.params)
    results = config.project_path(args.results, "results")
    path = invariance_cell(config, args.problem, results)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
