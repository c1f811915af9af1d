"""Train stage: one cell (problem, optimizer) → ``results/<profile>/runs/<p>/<o>/<seed>/``.

Every seed of params (``runtime.workers`` processes at a time), or one with ``--seed``.

    python -m bench.train --problem digits_mlp --optimizer sgd [--seed 0] [--params params.yaml]

What it reads and writes: :mod:`bench.training.cells`; the run record: :mod:`bench.schema`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench import schema
from bench.cli import run
from bench.training.cells import cell_arguments, train_cell, train_seeds

__all__ = ["main", "train_cell", "train_seeds"]


def main(argv: Sequence[str] | None = None) -> int:
    args, config = cell_arguments(__doc__.splitlines()[0], argv, seed=True)
    seeds = list(config.seeds) if args.seed is None else [args.seed]
    every = train_seeds(
        config, args.problem, args.optimizer, seeds, params=args.params, results=args.results
    )
    for seed, metrics in zip(seeds, every, strict=True):
        quality = schema.metric_of(metrics)
        state = f"diverged at epoch {metrics['diverged_epoch']}" if metrics["diverged"] else "done"
        print(
            f"train {args.problem}/{args.optimizer}/{seed}: {state}, "
            f"train loss {metrics['final_train_loss']:.4g}, "
            f"test {quality.name} {metrics[quality.final_key]:.4f}, {metrics['wall_clock']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
