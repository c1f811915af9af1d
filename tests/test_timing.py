"""The studies' timer and memory probe, the timing stage on a tiny configuration (files, columns,
ratios consistent with each other), and every study command line on a bad option (one message,
exit status 2, no traceback, nothing written)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.config import parse_pipeline_config
from bench.errors import UsageError
from bench.prepare import prepare
from bench.studies import memory
from bench.studies.timer import Work, interleaved, round_ratios
from bench.studies.timing import SCALING_COLUMNS, STEP_COLUMNS, scaling_points, timing_stage

ROOT = Path(__file__).resolve().parents[1]


def test_stage_writes_steps_scaling_and_environment(tmp_path, monkeypatch):
    from test_stages import tiny_params

    monkeypatch.chdir(tmp_path)
    config = parse_pipeline_config(tiny_params(tmp_path))
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
    assert environment["torch"] and environment["threads"] == 1 and "git_commit" in environment


def test_memory_probes_run_after_the_timings_with_the_runtime_workers(tmp_path, monkeypatch):
    """One batch of probes once every step is timed, ``runtime.workers`` at a time, each peak
    on its own row."""
    from test_stages import tiny_params

    from bench.studies import timing

    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path)
    params["runtime"]["workers"] = 2
    params["timing"]["memory"] = True
    config = parse_pipeline_config(params)
    prepare(config, results=tmp_path / "results")
    events = []
    real_time_steps = timing.time_steps

    def time_steps(*args, **kwargs):
        events.append("timed")
        return real_time_steps(*args, **kwargs)

    def each(calls, *, threads, workers):
        events.append(("probed", workers, threads))
        assert {call for call, _ in calls} == {"bench.studies.timing:step_workload"}
        return [float(len(kwargs["optimizer"])) for _, kwargs in calls]  # names its row

    monkeypatch.setattr(timing, "time_steps", time_steps)
    monkeypatch.setattr(timing.memory, "peak_memory_mb_each", each)
    steps = pd.read_csv(timing.timing_stage(config, tmp_path / "results") / "steps.csv")
    assert events[-1] == ("probed", 2, 1) and events.count(events[-1]) == 1
    assert set(events[:-1]) == {"timed"}
    assert list(steps["peak_memory_mb"]) == [float(len(o)) for o in steps["optimizer"]]


def test_probes_from_the_fork_server_see_their_own_allocation_in_order(monkeypatch):
    """Each probe a fresh child: 32 and 96 MB seen as such, in order, two at a time, and as a
    fresh ``python -m`` process sees them (same workload, within 8 MB)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    call = "test_timing:growing_workload"
    sizes = [96, 32, 96, 32]
    peaks = memory.peak_memory_mb_each(
        [(call, {"megabytes": m}) for m in sizes], threads=1, workers=2
    )
    for size, peak in zip(sizes, peaks, strict=True):
        assert 0.75 * size < peak < size + 40, (sizes, peaks)
    fresh = memory.peak_memory_mb(call, threads=1, megabytes=96)
    assert abs(fresh - peaks[0]) < 8.0, (fresh, peaks)
    assert memory.peak_memory_mb_each([], threads=1, workers=2) == []


def test_a_failing_probe_names_its_call(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    with pytest.raises(RuntimeError, match="memory probe of test_timing:growing_workload"):
        memory.peak_memory_mb_each(
            [("test_timing:growing_workload", {"megabytes": -1})], threads=1, workers=1
        )
    with pytest.raises(UsageError, match="--call takes module:function"):
        memory.peak_memory_mb_each([("nocolon", {})], threads=1)
    with pytest.raises(ValueError, match="workers must be a positive int"):
        memory.peak_memory_mb_each([("test_timing:growing_workload", {})], threads=1, workers=0)


# ----------------------------------------------------------------------------- the timer
def test_interleaved_runs_every_callable_once_per_round():
    calls = []
    samples = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating
    assert all(len(v) == 3 for v in samples.values())


def test_work_blocks_run_in_order_with_untimed_steps_around_them():
    calls = []
    work = {
        "block": Work(lambda: calls.append("x"), 3, before=lambda: calls.append("<"),
                      after=lambda: calls.append(">")),
        "one": lambda: calls.append("o"),
    }  # fmt: skip
    samples = interleaved(work, 2, warmup=0, alternate=False)
    assert "".join(calls) == "<xxx>o<xxx>o"
    assert [len(v) for v in samples.values()] == [2, 2]
    assert len(round_ratios(samples, "block", "one")) == 2
    with pytest.raises(ValueError, match="calls"):
        Work(lambda: None, 0)


def test_budget_limits_the_rounds_of_a_slow_callable(monkeypatch):
    clock = iter(range(0, 10_000, 1))  # every perf_counter reading advances one "second"
    monkeypatch.setattr("bench.studies.timer.time.perf_counter", lambda: next(clock))
    slow = Work(lambda: None, calls=1)
    samples = interleaved({"fast": lambda: None, "slow": slow}, 5, budget=2.5)
    assert len(samples["fast"]) == len(samples["slow"]) == 2  # 1 s a run: 2 runs in 2.5 s
    samples = interleaved({"slow": slow}, 5, budget=0.5)
    assert samples["slow"] == [1.0]  # the timed warm-up is the single sample
    with pytest.raises(ValueError, match="not timed in the same rounds"):
        round_ratios({"a": [1.0], "b": [1.0, 2.0]}, "a", "b")


# ------------------------------------------------------------------------ the memory probe
def growing_workload(megabytes: int):
    """A workload of the test: allocate and touch ``megabytes`` MB."""
    return lambda: torch.ones(megabytes * 2**18).sum()  # float32: 4 bytes each


def test_peak_memory_of_a_fresh_process_sees_the_allocation(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    grown = memory.peak_memory_mb("test_timing:growing_workload", threads=1, megabytes=64)
    assert 48 < grown < 200, grown
    assert memory.growth_mb(lambda: None) >= 0.0


# ------------------------------------------------------------------- bad command lines
BAD_COMMANDS = [
    # (command line, run in a folder holding valid params.yaml and nothing prepared; the words
    # its one stderr line must hold after "<module>: error: ")
    ("bench.studies.derivative_cost --out o.json --threads 0", "--threads: must be >= 1, got '0'"),
    ("bench.studies.derivative_cost --readme no.json", "--readme no.json: cannot read"),
    ("bench.studies.step_cost --out o.json --batch-size 0", "--batch-size: must be >= 1, got '0'"),
    ("bench.studies.step_cost --out o.json --problems imagenet", "invalid choice: 'imagenet'"),
    ("bench.studies.perf_check --baseline no.json", "--baseline no.json: no baseline"),
    ("bench.studies.perf_check --update-baseline --baseline o.json --tolerance -1",
     "--tolerance: must be a finite number > 0, got '-1'"),
    ("bench.studies.smoke_study --out o.json --device cuda", "'cuda': CUDA is not available"),
    ("bench.studies.smoke_study --out o.json --threads 0", "--threads: must be >= 1, got '0'"),
    ("bench.studies.memory --call nomodule", "--call takes module:function, got 'nomodule'"),
    ("bench.invariance --problem mnist_mlp", "--problem 'mnist_mlp': not one of the params'"),
    ("bench.invariance --problem digits_mlp", "no prepared data at"),
    ("bench.timing --params no.yaml", "no.yaml"),
    ("bench.timing --results elsewhere", "(--results elsewhere); run `python -m bench.prepare`"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "message"), BAD_COMMANDS, ids=[c for c, _ in BAD_COMMANDS])
def test_a_bad_option_is_one_message_and_status_2(tmp_path, command, message):
    if "cuda" in command and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    from test_stages import tiny_params, write_params

    write_params(tmp_path / "params.yaml", tiny_params(tmp_path))
    before = sorted(tmp_path.iterdir())
    done = subprocess.run(
        [sys.executable, "-m", *command.split()],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{command.split()[0]}: error: ") and message in last, done.stderr
    assert sorted(tmp_path.iterdir()) == before  # nothing written
