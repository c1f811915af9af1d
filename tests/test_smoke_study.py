"""bench.studies.smoke_study: the equal-steps study behind the optimizer's smoke test (tiny
grids)."""

import json
import math

import pytest

from bench.cli import run
from bench.studies import smoke_study


def tiny(tmp_path, name="study.json", *extra):
    out = tmp_path / name
    argv = ["--out", str(out), "--steps", "1,3", "--seeds", "0", "--sgd-lr", "0.1"]
    argv += ["--lr", "0.6", "--partitions", "per_tensor", "--schedules", "1:0", *extra]
    assert smoke_study.main(argv) == 0
    return json.loads(out.read_text())


def test_runs_both_families_deterministically(tmp_path):
    first = tiny(tmp_path, "a.json")
    second = tiny(tmp_path, "b.json")
    assert [r["losses"] for r in first["rows"]] == [r["losses"] for r in second["rows"]]
    assert [r["family"] for r in first["rows"]] == ["sgd", "partitioned_newton"]
    for row in first["rows"]:
        assert len(row["losses"]) == 1 and len(row["losses"][0]) == 2
        assert all(math.isfinite(v) for v in row["losses"][0])
        # three steps of either optimizer lower the training loss from its initial value
        assert row["losses"][0][1] < first["initial_loss"]
    assert first["provenance"]["params_hash"] == second["provenance"]["params_hash"]
    assert first["settings"]["steps"] == [1, 3]
    ours = first["rows"][1]
    # T = 1, W = 0: a recomputation per step, solved or failed; η has 8 subsets (4 layers)
    records = ours["recomputations"][0]
    assert [r["step"] for r in records] == [0, 1, 2]
    solved = [r["eta"] for r in records if r["event"] == "solved"]
    summary = ours["eta_summary"]
    assert summary["solved"] == len(solved) and summary["subsets"] == 8
    zeros = sorted(sum(v == 0.0 for v in eta) for eta in solved)
    assert summary["zero_subsets_range"] == [zeros[0], zeros[-1]]
    assert summary["first_subset_step_quantiles"]["p50"] in [0.6 * eta[0] for eta in solved]
    assert "eta_summary" not in first["rows"][0]


def test_eta_summary_counts_zero_subsets_and_scales_by_lr():
    row = {"family": "partitioned_newton", "lr": 0.5, "recomputations": [[
        {"event": "warmup", "eta": None},
        {"event": "solved", "eta": [0.2, 0.0, 1.0]},
        {"event": "failed", "eta": [0.2, 0.0, 1.0]},
        {"event": "solved", "eta": [0.4, 0.0, 0.0]},
    ], [{"event": "solved", "eta": [0.6, 1.0, 1.0]}]]}  # fmt: skip
    summary = smoke_study.eta_summary(row)
    assert summary["solved"] == 3 and summary["zero_subsets_median"] == 1
    assert summary["zero_subsets_range"] == [0, 2]
    assert summary["first_subset_step_quantiles"] == {"p10": 0.1, "p50": 0.2, "p90": 0.3}
    assert smoke_study.eta_summary({"family": "sgd"}) is None


def test_best_skips_diverged_and_markdown_marks_it():
    rows = [
        {"family": "sgd", "label": "sgd a", "mean": [0.5], "min": [0.4], "max": [0.6],
         "diverged_seeds": 0},
        {"family": "sgd", "label": "sgd b", "mean": [0.1], "min": [0.1], "max": [0.1],
         "diverged_seeds": 1},
        {"family": "partitioned_newton", "label": "ours", "mean": [0.7], "min": [0.7],
         "max": [0.7], "diverged_seeds": 0},
    ]  # fmt: skip
    assert smoke_study.best(rows, "sgd", 0)["label"] == "sgd a"
    result = {"settings": {"steps": [10], "seeds": [0, 1]}, "rows": rows, "initial_loss": 2.3}
    table = smoke_study.markdown(result).splitlines()
    assert table[2] == "| sgd a | 0 | **0.5 [0.4, 0.6]** |"
    assert table[3] == "| sgd b | 1 | 0.1 [0.1, 0.1] |"
    assert table[4] == "| ours | 0 | **0.7 [0.7, 0.7]** |"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--partitions", "per_layer", "unknown partition 'per_layer'"),
        ("--schedules", "10", "a schedule is T:W"),
        ("--steps", "3,1", "increasing positive steps"),
        ("--curvature-batch", "900", "needs 5700 training images"),
        ("--threads", "0", "argument --threads: must be >= 1"),
        ("--device", "bogus", "unknown device 'bogus'"),
        ("--steps", "a", "--steps takes comma-separated ints"),
        ("--sgd-lr", "x", "--sgd-lr takes comma-separated floats"),
    ],
)
def test_bad_arguments_are_named(tmp_path, capsys, flag, value, message):
    out = tmp_path / "never.json"
    argv = ["--out", str(out), "--sgd-lr", "0.1", "--lr", "", flag, value]
    try:
        status = run(smoke_study.main, argv)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
