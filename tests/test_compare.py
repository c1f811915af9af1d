"""``python -m bench.compare``: the regression gate, on synthetic summaries and on a real pair.

Synthetic sides are written in the pipeline's layout (``<tmp>/results/default/summary.csv`` and
``timing/steps.csv`` beside it), three seeds per cell unless a test says otherwise. Every expected
verdict is argued from the numbers the test writes, never read back from bench.compare.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from bench import compare
from bench.cli import run
from bench.errors import ConfigError
from bench.studies.timing import STEP_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"  # profile default, no compare section: the default tolerances
SEEDS = (0, 1, 2)
# Per-seed values of one cell that nothing in a test changes.
BASE = {
    "final_train_loss": [0.10, 0.11, 0.09],
    "final_test_loss": [0.2, 0.21, 0.19],
    "final_test_accuracy": [0.90, 0.91, 0.89],
    "time_to_target_epochs": [3.0, 3.0, 4.0],
    "diverged": [0.0, 0.0, 0.0],
    "train_loss_target": [0.2, 0.2, 0.2],
}
CELLS = [("digits_mlp", "sgd"), ("digits_mlp", "adam"), ("digits_mlp", "myopt")]
MINE = ("digits_mlp", "myopt")
SPEED = {"sgd": (1.0, 7.5), "adam": (1.4, 8.5), "myopt": (2.0, 11.0)}  # vs_sgd, peak MB


def summary_text(changes: Mapping | None = None, seeds: Sequence[int] = SEEDS, cells=CELLS) -> str:
    """A tidy summary.csv: BASE for every cell, ``changes[cell][metric]`` replacing its values."""
    lines = [",".join(compare.schema.SUMMARY_COLUMNS)]
    for cell in cells:
        metrics = BASE | dict((changes or {}).get(cell, {}))
        for index, seed in enumerate(seeds):
            lines += [f"{cell[0]},{cell[1]},{seed},{metric},{values[index]!r}"
                      for metric, values in metrics.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def steps_text(speed: Mapping[str, tuple[float, float]] = SPEED) -> str:
    """A timing steps.csv with every column of STEP_COLUMNS (only two of them are compared)."""
    lines = [",".join(STEP_COLUMNS)]
    for optimizer, (vs_sgd, memory) in speed.items():
        row = {"problem": "digits_mlp", "optimizer": optimizer, "seconds": 0.001,
               "gradients": 2.6, "vs_sgd": vs_sgd, "plain_step_gradients": 1.3,
               "recomputation_gradients_amortised": 0.0, "peak_memory_mb": memory, "rounds": 3,
               "period": 10}  # fmt: skip
        lines.append(",".join(str(row[column]) for column in STEP_COLUMNS))
    return "\n".join(lines) + "\n"


def write_side(folder: Path, summary: str, steps: str | None = None, profile="default") -> Path:
    """``folder/results/<profile>/summary.csv`` (and its timing/steps.csv); the summary's path."""
    path = folder / "results" / profile / "summary.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary)
    if steps is not None:
        (path.parent / "timing").mkdir(exist_ok=True)
        (path.parent / "timing" / "steps.csv").write_text(steps)
    return path


def run_compare(*argv, params: Path = PARAMS) -> tuple[int, str, str]:
    """bench.compare's exit status, stdout and stderr, in process."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = run(compare.main, ["--params", str(params), *map(str, argv)])
    return status, out.getvalue(), err.getvalue()


def pair(tmp_path: Path, changes=None, speed=None, **current) -> tuple[Path, Path]:
    """(baseline, current) summaries: BASE everywhere, ``changes`` on the current side."""
    steps = None if speed is None else steps_text()
    baseline = write_side(tmp_path / "base", summary_text(), steps)
    later = None if speed is None else steps_text(speed)
    return baseline, write_side(tmp_path / "cur", summary_text(changes, **current), later)


def rows_of(record: dict, cell=MINE) -> dict[str, dict]:
    return {
        row["measure"]: row for row in record["rows"] if (row["problem"], row["optimizer"]) == cell
    }


def compared(tmp_path, changes=None, speed=None, **current) -> tuple[int, dict]:
    status, out, _ = run_compare(*pair(tmp_path, changes, speed, **current), "--json")
    return status, json.loads(out)


# ------------------------------------------------------------------------- the verdicts
def test_a_real_regression_is_caught(tmp_path):
    # every seed's loss +50% (+0.048..+0.055): beyond the 5% tolerance and beyond the spread of
    # the paired differences (their one-sided bound is far above zero)
    status, record = compared(tmp_path, {MINE: {"final_train_loss": [0.15, 0.165, 0.138]}})
    assert status == 1 and record["regressed"]
    row = rows_of(record)["final_train_loss"]
    assert row["verdict"] == "regressed" and row["test"] == "paired t, n=3"
    assert row["low"] > 0 and row["change"] == pytest.approx((0.05 + 0.055 + 0.048) / 3)
    assert record["cells"] == {"compared": 3, "regressed": 1, "improved": 0, "unchanged": 2}
    others = [r for r in record["rows"] if (r["problem"], r["optimizer"]) != MINE]
    assert {r["verdict"] for r in others} == {"unchanged"}


def test_noise_within_the_seeds_spread_is_not_flagged(tmp_path):
    # per-seed changes +35%, -23%, +11%: the mean (+6.7% of the baseline mean) is beyond the 5%
    # tolerance, so the tolerance alone would flag it, but the paired differences scatter across 0
    loss = [0.135, 0.085, 0.10]
    status, record = compared(tmp_path, {MINE: {"final_train_loss": loss}})
    row = rows_of(record)["final_train_loss"]
    assert status == 0 and not record["regressed"]
    assert row["change"] / row["baseline"] > 0.05 and row["low"] < 0 < row["high"]
    assert (row["verdict"], row["reason"]) == ("unchanged", "within the seeds' spread")


def test_an_improvement_is_not_flagged(tmp_path):
    changes = {MINE: {"final_train_loss": [0.05, 0.06, 0.045],
                      "final_test_accuracy": [0.95, 0.96, 0.94]}}  # fmt: skip
    status, record = compared(tmp_path, changes)
    rows = rows_of(record)
    assert status == 0
    assert (
        rows["final_train_loss"]["verdict"] == rows["final_test_accuracy"]["verdict"] == "improved"
    )
    assert record["cells"]["improved"] == 1 and record["cells"]["regressed"] == 0


def test_accuracy_is_gated_by_an_absolute_tolerance(tmp_path):
    within = compared(tmp_path / "a", {MINE: {"final_test_accuracy": [0.895, 0.905, 0.885]}})
    beyond = compared(tmp_path / "b", {MINE: {"final_test_accuracy": [0.87, 0.88, 0.86]}})
    assert within[0] == 0 and rows_of(within[1])["final_test_accuracy"]["reason"] == ""
    assert beyond[0] == 1 and rows_of(beyond[1])["final_test_accuracy"]["verdict"] == "regressed"


def _language_model(text: str, perplexity: Sequence[float]) -> str:
    """A summary text whose cell MINE is a language model's: final test perplexity in place of
    accuracy (the problem's quality metric, bench.schema.QUALITY_METRICS)."""
    lines = [line for line in text.splitlines()
             if not (line.startswith(",".join(MINE) + ",") and "_accuracy," in line)]  # fmt: skip
    lines += [f"{MINE[0]},{MINE[1]},{seed},final_test_perplexity,{value!r}"
              for seed, value in zip(SEEDS, perplexity, strict=True)]  # fmt: skip
    return "\n".join(lines) + "\n"


def test_a_language_models_perplexity_is_gated_lower_is_better(tmp_path):
    base = [4.0, 4.1, 3.9]
    for name, current, verdict in (
        ("worse", [4.6, 4.7, 4.5], "regressed"), ("better", [3.5, 3.6, 3.4], "improved"),
        ("noise", [4.05, 4.0, 4.0], "unchanged"),
    ):  # fmt: skip
        baseline = write_side(tmp_path / name / "a", _language_model(summary_text(), base))
        later = write_side(tmp_path / name / "b", _language_model(summary_text(), current))
        status, out, _ = run_compare(baseline, later, "--json")
        rows = rows_of(json.loads(out))
        assert "final_test_accuracy" not in rows
        assert rows["final_test_perplexity"]["verdict"] == verdict, name
        assert status == (1 if verdict == "regressed" else 0), name
    mixed = write_side(tmp_path / "mixed", summary_text())  # accuracy on one side only
    status, _, err = run_compare(baseline, mixed)
    assert status == 2 and "other quality metrics" in err


def test_more_diverged_seeds_is_a_regression(tmp_path):
    # seed 2 diverges: its values leave the seed tests (two pairs left), its count grows
    status, record = compared(tmp_path, {MINE: {"diverged": [0.0, 0.0, 1.0]}})
    rows = rows_of(record)
    assert status == 1
    assert rows["diverged"]["verdict"] == "regressed"
    assert (rows["diverged"]["baseline"], rows["diverged"]["current"]) == (0, 1)
    assert rows["final_train_loss"]["test"] == "paired t, n=2"


def test_time_to_target_missed_by_more_seeds_is_a_regression(tmp_path):
    nan = float("nan")
    status, record = compared(tmp_path, {MINE: {"time_to_target_epochs": [3.0, nan, 4.0]}})
    rows = rows_of(record)
    assert status == 1 and rows[compare.UNREACHED]["verdict"] == "regressed"
    assert rows["time_to_target_epochs"]["verdict"] == "unchanged"  # the two seeds that reach it


def test_time_to_target_is_not_compared_against_a_moved_target(tmp_path):
    # every optimizer's target moved (derived from the worst optimizer): epochs to another target
    # say nothing, even when they doubled
    moved = {"train_loss_target": [0.3] * 3, "time_to_target_epochs": [6.0, 6.0, 8.0]}
    status, record = compared(tmp_path, {cell: moved for cell in CELLS})
    row = rows_of(record)["time_to_target_epochs"]
    assert status == 0 and row["verdict"] == "not compared" and "target moved" in row["reason"]


def test_unpaired_seeds_use_welch_and_one_seed_the_tolerance_alone(tmp_path):
    status, record = compared(tmp_path / "welch", seeds=(3, 4, 5))
    assert status == 0 and rows_of(record)["final_train_loss"]["test"] == "Welch t, n=3/3"
    base = write_side(tmp_path / "one" / "b", summary_text(seeds=(0,)))
    worse = {MINE: {"final_train_loss": [0.12, 0.11, 0.09]}}  # +20% on the only seed
    cur = write_side(tmp_path / "one" / "c", summary_text(worse, seeds=(0,)))
    status, out, _ = run_compare(base, cur, "--json")
    row = rows_of(json.loads(out))["final_train_loss"]
    assert status == 1 and row["test"] == "tolerance only, n=1"
    assert (row["verdict"], row["reason"]) == ("regressed", "beyond the tolerance")


def test_a_speed_regression_is_caught_from_steps_csv(tmp_path):
    slower = SPEED | {"myopt": (3.0, 11.5)}  # step cost x SGD x1.5 (> 1.3), memory x1.05 (< 1.2)
    status, record = compared(tmp_path, speed=slower)
    rows = rows_of(record)
    assert status == 1
    assert rows["vs_sgd"]["verdict"] == "regressed" and rows["vs_sgd"]["change"] == 1.5
    assert rows["peak_memory_mb"]["verdict"] == "unchanged"
    assert record["current"]["steps"].endswith(os.path.join("timing", "steps.csv"))
    faster = compared(tmp_path / "f", speed=SPEED | {"myopt": (1.2, 11.0)})
    assert faster[0] == 0 and rows_of(faster[1])["vs_sgd"]["verdict"] == "improved"


def test_speed_is_not_compared_without_steps_on_both_sides(tmp_path):
    baseline = write_side(tmp_path / "b", summary_text(), steps_text())
    current = write_side(tmp_path / "c", summary_text())
    status, out, _ = run_compare(baseline, current)
    assert status == 0 and "note: speed not compared: no timing/steps.csv beside" in out
    measures = {
        row["measure"] for row in json.loads(run_compare(baseline, current, "--json")[1])["rows"]
    }
    assert not measures & {"vs_sgd", "peak_memory_mb"}


def test_cells_on_one_side_are_reported(tmp_path):
    baseline = write_side(tmp_path / "b", summary_text(cells=CELLS[:2]))
    current = write_side(tmp_path / "c", summary_text(cells=CELLS[1:]))
    status, out, _ = run_compare(baseline, current)
    assert status == 0
    assert "note: only in the baseline summary.csv: digits_mlp/sgd (not compared)" in out
    assert "note: only in the current summary.csv: digits_mlp/myopt (not compared)" in out
    assert out.rstrip().endswith("1 cells compared: 0 regressed, 0 improved, 1 unchanged")


# ------------------------------------------------------------------------- output formats
def test_plain_markdown_and_json_outputs(tmp_path):
    sides = pair(tmp_path, {MINE: {"final_train_loss": [0.15, 0.165, 0.138]}}, speed=SPEED)
    status, plain, _ = run_compare(*sides)
    lines = plain.splitlines()
    header = next(line for line in lines if line.startswith("problem"))
    assert header.split() == list(compare.HEADER)
    row = next(line for line in lines if "myopt" in line and "final_train_loss" in line)
    assert row.index("paired t") == header.index("test")  # aligned columns
    assert lines[-1] == "3 cells compared: 1 regressed, 0 improved, 2 unchanged"
    status_md, markdown, _ = run_compare(*sides, "--md")
    assert status == status_md == 1
    assert markdown.startswith("**bench.compare: 3 cells compared: 1 regressed")
    assert "| problem | optimizer | measure |" in markdown and "<details>" in markdown
    assert "**regressed (beyond the tolerance and the seeds' spread)** |" in markdown
    _, text, _ = run_compare(*sides, "--json")
    record = json.loads(text)
    assert record["profile"] == "default" and record["regressed"] is True
    assert record["settings"] == {
        "loss_tolerance": 0.05, "accuracy_tolerance": 0.01, "perplexity_tolerance": 0.05,
        "epochs_tolerance": 0.25, "speed_tolerance": 0.3, "memory_tolerance": 0.2,
        "target_tolerance": 0.001, "confidence": 0.95,
    }  # fmt: skip
    assert len(record["rows"]) == 3 * 7  # 3 quality, 2 counts, 2 speed figures per cell


def test_step_columns_are_the_timing_stages():
    assert {compare.VS_SGD, compare.PEAK_MEMORY} <= set(STEP_COLUMNS)


# ------------------------------------------------------------------------- revisions
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull}  # fmt: skip


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env=os.environ | GIT_ENV, check=True,
                   capture_output=True)  # fmt: skip


@pytest.fixture
def project(tmp_path) -> Path:
    """A git project: params.yaml (profile default) and a committed summary with steps."""
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    write_side(tmp_path, summary_text(), steps_text())
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "baseline")
    return tmp_path


def test_a_revision_against_the_working_tree(project):
    params = project / "params.yaml"
    assert run_compare("HEAD", params=params)[0] == 0
    write_side(project, summary_text({MINE: {"final_train_loss": [0.15, 0.165, 0.138]}}))
    status, out, _ = run_compare("HEAD", "--json", params=params)
    record = json.loads(out)
    assert status == 1 and record["baseline"]["summary"] == "HEAD:results/default/summary.csv"
    assert record["current"]["summary"] == str(project / "results" / "default" / "summary.csv")


# ------------------------------------------------------------------------- bad input
def expect_usage_error(*argv, params: Path = PARAMS) -> str:
    """Exit 2 and one line on stderr, no traceback; the message."""
    status, out, err = run_compare(*argv, params=params)
    assert status == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_revision_without_a_summary(project):
    params = project / "params.yaml"
    git(project, "mv", "results/default", "results/paper")
    git(project, "commit", "-q", "-m", "another profile")
    message = expect_usage_error("HEAD", params=params)
    assert "revision HEAD has no results/default/summary.csv" in message
    assert "it has the summary of profile 'paper' (--profile paper" in message
    git(project, "rm", "-q", "-r", "results")
    git(project, "commit", "-q", "-m", "no results")
    assert "no profile's summary was committed there" in expect_usage_error("HEAD", params=params)
    assert "'nosuchrev' is neither a file nor a git revision" in expect_usage_error(
        "nosuchrev", params=params
    )


def test_bad_sides_on_the_command_line(tmp_path):
    paper = write_side(tmp_path / "p", summary_text(), profile="paper")
    good = write_side(tmp_path / "g", summary_text())
    message = expect_usage_error(paper, good)
    assert f"{paper} is a summary of profile 'paper'" in message and "not of 'default'" in message
    assert f"no such file: {tmp_path / 'none.csv'}" in expect_usage_error(tmp_path / "none.csv")
    assert "is a folder" in expect_usage_error(good.parent)
    other = write_side(tmp_path / "o", summary_text(cells=[("mnist5k_mlp", "sgd")]))
    assert "no (problem, optimizer) in common" in expect_usage_error(good, other)
    assert "not a profile name" in expect_usage_error(good, good, "--profile", "a/b")


def _rows(text: str) -> list[str]:
    return text.splitlines(keepends=True)


MALFORMED = [
    # (name, the summary text, words the message must hold)
    ("missing_column", summary_text().replace(",value", ",val", 1), "lacks the columns"),
    ("non_numeric", summary_text().replace("0.11", "0.1l", 1), "value '0.1l' is not a number"),
    ("bad_seed", summary_text().replace(",1,", ",one,", 1), "seed 'one' is not an integer"),
    ("cut_mid_row", "".join(_rows(summary_text())[:-1]) + "digits_mlp,myopt,2\n",
     "has 3 fields, the header 5"),
    ("no_final_newline", summary_text().rstrip("\n"), "does not end with a newline"),
    ("lost_rows", "".join(_rows(summary_text())[:-3]), "seed 2 has no 'time_to_target_epochs' row"),
    ("duplicate", summary_text() + _rows(summary_text())[1], "a second row for"),
    ("empty", "", "is empty"),
    ("header_only", _rows(summary_text())[0], "has a header but no rows"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "words"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_summary_is_refused_naming_it(tmp_path, name, text, words):
    good = write_side(tmp_path / "g", summary_text())
    bad = write_side(tmp_path / "b", text)
    message = expect_usage_error(good, bad)
    assert str(bad) in message and words in message, message


def test_a_malformed_steps_file_is_refused_naming_it(tmp_path):
    good = write_side(tmp_path / "g", summary_text(), steps_text())
    bad = write_side(tmp_path / "b", summary_text(), steps_text(SPEED | {"myopt": ("fast", 11.0)}))
    message = expect_usage_error(good, bad)
    assert os.path.join("timing", "steps.csv") in message and "'fast' is not a number" in message


def test_bad_input_from_the_command_line_exits_2_without_traceback(tmp_path):
    good = write_side(tmp_path / "g", summary_text())
    cut = write_side(tmp_path / "c", summary_text()[:-12])  # the last line cut mid-row
    paper = write_side(tmp_path / "p", summary_text(), profile="paper")
    for side, words in ((cut, "does not end with a newline"), (paper, "of profile 'paper'")):
        completed = subprocess.run(
            [sys.executable, "-m", "bench.compare", "--params", str(PARAMS), str(good), str(side)],
            capture_output=True, text=True, cwd=ROOT, check=False,
        )  # fmt: skip
        assert completed.returncode == 2 and completed.stdout == "", completed
        assert completed.stderr.startswith("bench.compare: error: ") and words in completed.stderr
        assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr


def _params_with(section) -> dict:
    import yaml

    params = yaml.safe_load(PARAMS.read_text())
    params["compare"] = section
    return params


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"loss_tolerence": 0.1}, "compare.loss_tolerence: unknown key"),
        ({"loss_tolerance": -0.1}, "compare.loss_tolerance: expected a non-negative number"),
        ({"speed_tolerance": "30%"}, "compare.speed_tolerance: expected float, got '30%'"),
        ({"memory_tolerance": True}, "compare.memory_tolerance: expected float, got True"),
        ({"confidence": 1.0}, "compare.confidence: expected a confidence in (0.5, 1), got 1.0"),
        ({"accuracy_tolerance": 2}, "compare.accuracy_tolerance: expected a fraction in [0, 1]"),
        ([0.1], "compare: expected a mapping, got list"),
    ],
)
def test_bad_compare_settings_name_the_key(section, words):
    from bench.config import parse_config

    with pytest.raises(ConfigError, match="^params.yaml: ") as error:
        parse_config(_params_with(section))
    assert words in str(error.value)


def test_compare_settings_defaults_and_overrides():
    from bench.config import CompareConfig, parse_config

    assert parse_config(_params_with({})).compare == CompareConfig()
    chosen = parse_config(_params_with({"loss_tolerance": 1, "confidence": 0.9})).compare
    assert (chosen.loss_tolerance, chosen.confidence, chosen.speed_tolerance) == (1.0, 0.9, 0.3)


# ------------------------------------------------------------------------- a real pair
REAL_PAIR = ("e0db6ba", "1f9f229")  # the committed default results of two machines


def _have_revisions() -> bool:
    return all(
        subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}^{{commit}}"],
                       capture_output=True, check=False).returncode == 0
        for rev in REAL_PAIR
    )  # fmt: skip


@pytest.mark.skipif(not _have_revisions(), reason="needs the full history (not a shallow clone)")
def test_the_two_machines_pair_is_no_regression():
    """e0db6ba → 1f9f229: the same code on two machines (the second with AVX-512 kernels).

    Quality: every cell's per-seed values agree to ~1e-4 but partitioned_newton_diag on
    mnist5k_mlp, whose final training loss moves by +38%, +64%, -47% per seed: the mean moves by
    +5.9%, beyond the 5% tolerance, but the paired differences straddle zero (one-sided 95% bounds
    about -98% and +110% of the mean), so it is within the seeds' spread, not a regression. Speed:
    step cost x SGD of our optimizers and Cauchy on mnist5k_mlp fell by a third (x0.65-0.67, below
    1 - 0.3) on the AVX-512 machine: improvements, with a note that the environments differ.
    Exit 0.
    """
    status, out, _ = run_compare(*REAL_PAIR, "--json")
    record = json.loads(out)
    assert status == 0 and not record["regressed"]
    diag = rows_of(record, ("mnist5k_mlp", "partitioned_newton_diag"))["final_train_loss"]
    assert 0.05 < diag["change"] / diag["baseline"] < 0.07 and diag["low"] < 0 < diag["high"]
    assert (diag["verdict"], diag["reason"]) == ("unchanged", "within the seeds' spread")
    improved = {(r["problem"], r["optimizer"], r["measure"]) for r in record["rows"]
                if r["verdict"] == "improved"}  # fmt: skip
    assert improved == {("mnist5k_mlp", name, "vs_sgd") for name in
                        ("partitioned_newton", "partitioned_newton_diag",
                         "partitioned_newton_order2", "cauchy")}  # fmt: skip
    assert record["cells"] == {"compared": 21, "regressed": 0, "improved": 4, "unchanged": 17}
    assert any("cpu_capability None -> 'AVX512'" in note for note in record["notes"])


def test_a_summary_recording_another_profile_is_refused(tmp_path):
    """The aggregate records the profile in summary.json (bench.schema.SUMMARY_PROFILE): a
    summary outside results/<profile>/ is told by it."""
    baseline, later = pair(tmp_path)
    moved = tmp_path / "elsewhere" / "summary.csv"
    moved.parent.mkdir()
    moved.write_text(later.read_text())
    status, out, _ = run_compare(baseline, moved, "--json")
    assert status == 0 and any("unknown" in note for note in json.loads(out)["notes"])
    (moved.parent / "summary.json").write_text(json.dumps({compare.schema.SUMMARY_PROFILE: "ci"}))
    status, _, err = run_compare(baseline, moved)
    assert status == 2 and "profile 'ci'" in err and "summary.json" in err
    (moved.parent / "summary.json").write_text(
        json.dumps({compare.schema.SUMMARY_PROFILE: "default"})
    )
    status, out, _ = run_compare(baseline, moved, "--json")
    assert status == 0 and not any("unknown" in note for note in json.loads(out)["notes"])
