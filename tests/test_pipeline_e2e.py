"""`dvc repro` of the real dvc.yaml on a tiny grid, in a fresh git + DVC repository in tmp_path.

Checks: the whole pipeline runs offline, the report lists every optimizer, `dvc metrics show`
lists the summary, a second `dvc status` is clean, and editing one optimizer's params section
makes DVC rerun only that optimizer's cells.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_stages import tiny_params, write_params

from bench import schema

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = ("sgd", "partitioned_newton")  # 2 optimizers keep the test under a minute


def _run(arguments: list[str], cwd: Path, env: dict) -> str:
    completed = subprocess.run(arguments, cwd=cwd, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, f"{arguments} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout


def _repository(tmp_path: Path) -> tuple[Path, dict]:
    repo = tmp_path / "repo"
    repo.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "profiles", "examples")
    for package in ("bench", "optimizers"):
        shutil.copytree(ROOT / package, repo / package, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    params = tiny_params(tmp_path)
    params["runtime"]["checkpoint_dir"] = ".checkpoints"
    params["optimizers"] = {
        "sgd": {"hyperparameters": {}, "grid": {"lr": [0.05, 0.2]}},
        "partitioned_newton": {"hyperparameters": {}, "grid": {"lr": [0.1]}},
    }
    write_params(repo / "params.yaml", params)
    (repo / ".gitignore").write_text(".checkpoints/\n__pycache__/\n")
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HOBENCH_PROGRESS": "0",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }  # fmt: skip
    dvc = str(Path(sys.executable).parent / "dvc")
    _run([sys.executable, "-m", "bench.pipeline"], repo, env)  # dvc.yaml of these params
    _run(["git", "init", "-q"], repo, env)
    _run([dvc, "init", "-q"], repo, env)
    _run([dvc, "config", "core.analytics", "false"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-q", "-m", "tiny"], repo, env)
    return repo, env


def test_dvc_repro_tiny_grid_and_selective_rerun(tmp_path):
    repo, env = _repository(tmp_path)
    dvc = str(Path(sys.executable).parent / "dvc")
    _run([dvc, "repro"], repo, env)

    report = (repo / "reports" / "tiny" / "report.md").read_text()
    assert "Reparameterization invariance" in report and "## Timing" in report
    assert (repo / "results/tiny/timing/steps.csv").is_file()
    invariance = json.loads((repo / "results/tiny/invariance/digits_mlp.json").read_text())
    assert set(invariance["max_relative_deviation"]) == set(OPTIMIZERS)
    assert invariance["max_relative_deviation"]["partitioned_newton"] < 1e-10
    assert invariance["max_relative_deviation"]["sgd"] > 1e-6
    for optimizer in OPTIMIZERS:
        assert optimizer in report, f"{optimizer} missing from the report"
        assert (repo / "results/tiny/runs/digits_mlp" / optimizer / "0" / "metrics.json").is_file()
    summary = json.loads((repo / "results/tiny/summary.json").read_text())
    assert set(summary["digits_mlp"]) - {"comparisons"} == set(OPTIMIZERS)
    assert "sgd" in summary["digits_mlp"]["comparisons"]["partitioned_newton"]
    assert "results/tiny/summary.json" in _run([dvc, "metrics", "show"], repo, env)
    assert json.loads(_run([dvc, "status", "--json"], repo, env)) == {}
    assert not list((repo / ".checkpoints").rglob("*.pt"))  # removed after success

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["optimizers"]["sgd"]["grid"] = {"lr": [0.05, 0.1]}
    write_params(repo / "params.yaml", params)
    changed = set(json.loads(_run([dvc, "status", "--json"], repo, env)))
    # the invariance and timing studies read every optimizer section (they run each optimizer);
    # the aggregate and the report read exactly the grid's cells (problems × optimizers × seeds);
    # validate reads the whole file (its output stays the same, so it makes nothing else stale)
    assert changed == {
        "tune@digits_mlp-sgd", "train@digits_mlp-sgd", "invariance@digits_mlp", "timing",
        "aggregate", "report", "validate",
    }  # fmt: skip


def _snapshot(repo: Path) -> dict[str, bytes]:
    folders = [repo / "results" / "tiny", repo / "reports" / "tiny"]
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def test_invalid_params_never_remove_or_change_results(tmp_path):
    """DVC deletes a stage's outputs before running it unless they persist: every output is
    `persist: true` and every stage validates the whole params file before it writes; the
    validate stage, which every stage depends on, stops a whole `dvc repro` at any bad key, even
    one no stage that has to run reads. Results stay byte for byte as they were."""
    repo, env = _repository(tmp_path)
    dvc = str(Path(sys.executable).parent / "dvc")
    _run([dvc, "repro"], repo, env)
    before = _snapshot(repo)
    good = (repo / "params.yaml").read_text()
    bad_values = [  # (keys, value, the key the message names, a stage run alone with -s)
        (("aggregate", "train_loss_target"), {"digits_mlp": "abc"},
         "aggregate.train_loss_target.digits_mlp", "aggregate"),
        (("timing", "scaling", "partitions"), ["nonsense"], "timing.scaling.partitions[0]",
         "timing"),
        (("train", "epochs"), "ten", "train.epochs", "train@digits_mlp-sgd"),
        (("colour",), "red", "colour", None),  # read by no stage but validate
        (("plugins",), ["no_such_module"], "plugins[0]", None),
    ]  # fmt: skip
    for keys, value, named, stage in bad_values:
        params = yaml.safe_load(good)
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        write_params(repo / "params.yaml", params)
        for command in [[dvc, "repro"]] + ([[dvc, "repro", "-s", stage]] if stage else []):
            completed = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
            output = completed.stdout + completed.stderr
            assert completed.returncode != 0, (command, output[-2000:])
            assert named in output and "Traceback" not in output, output[-2000:]
            assert _snapshot(repo) == before, f"{keys}: results changed"
    (repo / "params.yaml").write_text(good)
    _run([dvc, "repro"], repo, env)  # only the validate stage reruns; same marker
    assert _snapshot(repo) == before
    assert json.loads(_run([dvc, "status", "--json"], repo, env)) == {}


def _without_speed(node):
    speed = (schema.STEP_COST_VS_SGD, schema.PEAK_MEMORY_MB)
    if isinstance(node, dict):
        return {k: _without_speed(v) for k, v in node.items() if not k.startswith(speed)}
    return node


def _values(repo: Path) -> dict[str, object]:
    """Every number of a tiny run's results, wall-clock and provenance aside."""
    import pandas as pd

    base = repo / "results" / "tiny"
    values: dict[str, object] = {}
    for path in sorted(base.rglob("*")):
        name = str(path.relative_to(base))
        if not path.is_file() or name.startswith("timing/"):
            continue
        if path.suffix == ".json":
            record = json.loads(path.read_text())
            if isinstance(record, dict):
                drop = ("provenance", "wall_clock", "resumed_from_epoch", "command")
                record = {k: v for k, v in record.items() if k not in drop}
            if name == "summary.json":  # the speed figures come from the (re-)timed steps.csv
                record = _without_speed(record)
            values[name] = json.dumps(record, sort_keys=True)
        elif path.suffix == ".csv":
            frame = pd.read_csv(path)
            if "metric" in frame.columns:
                frame = frame[~frame["metric"].str.contains("wall_clock|seconds")]
            values[name] = frame.drop(columns=["wall_clock"], errors="ignore").to_csv()
    return values


def _main_job(repo: Path, env: dict) -> None:
    """What `make repro` runs (its recipe, without the venv set-up)."""
    dvc = str(Path(sys.executable).parent / "dvc")
    _run([sys.executable, "-m", "bench.lockfile", "guard"], repo, env)
    _run([dvc, "repro"], repo, env)
    _run([sys.executable, "-m", "bench.lockfile", "save"], repo, env)


@pytest.mark.slow
def test_killed_repro_and_broken_lock_recover_with_the_main_job(tmp_path):
    """Kill `dvc repro` at several points, then leave dvc.lock empty and cut: each time the
    main-job command alone finishes the pipeline, with the numbers of an uninterrupted run."""
    import signal
    import time

    reference_repo, env = _repository(tmp_path / "reference")
    _main_job(reference_repo, env)
    reference = _values(reference_repo)
    repo, env = _repository(tmp_path / "killed")
    dvc = str(Path(sys.executable).parent / "dvc")
    for seconds in (4, 12, 25):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        process = subprocess.Popen(
            [dvc, "repro"], cwd=repo, env=env, start_new_session=True, **quiet
        )
        time.sleep(seconds)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        _main_job(repo, env)
        assert _values(repo) == reference, f"killed after {seconds} s"
    lock = (repo / "dvc.lock").read_text()
    for broken in ("", lock[: len(lock) // 2], lock[: lock.index("md5: ") + 12]):
        (repo / "dvc.lock").write_text(broken)
        _main_job(repo, env)
        assert _values(repo) == reference
        assert (repo / "dvc.lock").read_text() == lock
