"""The regression gate's verdicts (bench.studies.perf_check.compare) on constructed ratios."""

from __future__ import annotations

import pytest

from bench.studies.perf_check import OTHER_MACHINE_FACTOR, compare

MACHINE = {"cpu": "test cpu", "cores": 2, "threads": 1, "torch": "2.13.0", "python": "3.11"}
BASELINE = {"ratios": {"a / b": 2.0, "c / d": 5.0}, "tolerance": 0.3, "machine": MACHINE}


def test_passes_within_tolerance_and_reports_every_ratio():
    passed, table = compare({"a / b": 2.5, "c / d": 4.0}, BASELINE, MACHINE)
    assert passed
    assert "a / b" in table and "c / d" in table and "REGRESSION" not in table
    assert "same machine" in table


def test_fails_on_a_regression_beyond_tolerance():
    passed, table = compare({"a / b": 2.7, "c / d": 5.0}, BASELINE, MACHINE)
    assert not passed
    assert "REGRESSION" in table and "+35%" in table


@pytest.mark.parametrize("value, expected", [(2.0 * 1.55, True), (2.0 * 1.65, False)])
def test_other_machine_widens_the_tolerance_and_says_so(value, expected):
    other = dict(MACHINE, cpu="another cpu")
    passed, table = compare({"a / b": value}, BASELINE, other)
    assert passed is expected
    assert "another machine" in table and f"×{OTHER_MACHINE_FACTOR:g}" in table


def test_new_ratio_without_baseline_is_listed_not_failed():
    passed, table = compare({"e / f": 9.0}, BASELINE, MACHINE)
    assert passed and "no baseline" in table
