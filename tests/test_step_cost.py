"""bench.studies.step_cost: the record and its README block (tiny settings, numbers unchecked)."""

from __future__ import annotations

import json

import pytest

from bench.studies import step_cost


def test_measure_records_consistent_ratios_and_the_block_renders(tmp_path):
    out = tmp_path / "step_cost.json"
    assert step_cost.main(["--out", str(out), "--problems", "mnist_mlp", "--batch-size", "8",
                           "--repeats", "1"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["problem"] == "mnist_mlp" and row["S"] == 8 and row["period"] == 10
    assert row["ratio_amortised_to_sgd"] == pytest.approx(
        row["amortised_step_ms"] / row["sgd_step_ms"]
    )
    assert row["target"] == pytest.approx(1.1 + row["derivative_cost_gradient_equivalents"] / 10)
    assert row["meets_target"] == (row["ratio_amortised_to_sgd"] <= row["target"])
    assert {"git_commit", "torch", "cpu", "threads"} <= set(result["provenance"])
    block = step_cost.readme_block(result)
    assert block.startswith("| problem | S |") and "| mnist_mlp | 8 |" in block
    assert "make step-cost" in block


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown problem"):
        step_cost.measure("imagenet_resnet")
    with pytest.raises(ValueError, match="period >= 3"):
        step_cost.measure("mnist_mlp", period=2)
