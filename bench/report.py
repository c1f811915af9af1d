"""Report stage: ``results/<profile>`` → ``reports/<profile>/`` (report.md, index.html, ...).

The sections, tables and figures are :mod:`bench.reporting.report`'s. Reads params ``profile``,
``train.probe.optimizers`` (whose probe sentences the report gives) and the cells
``problems × optimizers × seeds`` (exactly those runs; a missing one is an error), with the tune
files of their (problem, optimizer) cells (the grid edges) and the invariance and timing results
when present. Where K-FAC ran, it builds the problem's model and a K-FAC optimizer on it to say
which parameters K-FAC preconditions (:mod:`bench.reporting.coverage`).

    python -m bench.report [--params params.yaml] [--profile default] [--results results]
                           [--reports reports]
"""

from __future__ import annotations

from bench.cli import run, stage_config, stage_parser
from bench.reporting import report, runs


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__.splitlines()[0], profile=True, reports=True).parse_args(argv)
    config = stage_config(args)
    cells = runs.params_cells(config)
    target = report.write_report(
        args.results, args.reports, config.profile, cells, config.train.probe.optimizers
    )
    print(f"report: {target / report.REPORT_MD}, {target / report.INDEX_HTML}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
