"""Train stage: one cell (problem, optimizer, seed) → ``results/<profile>/runs/<p>/<o>/<seed>/``.

    python -m bench.train --problem digits_mlp --optimizer sgd --seed 0 [--params params.yaml]

What it reads and writes: :mod:`bench.training.cells`; the run record: :mod:`bench.schema`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench import schema
from bench.cli import run
from bench.training.cells import cell_arguments, train_cell


def main(argv: Sequence[str] | None = None) -> int:
    args, config = cell_arguments(__doc__.splitlines()[0], argv, seed=True)
    metrics = train_cell(config, args.problem, args.optimizer, args.seed, results=args.results)
    quality = schema.metric_of(metrics)
    state = f"diverged at epoch {metrics['diverged_epoch']}" if metrics["diverged"] else "done"
    print(
        f"train {args.problem}/{args.optimizer}/{args.seed}: {state}, "
        f"train loss {metrics['final_train_loss']:.4g}, "
        f"test {quality.name} {metrics[quality.final_key]:.4f}, {metrics['wall_clock']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
