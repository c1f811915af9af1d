"""The timing stage on a tiny configuration: files, columns, ratios consistent with each other."""

from __future__ import annotations

import json
import math

import pandas as pd

from bench.config import parse_config
from bench.prepare import prepare
from bench.timing import SCALING_COLUMNS, STEP_COLUMNS, interleaved, scaling_points, timing_stage


def test_stage_writes_steps_scaling_and_environment(tmp_path, monkeypatch):
    from test_stages import tiny_params

    monkeypatch.chdir(tmp_path)
    config = parse_config(tiny_params(tmp_path))
    prepare(config, results=tmp_path / "results")
    out = timing_stage(config, tmp_path / "results")
    steps = pd.read_csv(out / "steps.csv")
    assert list(steps.columns) == STEP_COLUMNS
    assert set(steps["optimizer"]) == {"sgd", "partitioned_newton"}
    sgd = steps.set_index("optimizer").loc["sgd"]
    assert math.isclose(sgd["vs_sgd"], 1.0)
    ours = steps.set_index("optimizer").loc["partitioned_newton"]
    assert ours["recomputation_gradients_amortised"] > 0  # one recomputation per period
    assert (steps["gradients"] > 0).all()
    scaling = pd.read_csv(out / "scaling.csv")
    assert list(scaling.columns) == SCALING_COLUMNS
    assert len({tuple(p) for p in scaling_points(config.timing.scaling)}) == len(
        scaling.drop_duplicates(["sweep", "partition", "width", "depth", "batch"])
    )
    single = scaling[(scaling.sweep == "subsets") & (scaling.partition == "single")]
    assert set(single["subsets"]) == {1}
    assert "order3_full" in set(single["variant"])  # S = 1 <= full_order3_max_subsets
    environment = json.loads((out / "environment.json").read_text())
    assert environment["torch"] and environment["threads"] == 1 and environment["git_commit"]


def test_interleaved_runs_every_callable_once_per_round():
    calls = []
    samples = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating
    assert all(len(v) == 3 for v in samples.values())
