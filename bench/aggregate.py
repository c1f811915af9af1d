"""Aggregate stage: the runs of params' cells → ``summary.csv`` and ``summary.json``.

The rules (diverged runs kept, Student-t intervals, the training-loss targets) are
:mod:`bench.reporting.summary`'s; the paired comparisons of ours and its variants against the
baselines (summary.json's ``comparisons`` per problem) :mod:`bench.reporting.comparisons`'. Reads
params ``profile``, ``aggregate.train_loss_target`` and the cells ``problems × optimizers ×
seeds`` (exactly those runs; a missing one is an error).

    python -m bench.aggregate [--params params.yaml] [--profile default] [--results results]
"""

from __future__ import annotations

from bench import layout
from bench.cli import run, stage_config, stage_parser
from bench.reporting import runs, summary


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__.splitlines()[0], profile=True).parse_args(argv)
    config = stage_config(args)
    results = args.results
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
