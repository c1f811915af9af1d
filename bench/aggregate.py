"""Aggregate stage: the runs of params' cells → ``summary.csv`` and ``summary.json``.

The rules (diverged runs kept, Student-t intervals, the training-loss targets) are
:mod:`bench.reporting.summary`'s; the paired comparisons of ours and its variants against the
baselines (summary.json's ``comparisons`` per problem) :mod:`bench.reporting.comparisons`'. Reads
params ``profile``, ``aggregate.train_loss_target`` and the cells ``problems × optimizers ×
seeds`` (exactly those runs; a missing one is an error), and the timing stage's
``results/<profile>/timing/steps.csv`` when it exists (or ``--timing``): summary.json then
carries each cell's step cost × SGD and peak memory.

    python -m bench.aggregate [--params params.yaml] [--profile default] [--results results]
                              [--timing results/<profile>/timing/steps.csv]
"""

from __future__ import annotations

from pathlib import Path

from bench import layout, schema
from bench.cli import run, stage_config, stage_parser
from bench.errors import UsageError
from bench.reporting import runs, summary


def timing_steps(given: Path | None, profile: str, results: Path) -> Path | None:
    """The timing stage's steps.csv the aggregate reads: ``--timing`` when given (it must
    exist), else ``results/<profile>/timing/steps.csv`` when that file exists, else None."""
    if given is not None:
        if not given.is_file():
            raise UsageError(f"--timing {given}: no such file")
        return given
    default = layout.timing_dir(profile, results) / schema.TIMING_STEPS_FILE
    return default if default.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0], profile=True)
    parser.add_argument(
        "--timing", type=Path, default=None,
        help="the timing stage's steps.csv (default: results/<profile>/timing/steps.csv if any)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    config = stage_config(args)
    results = args.results
    cells = runs.params_cells(config)
    timing = timing_steps(args.timing, config.profile, results)
    table, headline = summary.aggregate(
        results, config.profile, cells, config.aggregate.train_loss_target, timing
    )
    print(
        f"aggregate: {summary.run_count(table)} runs, {len(summary.problem_names(headline))} "
        f"problems{'' if timing is None else f', speed from {timing}'} → "
        f"{layout.results_dir(config.profile, results)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
