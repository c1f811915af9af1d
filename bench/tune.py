"""Tune stage: one cell (problem, optimizer) → ``results/<profile>/tune/<problem>/<opt>.json``.

    python -m bench.tune --problem digits_mlp --optimizer sgd [--params params.yaml]

The protocol and the output: :mod:`bench.training.tuning`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.cli import run
from bench.training.cells import cell_arguments
from bench.training.tuning import tune_cell


def main(argv: Sequence[str] | None = None) -> int:
    args, config = cell_arguments(__doc__.splitlines()[0], argv, seed=False)
    output = tune_cell(
        config, args.problem, args.optimizer, results=args.results, params=args.params
    )
    losses = ", ".join(f"lr {r['lr']:g}: {r['valid_loss']:.4g}" for r in output["grid"])
    print(f"tune {args.problem}/{args.optimizer}: best {output['best']} ({losses})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
