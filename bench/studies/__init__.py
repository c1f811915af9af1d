"""The cost studies and the logic of the invariance and timing stages.

* :mod:`bench.studies.timer` — the one timer (callables timed interleaved in one process);
* :mod:`bench.studies.memory` — the one peak-memory probe (a fresh process per workload);
* :mod:`bench.studies.derivative_cost`, :mod:`~bench.studies.step_cost`,
  :mod:`~bench.studies.perf_check`, :mod:`~bench.studies.smoke_study` — tools run as
  ``python -m bench.studies.<name>`` (the README's cost tables, the CI gate, the equal-steps study);
* :mod:`bench.studies.invariance`, :mod:`~bench.studies.timing` — what the DVC stages
  ``python -m bench.invariance`` and ``python -m bench.timing`` run;
* :mod:`bench.studies.options` — the tools' shared option types.

Every model is built by :mod:`bench.models`. Studies import flat support modules (and may import
``bench.training``), never a stage script.
"""
