"""Report stage: ``results/<profile>`` → ``reports/<profile>/`` (report.md, index.html, ...).

The sections, tables and figures are :mod:`bench.reporting.report`'s. Reads params ``profile``,
``train.probe.optimizers`` (whose probe sentences the report gives) and the cells
``problems × optimizers × seeds`` (exactly those runs; a missing one is an error).

    python -m bench.report [--params params.yaml] [--profile default] [--results results]
                           [--reports reports]
"""

from __future__ import annotations

from bench import layout
from bench.cli import ArgumentParser, run
from bench.reporting import options, report, runs


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    options.add_arguments(parser, reports=True)
    args = parser.parse_args(argv)
    config = options.stage_config(args)
    results = config.project_path(args.results, layout.RESULTS)
    reports = config.project_path(args.reports, layout.REPORTS)
    cells = runs.params_cells(config)
    target = report.write_report(
        results, reports, config.profile, cells, config.train.probe.optimizers
    )
    print(f"report: {target / report.REPORT_MD}, {target / report.INDEX_HTML}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
