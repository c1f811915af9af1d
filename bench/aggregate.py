"""Aggregate stage: the runs of params' cells → ``summary.csv`` and ``summary.json``.

The rules (diverged runs kept, Student-t intervals, the training-loss target) are
:mod:`bench.reporting.summary`'s. Reads params ``profile``, ``aggregate.train_loss_target`` and
the cells ``problems × optimizers × seeds`` (exactly those runs; a missing one is an error).

    python -m bench.aggregate [--params params.yaml] [--profile default] [--results results]
"""

from __future__ import annotations

from bench import layout
from bench.cli import ArgumentParser, run
from bench.reporting import options, runs, summary


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    options.add_arguments(parser)
    args = parser.parse_args(argv)
    config = options.stage_config(args)
    results = config.project_path(args.results, layout.RESULTS)
    cells = runs.params_cells(config)
    table, headline = summary.aggregate(
        results, config.profile, cells, config.aggregate.train_loss_target
    )
    print(
        f"aggregate: {summary.run_count(table)} runs, {len(headline)} problems → "
        f"{layout.results_dir(config.profile, results)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
