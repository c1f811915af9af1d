"""What the pipeline reads back: the aggregate's statistics, the report, its figures, the README.

- :mod:`~bench.reporting.runs`: one run folder → :class:`~bench.reporting.runs.Run` (the run
  record of :mod:`bench.schema`, checked), read for exactly params' cells (problems × optimizers
  × seeds);
- :mod:`~bench.reporting.summary`: the aggregate (tidy ``summary.csv``, ``summary.json``, the
  training-loss targets);
- :mod:`~bench.reporting.comparisons`: Student-t intervals, paired comparisons of ours against
  the baselines, Dolan–Moré performance profiles;
- :mod:`~bench.reporting.tables`: formatting, the headline table and the report's tables;
- :mod:`~bench.reporting.verdicts`: the headline's line per problem (who wins on its own metric
  and on the training loss, how ours stands against the winner, by the paired interval);
- :mod:`~bench.reporting.coverage`: what K-FAC preconditions on each problem's model (the
  report builds the model and the optimizer to ask);
- :mod:`~bench.reporting.document`: sections of blocks → Markdown and self-contained HTML;
- :mod:`~bench.reporting.figures`, :mod:`~bench.reporting.profile_section`,
  :mod:`~bench.reporting.tuning`, :mod:`~bench.reporting.invariance_section`,
  :mod:`~bench.reporting.timing_section`: the figures, the performance profile, the tune grids'
  edges and the two studies' sections;
- :mod:`~bench.reporting.report`: the report's sections, assembled and written atomically;
- :mod:`~bench.reporting.readme`: ``python -m bench.reporting.readme`` refreshes the README's
  generated blocks.

The stage scripts ``bench/aggregate.py`` and ``bench/report.py`` call into this package; it
imports only flat support modules (and the cost studies' README renderers), never a stage.
"""
