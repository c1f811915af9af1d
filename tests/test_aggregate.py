"""The aggregate stage on synthetic results trees (tests/fixtures_results.py).

Every expected number is recomputed here from the files the fixture wrote (metrics.json,
history.csv), never through bench.reporting.summary. The fixture's noise seed is the conftest
``seed`` (fresh each run; replay a failure with HOBENCH_SEED=<seed>).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_results import (
    DIVERGED,
    LAYOUT,
    LM_PROBLEM,
    MIXED_LAYOUT,
    SEEDS,
    register_lm_problem,
    write_params,
    write_results_tree,
)
from scipy import stats

from bench import aggregate, schema
from bench.cli import run
from bench.errors import ConfigError, UsageError
from bench.reporting import comparisons
from bench.reporting import summary as aggregation
from bench.reporting.runs import Run


def _aggregate(results: Path, params: Path | None = None, profile: str = "default", **cells) -> int:
    """The stage on ``results``; without ``params``, a params file of the cells ``cells``
    (``layout``, ``seeds``: those of :func:`write_params`)."""
    params = params or write_params(results.parent / "params.yaml", **cells)
    argv = ["--profile", profile, "--results", str(results), "--params", str(params)]
    return aggregate.main(argv)


@pytest.fixture
def tree(tmp_path: Path, seed: int) -> tuple[Path, dict]:
    results = tmp_path / "results"
    written = write_results_tree(results, seed=seed, seeds=SEEDS)
    assert _aggregate(results) == 0
    return results, written


def _summary(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "default" / "summary.csv")


def _value(summary: pd.DataFrame, problem: str, optimizer: str, seed: int, metric: str) -> float:
    rows = summary[
        (summary["problem"] == problem)
        & (summary["optimizer"] == optimizer)
        & (summary["seed"] == seed)
        & (summary["metric"] == metric)
    ]
    assert len(rows) == 1, (problem, optimizer, seed, metric, len(rows))
    return float(rows["value"].iloc[0])


def _independent_targets(written: dict, pick=max) -> dict[str, float]:
    """The documented rules, recomputed: ``pick`` (max: the earlier rule, median: the separating
    one) over optimizers of the mean non-diverged final loss (every fixture optimizer trains)."""
    targets = {}
    for problem, optimizers in LAYOUT.items():
        means = []
        for optimizer in optimizers:
            finals = [
                m["final_train_loss"]
                for (p, o, _), m in written.items()
                if p == problem and o == optimizer and not m["diverged"]
            ]
            if finals:
                means.append(sum(finals) / len(finals))
        targets[problem] = pick(means)
    return targets


def test_summary_csv_is_tidy_with_every_metric_of_every_run(tree):
    results, written = tree
    summary = _summary(results)
    assert list(summary.columns) == ["problem", "optimizer", "seed", "metric", "value"]
    assert len(summary) == len(written) * len(aggregation.RUN_METRICS)
    assert not summary.duplicated(["problem", "optimizer", "seed", "metric"]).any()
    for (problem, optimizer, seed), _ in written.items():
        cell = summary[
            (summary["problem"] == problem)
            & (summary["optimizer"] == optimizer)
            & (summary["seed"] == seed)
        ]
        assert sorted(cell["metric"]) == sorted(aggregation.RUN_METRICS)
    assert set(summary["problem"]) == set(LAYOUT)


def test_per_run_values_are_the_written_ones_and_diverged_runs_are_kept(tree):
    results, written = tree
    summary = _summary(results)
    for (problem, optimizer, seed), metrics in written.items():
        for key in schema.METRICS_FROM_JSON:
            expected = float(metrics[key])
            got = _value(summary, problem, optimizer, seed, key)
            np.testing.assert_equal(got, expected, err_msg=f"{problem}/{optimizer}/{seed} {key}")
    for problem, optimizer, seed, epoch, loss in DIVERGED:
        assert _value(summary, problem, optimizer, seed, "diverged") == 1.0
        assert _value(summary, problem, optimizer, seed, "epochs") == epoch
        # the value at divergence, not back-filled with an earlier finite one
        np.testing.assert_equal(_value(summary, problem, optimizer, seed, "final_train_loss"), loss)


def test_statistics_and_summary_json_match_an_independent_computation(tree):
    results, written = tree
    headline = json.loads(
        (results / "default" / "summary.json").read_text(),
        parse_constant=lambda name: pytest.fail(f"summary.json contains {name}"),
    )
    table = aggregation.statistics(_summary(results)).set_index(["problem", "optimizer", "metric"])
    assert set(headline) == {*LAYOUT, "@profile"} and headline["@profile"] == "default"
    assert list(headline)[0] == "@profile"
    for problem, optimizers in LAYOUT.items():
        assert set(headline[problem]) == {*optimizers, "comparisons"}
        for optimizer in optimizers:
            cell = [m for (p, o, _), m in written.items() if p == problem and o == optimizer]
            kept = [m for m in cell if not m["diverged"]]
            entry = headline[problem][optimizer]
            assert entry["seeds"] == len(cell) == len(SEEDS)
            assert entry["diverged_runs"] == len(cell) - len(kept)
            for metric in ("final_train_loss", "final_test_accuracy"):
                values = [m[metric] for m in kept]
                n = len(values)
                mean = sum(values) / n
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
                half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
                assert entry[f"{metric}_mean"] == pytest.approx(mean, rel=1e-12)
                assert entry[f"{metric}_std"] == pytest.approx(std, rel=1e-9)
                row = table.loc[(problem, optimizer, metric)]
                assert row["n"] == n
                assert row["ci_low"] == pytest.approx(mean - half, rel=1e-9)
                assert row["ci_high"] == pytest.approx(mean + half, rel=1e-9)
    assert list(headline["digits_mlp"]["sgd"]) == [
        "final_train_loss_mean",
        "final_train_loss_std",
        "final_test_accuracy_mean",
        "final_test_accuracy_std",
        "diverged_runs",
        "seeds",
        "time_to_separating_target_epochs_mean",
        "time_to_separating_target_epochs_std",
        "time_to_separating_target_epochs_reached",
    ]  # no timing/steps.csv in the tree: no speed keys


@pytest.mark.parametrize(
    ("pick", "target_metric", "epochs_metric", "seconds_metric"),
    [
        (max, "train_loss_target", "time_to_target_epochs", "time_to_target_seconds"),
        (
            statistics.median,
            "separating_train_loss_target",
            "time_to_separating_target_epochs",
            "time_to_separating_target_seconds",
        ),
    ],
)
def test_time_to_target_follows_the_documented_rules(
    tree, pick, target_metric, epochs_metric, seconds_metric
):
    results, written = tree
    summary = _summary(results)
    targets = _independent_targets(written, pick)
    for problem, optimizer, seed in written:
        target = targets[problem]
        assert _value(summary, problem, optimizer, seed, target_metric) == pytest.approx(
            target, rel=1e-12
        )
        assert _value(summary, problem, optimizer, seed, "train_loss_target_from_params") == 0.0
        history = pd.read_csv(
            results / "default" / "runs" / problem / optimizer / str(seed) / "history.csv"
        )
        expected_epoch = expected_seconds = math.nan
        for _, row in history.iterrows():
            if math.isfinite(row["train_loss"]) and row["train_loss"] <= target:
                expected_epoch, expected_seconds = row["epoch"], row["wall_clock"]
                break
        got_epoch = _value(summary, problem, optimizer, seed, epochs_metric)
        got_seconds = _value(summary, problem, optimizer, seed, seconds_metric)
        np.testing.assert_equal(got_epoch, expected_epoch)
        np.testing.assert_allclose(got_seconds, expected_seconds, rtol=1e-12)
    # both outcomes occur in the fixture (the diverged runs never reach it)
    reached = summary[summary["metric"] == epochs_metric]["value"]
    assert reached.notna().any() and reached.isna().any()


def test_target_from_params_overrides_the_rule(tmp_path, seed):
    results = tmp_path / "results"
    write_results_tree(results, seed=seed)
    params = write_params(tmp_path / "params.yaml", train_loss_target={"digits_mlp": 1.5})
    assert _aggregate(results, params) == 0
    summary = _summary(results)
    assert _value(summary, "digits_mlp", "sgd", 0, "train_loss_target") == 1.5
    assert _value(summary, "digits_mlp", "sgd", 0, "separating_train_loss_target") == 1.5
    assert _value(summary, "digits_mlp", "sgd", 0, "train_loss_target_from_params") == 1.0
    assert _value(summary, "mnist1d_mlp", "sgd", 0, "train_loss_target_from_params") == 0.0


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        ({"mnist5k_mlp": 1.0}, ConfigError, "train_loss_target.mnist5k_mlp"),  # not in problems
        ({"no_such_problem": 1.0}, ConfigError, "train_loss_target.no_such_problem"),
        ({"digits_mlp": -1.0}, ConfigError, "-1.0"),
        ({"digits_mlp": "low"}, ConfigError, "low"),
    ],
)
def test_a_bad_target_is_a_user_error_and_writes_nothing(tmp_path, seed, target, error, match):
    results = tmp_path / "results"
    write_results_tree(results, seed=seed, seeds=(0,))
    params = write_params(tmp_path / "params.yaml", seeds=(0,), train_loss_target=target)
    with pytest.raises(error, match=match):
        _aggregate(results, params)
    assert not (results / "default" / "summary.csv").exists()
    assert not (results / "default" / "summary.json").exists()


def test_the_stage_reads_the_whole_params_file(tmp_path, seed, capsys):
    results = tmp_path / "results"
    write_results_tree(results, seed=seed, seeds=(0,))
    params = write_params(tmp_path / "params.yaml", seeds=(0,))
    params.write_text(params.read_text() + "aggregate_typo: 1\n")  # a section no stage knows
    assert run(aggregate.main, ["--results", str(results), "--params", str(params)]) == 2
    assert "aggregate_typo" in capsys.readouterr().err
    other = write_params(tmp_path / "paper.yaml", profile="paper")
    assert run(aggregate.main, ["--profile", "default", "--params", str(other)]) == 2
    assert "--profile 'default' differs from profile 'paper'" in capsys.readouterr().err
    assert not (results / "default" / "summary.csv").exists()
    # without --profile, params' profile; without --results, the params file's folder's results/
    params = write_params(tmp_path / "params.yaml", seeds=(0,))
    assert aggregate.main(["--params", str(params)]) == 0
    assert (results / "default" / "summary.csv").is_file()


def test_a_single_seed_has_an_undefined_interval_and_null_std(tmp_path, seed):
    results = tmp_path / "results"
    write_results_tree(results, seed=seed, seeds=(0,), diverged=())
    assert _aggregate(results, seeds=(0,)) == 0
    table = aggregation.statistics(_summary(results))
    loss = table[table["metric"] == "final_train_loss"]
    assert (loss["n"] == 1).all()
    assert loss[["std", "ci_low", "ci_high"]].isna().all().all()
    assert loss["mean"].notna().all()
    headline = json.loads((results / "default" / "summary.json").read_text())
    assert headline["digits_mlp"]["adam"]["final_train_loss_std"] is None
    assert isinstance(headline["digits_mlp"]["adam"]["final_train_loss_mean"], float)


def test_outputs_are_written_without_leftover_temporary_files(tree):
    results, _ = tree
    names = sorted(p.name for p in (results / "default").iterdir())
    assert names == ["runs", "summary.csv", "summary.json"]


@pytest.mark.parametrize("damage", ["percent_accuracy", "wrong_seed", "no_history", "no_runs"])
def test_bad_results_trees_are_user_errors_naming_the_problem(tmp_path, seed, damage, capsys):
    results = tmp_path / "results"
    write_results_tree(results, seed=seed, seeds=(0,))
    run_dir = results / "default" / "runs" / "digits_mlp" / "sgd" / "0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if damage == "percent_accuracy":
        metrics["final_test_accuracy"] = 97.5
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        match = "97.5"
    elif damage == "wrong_seed":
        metrics["seed"] = 7
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        match = "seed"
    elif damage == "no_history":
        (run_dir / "history.csv").unlink()
        match = "history.csv"
    else:
        match = "paper"
    profile = "paper" if damage == "no_runs" else "default"
    params = write_params(tmp_path / "params.yaml", profile=profile, seeds=(0,))
    with pytest.raises(UsageError, match=match):
        _aggregate(results, params, profile)
    argv = ["--results", str(results), "--params", str(params)]
    assert run(aggregate.main, argv) == 2
    err = capsys.readouterr().err
    assert ": error: " in err and match in err and "Traceback" not in err
    assert sorted(p.name for p in (results / "default").iterdir()) == ["runs"]


def _cells(table: pd.DataFrame) -> set[tuple[str, str, int]]:
    return set(table[["problem", "optimizer", "seed"]].itertuples(index=False, name=None))


def test_only_the_cells_of_params_are_read(tmp_path, seed):
    """Folders of no params cell (a seed dropped from ``seeds``, an optimizer section removed)
    are not read at all: not aggregated, not checked, no say in the training-loss target."""
    results = tmp_path / "results"
    layout = {"digits_mlp": ("sgd", "adam")}
    written = write_results_tree(results, seed=seed, layout=layout, seeds=(0, 1), diverged=())
    (results / "default" / "runs" / "digits_mlp" / "adam" / "0" / "metrics.json").write_text("{")
    assert _aggregate(results, layout={"digits_mlp": ("sgd",)}, seeds=(1,)) == 0
    summary = _summary(results)
    assert _cells(summary) == {("digits_mlp", "sgd", 1)}
    headline = json.loads((results / "default" / "summary.json").read_text())
    assert list(headline) == ["@profile", "digits_mlp"] and list(headline["digits_mlp"]) == ["sgd"]
    assert headline["digits_mlp"]["sgd"]["seeds"] == 1
    final = written[("digits_mlp", "sgd", 1)]["final_train_loss"]
    assert _value(summary, "digits_mlp", "sgd", 1, "train_loss_target") == final


def test_a_params_cell_without_a_run_is_a_user_error_naming_it(tmp_path, seed, capsys):
    results = tmp_path / "results"
    write_results_tree(results, seed=seed, layout={"digits_mlp": ("sgd", "adam")}, seeds=(0,))
    layout = {"digits_mlp": ("sgd", "adam", "cauchy")}  # cauchy never ran, seed 1 neither
    params = write_params(tmp_path / "params.yaml", layout=layout, seeds=(0, 1))
    assert run(aggregate.main, ["--results", str(results), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert ": error: " in err and "Traceback" not in err
    missing = (
        "digits_mlp/adam/1",
        "digits_mlp/cauchy/0",
        "digits_mlp/cauchy/1",
        "digits_mlp/sgd/1",
    )
    assert all(cell in err for cell in missing), err
    assert "digits_mlp/sgd/0" not in err
    assert sorted(p.name for p in (results / "default").iterdir()) == ["runs"]


def _cut_mid_row(path: Path) -> None:
    """The last line of ``path`` cut in its middle, as by a writer killed while writing it."""
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    path.write_text(text[: len(text) - len(last) // 2 - 1])


def _drop_last_fields(path: Path) -> None:
    """The last line of ``path`` with only its first 3 fields (then a newline)."""
    lines = path.read_text().splitlines()
    lines[-1] = ",".join(lines[-1].split(",")[:3])
    path.write_text("\n".join(lines) + "\n")


CUTS = {
    "history_mid_row": ("history.csv", _cut_mid_row, "newline"),
    "history_no_final_newline": (
        "history.csv",
        lambda path: path.write_text(path.read_text()[:-1]),
        "newline",
    ),
    "history_short_last_row": ("history.csv", _drop_last_fields, "3 fields, the header 8"),
    "probe_short_last_row": ("probe.csv", _drop_last_fields, "3 fields, the header 7"),
    "metrics_half_written": (
        "metrics.json",
        lambda path: path.write_text(path.read_text()[:100]),
        "not complete JSON",
    ),
}


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_file_cut_short_is_a_user_error_naming_it(tmp_path, seed, cut, capsys):
    """A run file cut mid-row is refused, instead of a summary built from its partial row."""
    results = tmp_path / "results"
    write_results_tree(results, seed=seed, seeds=(0,))
    name, damage, message = CUTS[cut]
    path = results / "default" / "runs" / "digits_mlp" / "sgd" / "0" / name
    damage(path)
    params = write_params(tmp_path / "params.yaml", seeds=(0,))
    assert run(aggregate.main, ["--results", str(results), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert ": error: " in err and str(path) in err and message in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in (results / "default").iterdir()) == ["runs"]


def _run(optimizer: str, losses: list[float], seed: int = 0, diverged: bool = False):
    history = pd.DataFrame({"epoch": range(len(losses)), "train_loss": losses})
    metrics = {"final_train_loss": losses[-1], "diverged": diverged}
    return Run("p_mlp", optimizer, seed, Path("."), metrics, history)


def test_an_optimizer_that_never_lowers_the_loss_does_not_set_the_target():
    rng = np.random.default_rng()
    start = float(rng.uniform(2.0, 3.0))
    fast = [start, start * 0.3, start * 0.1]
    slow = [start, start * 0.6, start * 0.4]
    stuck = [start, start, start * 1.01]  # a run that never moved (or went up)
    runs = [_run("fast", fast), _run("slow", slow), _run("stuck", stuck)]
    worst = aggregation.train_loss_targets(runs, rule=aggregation.WORST_TARGET_RULE)["p_mlp"]
    assert worst[0] == pytest.approx(slow[-1]) and not worst[1]
    (target, from_params) = aggregation.train_loss_targets(runs)["p_mlp"]
    assert target == pytest.approx((fast[-1] + slow[-1]) / 2) and not from_params
    assert [aggregation.loss_decreased(r.history) for r in runs] == [True, True, False]
    assert not aggregation.loss_decreased(pd.DataFrame({"train_loss": [2.0, float("nan")]}))
    assert not aggregation.loss_decreased(pd.DataFrame({"train_loss": [2.0]}))


def _reaching(runs: list[Run], target: float) -> set[str]:
    return {
        run.optimizer
        for run in runs
        if math.isfinite(aggregation.time_to_target(run.history.assign(wall_clock=0.0), target)[0])
    }


def test_the_separating_target_separates_where_the_earlier_rule_does_not():
    """Three optimizers whose seeds end at the same loss: the earlier rule's target (the worst
    optimizer's mean) is reached by every run; the median is reached by the two faster ones only,
    at different epochs."""
    rng = np.random.default_rng()
    start = float(rng.uniform(2.0, 3.0))
    curves = {
        "fast": [start, start * 0.2, start * 0.05, start * 0.02],
        "middle": [start, start * 0.5, start * 0.2, start * 0.1],
        "slow": [start, start * 0.8, start * 0.6, start * 0.4],
    }
    runs = [_run(o, c, seed) for o, c in curves.items() for seed in (0, 1)]
    worst = aggregation.train_loss_targets(runs, rule=aggregation.WORST_TARGET_RULE)["p_mlp"][0]
    assert _reaching(runs, worst) == set(curves)  # reached by construction
    median = aggregation.train_loss_targets(runs)["p_mlp"][0]
    assert median == pytest.approx(start * 0.1)
    assert _reaching(runs, median) == {"fast", "middle"}
    epochs = {r.optimizer: aggregation.time_to_target(r.history.assign(wall_clock=0.0), median)[0]
              for r in runs}  # fmt: skip
    assert epochs["fast"] == 2.0 and epochs["middle"] == 3.0 and math.isnan(epochs["slow"])


def _wide(values: dict[tuple[str, str, int], dict[str, float]]) -> pd.DataFrame:
    """A wide table (index problem, optimizer, seed) from {(p, o, s): {metric: value}}."""
    frame = pd.DataFrame.from_dict(values, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["problem", "optimizer", "seed"])
    return frame


def test_paired_interval_matches_scipy_and_drops_diverged_pairs():
    rng = np.random.default_rng()
    seeds = range(6)
    ours, base = rng.normal(1.0, 0.3, 6), rng.normal(1.2, 0.3, 6)
    accuracy = rng.uniform(0.5, 0.9, (2, 6))
    values = {}
    for seed in seeds:
        diverged = float(seed == 4)  # the baseline diverged on seed 4
        values[("p", "partitioned_newton", seed)] = {
            "final_train_loss": ours[seed], "final_test_accuracy": accuracy[0, seed],
            "diverged": 0.0,
        }  # fmt: skip
        values[("p", "sgd", seed)] = {
            "final_train_loss": math.nan if diverged else base[seed],
            "final_test_accuracy": accuracy[1, seed], "diverged": diverged,
        }  # fmt: skip
    found = {c.metric: c for c in comparisons.paired_comparisons(_wide(values))}
    kept = [s for s in seeds if s != 4]
    for metric, (a, b) in {
        "final_train_loss": (ours[kept], base[kept]),
        "final_test_accuracy": (accuracy[0, kept], accuracy[1, kept]),
    }.items():
        reference = stats.ttest_rel(a, b).confidence_interval(0.95)
        c = found[metric]
        assert (c.ours, c.baseline, c.pairs, c.dropped) == ("partitioned_newton", "sgd", 5, 1)
        assert c.difference == pytest.approx(float(np.mean(a - b)), rel=1e-12)
        assert c.ci_low == pytest.approx(reference.low, rel=1e-9)
        assert c.ci_high == pytest.approx(reference.high, rel=1e-9)
        assert c.excludes_zero == (reference.low > 0 or reference.high < 0)
        word = "lower" if c.difference < 0 else "higher"
        assert c.verdict == (word if c.excludes_zero else "no clear difference")


def test_compared_pairs_are_ours_and_its_variants_against_every_baseline():
    names = ["sgd", "cauchy", "kfac", "partitioned_newton_diag", "partitioned_newton", "adam"]
    assert comparisons.compared_pairs(names) == [
        (ours, base)
        for ours in ("partitioned_newton", "partitioned_newton_diag", "cauchy")
        for base in ("adam", "kfac", "sgd")
    ]
    assert comparisons.compared_pairs(["sgd", "adam"]) == []


def test_summary_json_comparisons_are_the_paired_ones(tree):
    results, written = tree
    headline = json.loads((results / "default" / "summary.json").read_text())
    entry = headline["digits_mlp"]["comparisons"]["partitioned_newton"]["adam"]["final_train_loss"]
    pairs = [
        (written[("digits_mlp", "partitioned_newton", s)], written[("digits_mlp", "adam", s)])
        for s in SEEDS
    ]
    kept = [(a, b) for a, b in pairs if not (a["diverged"] or b["diverged"])]
    assert entry["pairs"] == len(kept) and entry["dropped_pairs"] == len(pairs) - len(kept) == 1
    a, b = (np.array([p[i]["final_train_loss"] for p in kept]) for i in (0, 1))
    reference = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert entry["difference"] == pytest.approx(float(np.mean(a - b)), rel=1e-12)
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(tuple(reference), rel=1e-9)
    assert set(headline["digits_mlp"]["comparisons"]) == {
        "partitioned_newton", "partitioned_newton_diag", "cauchy"
    }  # fmt: skip
    assert set(headline["digits_mlp"]["comparisons"]["cauchy"]) == {"sgd", "adam"}


def test_performance_profile_on_a_hand_computed_case():
    """Epochs to target, 2 seeds each, 3 problems (∞: never reached, d: diverged).

    p1: a (2, 2) → 2, b (4, 4) → 4, c (∞, ∞) → ∞       ratios a 1, b 2, c ∞
    p2: a (3, 5) → 4, b (2, 2) → 2, c (d, 8) → ∞       ratios a 2, b 1, c ∞
    p3: a (6, 6) → 6, b (∞, ∞) → ∞, c (3, 3) → 3       ratios a 2, b ∞, c 1
    """
    times = {
        "p1": {"a": (2, 2), "b": (4, 4), "c": (math.nan, math.nan)},
        "p2": {"a": (3, 5), "b": (2, 2), "c": (1, 8)},
        "p3": {"a": (6, 6), "b": (math.nan, math.nan), "c": (3, 3)},
    }
    values = {
        (p, o, s): {"t": float(t[s]), "diverged": float((p, o, s) == ("p2", "c", 0))}
        for p, by_optimizer in times.items()
        for o, t in by_optimizer.items()
        for s in (0, 1)
    }
    profile = comparisons.performance_profile(_wide(values), "t")
    inf = math.inf
    expected = pd.DataFrame(
        {"p1": [1.0, 2.0, inf], "p2": [2.0, 1.0, inf], "p3": [2.0, inf, 1.0]}, index=["a", "b", "c"]
    )
    pd.testing.assert_frame_equal(profile.ratios, expected, check_names=False)
    assert profile.rho(1.0).to_dict() == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert profile.rho(2.0).to_dict() == pytest.approx({"a": 1.0, "b": 2 / 3, "c": 1 / 3})
    # score: each problem with r ≤ 16 adds (4 − log2 r) / 4 / 3
    assert profile.score().to_dict() == pytest.approx(
        {"a": (1 + 0.75 + 0.75) / 3, "b": (0.75 + 1) / 3, "c": 1 / 3}
    )
    assert profile.ranking() == ["a", "b", "c"]


def test_performance_profile_edge_cases():
    """Nobody reaches the target: ∞ for all; the fastest at epoch 0: 1 for it, ∞ for the rest."""
    values = {
        ("p1", "a", 0): {"t": math.nan, "diverged": 0.0},
        ("p1", "b", 0): {"t": math.nan, "diverged": 0.0},
        ("p2", "a", 0): {"t": 0.0, "diverged": 0.0},
        ("p2", "b", 0): {"t": 2.0, "diverged": 0.0},
    }
    ratios = comparisons.performance_profile(_wide(values), "t").ratios
    assert ratios.to_dict() == {
        "p1": {"a": math.inf, "b": math.inf},
        "p2": {"a": 1.0, "b": math.inf},
    }


# ----------------------------------------------------------------------------- quality metric
LM_DIVERGED = ((LM_PROBLEM, "adam", 1, 2, math.inf),)
LM_STATISTICS = ("final_train_loss", "final_test_perplexity")


@pytest.fixture
def mixed(tmp_path: Path, seed: int, monkeypatch) -> tuple[Path, dict]:
    """A classifier (accuracy) and a language model (perplexity) in one results tree."""
    register_lm_problem(monkeypatch)
    results = tmp_path / "results"
    diverged = (DIVERGED[0], *LM_DIVERGED)
    written = write_results_tree(results, seed=seed, layout=MIXED_LAYOUT, diverged=diverged)
    assert _aggregate(results, layout=MIXED_LAYOUT) == 0
    return results, written


def test_a_language_models_rows_name_its_perplexity_where_a_classifiers_name_accuracy(mixed):
    results, written = mixed
    summary = _summary(results)
    perplexity_names = [m.replace("accuracy", "perplexity") for m in aggregation.RUN_METRICS]
    for (problem, optimizer, seed), metrics in written.items():
        rows = summary[
            (summary["problem"] == problem)
            & (summary["optimizer"] == optimizer)
            & (summary["seed"] == seed)
        ]
        expected = perplexity_names if problem == LM_PROBLEM else list(aggregation.RUN_METRICS)
        assert rows["metric"].tolist() == expected
        quality = "perplexity" if problem == LM_PROBLEM else "accuracy"
        for key in (f"final_test_{quality}", f"best_test_{quality}"):
            np.testing.assert_equal(_value(summary, problem, optimizer, seed, key), metrics[key])
    history = pd.read_csv(results / "default" / "runs" / LM_PROBLEM / "sgd" / "0" / "history.csv")
    best = _value(summary, LM_PROBLEM, "sgd", 0, "best_test_perplexity")
    assert best == history["test_perplexity"].min() < history["test_perplexity"].iloc[0]
    assert aggregation.quality_metrics(summary) == {
        "digits_mlp": schema.ACCURACY,
        LM_PROBLEM: schema.PERPLEXITY,
    }


def test_summary_json_of_a_language_model_holds_its_perplexity(mixed):
    results, written = mixed
    headline = json.loads((results / "default" / "summary.json").read_text())
    summary = _summary(results)
    for optimizer in MIXED_LAYOUT[LM_PROBLEM]:
        entry = headline[LM_PROBLEM][optimizer]
        assert "final_test_accuracy_mean" not in entry
        cell = [m for (p, o, _), m in written.items() if p == LM_PROBLEM and o == optimizer]
        kept = [m for m in cell if not m["diverged"]]
        for metric in LM_STATISTICS:
            values = np.array([m[metric] for m in kept])
            assert entry[f"{metric}_mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert entry[f"{metric}_std"] == pytest.approx(values.std(ddof=1), rel=1e-9)
        # time to target (epochs): over the non-diverged runs that reached it
        epochs = [
            _value(summary, LM_PROBLEM, optimizer, m["seed"], "time_to_separating_target_epochs")
            for m in kept
        ]
        reached = [e for e in epochs if math.isfinite(e)]
        assert entry["time_to_separating_target_epochs_reached"] == len(reached)
        mean = entry["time_to_separating_target_epochs_mean"]
        assert mean == (pytest.approx(np.mean(reached), rel=1e-12) if reached else None)
    assert "final_test_accuracy_mean" in headline["digits_mlp"]["sgd"]
    assert "final_test_perplexity_mean" not in headline["digits_mlp"]["sgd"]


def test_comparisons_use_each_problems_metric_with_its_direction(mixed):
    """Ours lowers the loss fastest in the fixture: a higher accuracy on the classifier and a
    lower perplexity on the language model, both better."""
    results, written = mixed
    headline = json.loads((results / "default" / "summary.json").read_text())
    for problem, metric, sign in ((LM_PROBLEM, "final_test_perplexity", -1),
                                  ("digits_mlp", "final_test_accuracy", 1)):  # fmt: skip
        entry = headline[problem]["comparisons"]["partitioned_newton"]["sgd"]
        assert set(entry) == {"final_train_loss", metric}
        a, b = (
            np.array([written[(problem, o, s)][metric] for s in SEEDS])
            for o in ("partitioned_newton", "sgd")
        )
        reference = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert entry[metric]["difference"] == pytest.approx(float(np.mean(a - b)), rel=1e-12)
        assert (entry[metric]["ci_low"], entry[metric]["ci_high"]) == pytest.approx(
            tuple(reference), rel=1e-9
        )
        assert np.sign(entry[metric]["difference"]) == sign and entry[metric]["excludes_zero"]
    summary = _summary(results)
    wide = aggregation.wide_table(summary)
    found = comparisons.paired_comparisons(wide, aggregation.quality_metrics(summary))
    better = {(c.problem, c.metric): c.ours_better for c in found
              if (c.ours, c.baseline) == ("partitioned_newton", "sgd")}  # fmt: skip
    assert better == {
        (LM_PROBLEM, "final_train_loss"): True,
        (LM_PROBLEM, "final_test_perplexity"): True,
        ("digits_mlp", "final_train_loss"): True,
        ("digits_mlp", "final_test_accuracy"): True,
    }
    # without the metrics, each problem's columns tell (its own has numbers, the other's none)
    assert [(c.problem, c.metric) for c in comparisons.paired_comparisons(wide)] == [
        (c.problem, c.metric) for c in found
    ]


@pytest.mark.parametrize("damage", ["low_perplexity", "mixed_metrics", "no_quality_metric"])
def test_a_broken_language_model_record_is_a_user_error(tmp_path, seed, damage, monkeypatch):
    register_lm_problem(monkeypatch)
    results = tmp_path / "results"
    write_results_tree(results, seed=seed, layout=MIXED_LAYOUT, seeds=(0, 1), diverged=())
    run_dir = results / "default" / "runs" / LM_PROBLEM / "sgd" / "1"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if damage == "low_perplexity":
        metrics["final_test_perplexity"], match = 0.5, "test perplexity 0.5 is not ≥ 1"
    elif damage == "mixed_metrics":
        del metrics["final_test_perplexity"], metrics["best_test_perplexity"]
        metrics["final_test_accuracy"] = metrics["best_test_accuracy"] = 0.5
        history = pd.read_csv(run_dir / "history.csv").rename(
            columns={"test_perplexity": "test_accuracy"}
        )
        history["test_accuracy"] = 0.5
        history.to_csv(run_dir / "history.csv", index=False)
        match = "records its perplexity.*its accuracy"
    else:
        del metrics["final_test_perplexity"]
        match = "found none"
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UsageError, match=match):
        _aggregate(results, layout=MIXED_LAYOUT, seeds=(0, 1))
    assert sorted(p.name for p in (results / "default").iterdir()) == ["runs"]


def test_a_problem_name_that_could_collide_with_summary_jsons_keys_is_refused(tmp_path):
    with pytest.raises(UsageError, match="may not start with '@'"):
        aggregation.aggregate(tmp_path, "default", [("@profile", "sgd", 0)])


# ----------------------------------------------------------------------------- speed figures
STEPS_HEADER = ("problem,optimizer,seconds,gradients,vs_sgd,plain_step_gradients,"
                "recomputation_gradients_amortised,peak_memory_mb,rounds,period")  # fmt: skip


def _steps_csv(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A timing/steps.csv with the timing stage's columns; rows (problem, optimizer, vs_sgd,
    peak_memory_mb) as text ('' = not measured)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [STEPS_HEADER] + [f"{p},{o},0.001,1.5,{v},1.4,0.0,{m},3,10" for p, o, v, m in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_summary_json_carries_the_timing_stages_speed_figures(tmp_path, seed, capsys):
    results = tmp_path / "results"
    layout = {"digits_mlp": ("sgd", "adam", "partitioned_newton")}
    write_results_tree(results, seed=seed, layout=layout, seeds=(0, 1), diverged=())
    steps = results / "default" / "timing" / "steps.csv"
    _steps_csv(steps, [("digits_mlp", "sgd", "1.0", "7.5"), ("digits_mlp", "adam", "1.42", ""),
                       ("mnist1d_mlp", "sgd", "1.0", "3.0")])  # fmt: skip
    assert _aggregate(results, layout=layout, seeds=(0, 1)) == 0
    assert f"speed from {steps}" in capsys.readouterr().out
    headline = json.loads((results / "default" / "summary.json").read_text())
    cells = {o: e for o, e in headline["digits_mlp"].items() if o != "comparisons"}
    speed = {o: (e["step_cost_vs_sgd"], e["peak_memory_mb"]) for o, e in cells.items()}
    assert speed == {"sgd": (1.0, 7.5), "adam": (1.42, None), "partitioned_newton": (None, None)}
    # --timing names another file; a missing or broken one is a user error, nothing written
    other = _steps_csv(
        tmp_path / "elsewhere.csv", [("digits_mlp", "partitioned_newton", "2.5", "11")]
    )
    params = tmp_path / "params.yaml"  # written by _aggregate
    argv = ["--results", str(results), "--params", str(params)]
    assert aggregate.main([*argv, "--timing", str(other)]) == 0
    headline = json.loads((results / "default" / "summary.json").read_text())
    assert headline["digits_mlp"]["partitioned_newton"]["step_cost_vs_sgd"] == 2.5
    assert headline["digits_mlp"]["sgd"]["step_cost_vs_sgd"] is None
    before = (results / "default" / "summary.json").read_bytes()
    broken = tmp_path / "broken.csv"
    broken.write_text("problem,optimizer,vs_sgd\ndigits_mlp,sgd,1.0\n")
    repeated = _steps_csv(tmp_path / "repeated.csv", [("digits_mlp", "sgd", "1", "2")] * 2)
    for path, match in ((tmp_path / "absent.csv", "no such file"),
                        (broken, "lacks the columns \\['peak_memory_mb'\\]"),
                        (repeated, "twice")):  # fmt: skip
        assert run(aggregate.main, [*argv, "--timing", str(path)]) == 2
        assert re.search(match, capsys.readouterr().err)
        assert (results / "default" / "summary.json").read_bytes() == before


def test_without_timing_results_summary_json_has_no_speed_keys(tree):
    results, _ = tree
    headline = json.loads((results / "default" / "summary.json").read_text())
    for problem in aggregation.problem_names(headline):
        for optimizer, entry in headline[problem].items():
            if optimizer != "comparisons":
                assert "step_cost_vs_sgd" not in entry and "peak_memory_mb" not in entry
