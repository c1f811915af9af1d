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

import yaml
from test_stages import tiny_params, write_params

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = ("sgd", "partitioned_newton")  # 2 optimizers keep the test under a minute


def _run(arguments: list[str], cwd: Path, env: dict) -> str:
    completed = subprocess.run(arguments, cwd=cwd, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, f"{arguments} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout


def _repository(tmp_path: Path) -> tuple[Path, dict]:
    repo = tmp_path / "repo"
    repo.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
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
    assert set(summary["digits_mlp"]) == set(OPTIMIZERS)
    assert "results/tiny/summary.json" in _run([dvc, "metrics", "show"], repo, env)
    assert json.loads(_run([dvc, "status", "--json"], repo, env)) == {}
    assert not list((repo / ".checkpoints").rglob("*.pt"))  # removed after success

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["optimizers"]["sgd"]["grid"] = {"lr": [0.05, 0.1]}
    write_params(repo / "params.yaml", params)
    changed = set(json.loads(_run([dvc, "status", "--json"], repo, env)))
    # the invariance and timing studies read every optimizer section (they run each optimizer)
    assert changed == {
        "tune@digits_mlp-sgd", "train@digits_mlp-sgd-0", "invariance@digits_mlp", "timing",
    }  # fmt: skip
