"""The README's CI recipe end to end (slow, ~6 min): the ci profile with a registered optimizer of
the user's, then that optimizer sabotaged in its own module.

In a fresh git + DVC copy of the project: ``dvc repro profiles/ci/dvc.yaml``; commit the results
as the baseline; make ``examples/sign_sgd.py`` take steps 100× too small. Then ``dvc status``
names exactly the cells that run it stale (its tune and train cells, the invariance and timing
studies, which run every optimizer, and validate, which checks the pipeline is current), ``dvc
repro`` reruns those and the aggregate and report downstream only, and ``bench.compare`` against
the baseline fails on sign_sgd and on nothing else. The default profile's files never change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "profiles/ci/dvc.yaml"
pytestmark = pytest.mark.slow


def _run(arguments: list[str], cwd: Path, env: dict, status: int = 0) -> str:
    done = subprocess.run(arguments, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == status, (
        f"{arguments}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout + done.stderr


def _copy(tmp_path: Path) -> tuple[Path, dict]:
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "profiles", "examples")
    for folder in ("bench", "optimizers", "examples"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=ignore)
    (repo / "profiles").mkdir()
    shutil.copy(ROOT / "profiles" / "ci.yaml", repo / "profiles" / "ci.yaml")
    for name in ("params.yaml", "dvc.yaml", "dvc.lock", ".dvcignore", "Makefile"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "results" / "default", repo / "results" / "default")
    (repo / ".gitignore").write_text(".checkpoints/\n__pycache__/\n")
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HOBENCH_PROGRESS": "0",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }  # fmt: skip
    dvc = str(Path(sys.executable).parent / "dvc")
    _run(["git", "init", "-q"], repo, env)
    _run([dvc, "init", "-q"], repo, env)
    _run([dvc, "config", "core.analytics", "false"], repo, env)
    _run([sys.executable, "-m", "bench.pipeline", "--params", "profiles/ci.yaml"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-q", "-m", "project"], repo, env)
    return repo, env


def _make(*arguments: str) -> list[str]:
    """The README's (and docs/ci-example.yml's) make command, with this test's environment as
    the venv (``-o``: never reinstalled into it)."""
    venv = Path(sys.executable).parent.parent
    return ["make", "-s", "-o", f"{venv}/.installed", f"VENV={venv}", *arguments]


def _default_files(repo: Path) -> dict[str, bytes]:
    files = [repo / "dvc.yaml", repo / "dvc.lock", *sorted((repo / "results/default").rglob("*"))]
    return {str(p): p.read_bytes() for p in files if p.is_file()}


def test_a_sabotaged_user_optimizer_is_rerun_alone_and_fails_compare(tmp_path):
    repo, env = _copy(tmp_path)
    dvc = str(Path(sys.executable).parent / "dvc")
    default = _default_files(repo)
    _run(_make("repro", "PROFILE=ci"), repo, env)
    assert json.loads(_run([dvc, "status", PIPELINE, "--json"], repo, env)) == {}
    summary = json.loads((repo / "results/ci/summary.json").read_text())
    assert {"sgd", "adam", "sign_sgd"} <= set(summary["digits_mlp"])
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-q", "-m", "baseline"], repo, env)

    module = repo / "examples" / "sign_sgd.py"
    text = module.read_text()
    sabotaged = text.replace('alpha=-group["lr"]', 'alpha=-0.01 * group["lr"]')
    assert sabotaged != text
    module.write_text(sabotaged)
    stale = set(json.loads(_run([dvc, "status", PIPELINE, "--json"], repo, env)))
    cells = {f"{PIPELINE}:{name}" for name in (
        "validate", "tune-sign_sgd@digits_mlp", "train-sign_sgd@digits_mlp",
        "invariance@digits_mlp", "timing",
    )}  # fmt: skip
    assert stale == cells, stale
    log = _run(_make("repro", "PROFILE=ci"), repo, env)
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert ran == cells | {f"{PIPELINE}:aggregate", f"{PIPELINE}:report"}, ran

    done = subprocess.run(_make("compare", "BASE=HEAD", "PROFILE=ci", "ARGS=--json"), cwd=repo,
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2, done.stderr  # make's status for a failing recipe (bench: 1)
    report = json.loads(done.stdout)
    regressed = {(r["optimizer"], r["measure"]) for r in report["rows"]
                 if r["verdict"] == "regressed" and r["kind"] != "ratio"}  # fmt: skip
    # quality (seeds) only: the speed ratios were re-timed and move with the machine's load
    assert regressed and {optimizer for optimizer, _ in regressed} == {"sign_sgd"}, regressed
    assert _default_files(repo) == default  # the default profile never moved
