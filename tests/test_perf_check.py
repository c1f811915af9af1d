"""The regression gate (bench.studies.perf_check): verdicts on constructed ratios, the float64
agreement check before timing, and adding a figure to the baseline without moving the others."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bench.errors import UsageError
from bench.studies import perf_check
from bench.studies.perf_check import OTHER_MACHINE_FACTOR, compare
from optimizers.partition import per_tensor

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


# ------------------------------------- the engine / restricted-reference figure and its baseline
def test_the_restricted_reference_ratio_is_gated():
    top, bottom = perf_check.RATIOS["derivatives_order3_diag / restricted_reference_order3_diag"]
    assert (top, bottom) == ("derivatives_order3_diag", "restricted_reference_order3_diag")


def _tiny(seed: int):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 10))
    batch = (torch.randn(6, 4, generator=gen), torch.randint(0, 10, (6,), generator=gen))
    direction = {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
    return model, batch, per_tensor(model), direction


def test_agreement_check_passes_and_catches_a_wrong_engine(monkeypatch, seed):
    model, batch, groups, direction = _tiny(seed)
    assert perf_check.check_agreement(model, batch, groups, direction) <= 1e-12
    assert next(model.parameters()).dtype == torch.float32  # the timed model is untouched
    import optimizers

    engine = optimizers.projected_derivatives

    def off(*args, **kwargs):
        g, h, d3 = engine(*args, **kwargs)
        return g, h, d3 * (1 + 1e-8)

    monkeypatch.setattr(optimizers, "projected_derivatives", off)
    with pytest.raises(AssertionError, match="restricted reference differ by 1e-08"):
        perf_check.check_agreement(model, batch, groups, direction)


def test_a_disagreement_fails_the_gate_before_any_timing(monkeypatch, tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(BASELINE))

    def disagreeing(rounds):
        raise AssertionError("perf-check: the engine and the restricted reference differ")

    monkeypatch.setattr(perf_check, "measure", disagreeing)
    assert perf_check.main(["--baseline", str(baseline)]) == 1
    assert "FAILED (the compared routes disagree)" in capsys.readouterr().out


def test_add_missing_records_only_the_new_ratio(monkeypatch, tmp_path):
    here = perf_check.machine()
    monkeypatch.setattr(perf_check, "machine", lambda: here)
    recorded = dict(BASELINE, machine=here, created="then", command="make perf-baseline")
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(recorded))
    measured = {"a / b": 9.0, "c / d": 9.0, "e / f": 1.25}
    monkeypatch.setattr(perf_check, "measure", lambda rounds: measured)
    assert perf_check.main(["--add-missing", "--baseline", str(baseline)]) == 0
    written = json.loads(baseline.read_text())
    assert written["ratios"] == {"a / b": 2.0, "c / d": 5.0, "e / f": 1.25}
    assert list(written["added"]) == ["e / f"]
    assert "--add-missing" in written["added"]["e / f"]["command"]
    assert {k: written[k] for k in ("created", "command", "machine", "tolerance")} == {
        k: recorded[k] for k in ("created", "command", "machine", "tolerance")
    }


def test_add_missing_refuses_a_baseline_from_another_machine(tmp_path):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(BASELINE))  # MACHINE is not this machine
    with pytest.raises(UsageError, match="--add-missing: .* refresh it whole"):
        perf_check.main(["--add-missing", "--baseline", str(baseline)])
    assert json.loads(baseline.read_text()) == BASELINE
