"""bench/pipeline.py: one rendered dvc.yaml per profile, current, with the user's code as deps.

* The committed dvc.yaml files (params.yaml → dvc.yaml, profiles/<name>.yaml →
  profiles/<name>/dvc.yaml) are exactly the rendering of their params files (no hand copies).
* A registered optimizer's module is a dependency of exactly that optimizer's cells and of the
  studies that run every optimizer; a plugin's module of every stage; an installed class of none.
* The validate stage refuses a dvc.yaml that is not current; a profile file must name its own
  profile; ``--init`` writes a user's repository that runs from the installed package.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_stages import tiny_params, write_params

from bench import layout, lockfile, pipeline, validate
from bench.errors import UsageError
from optimizers import registry

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]


@pytest.fixture(autouse=True)
def _project_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # examples.sign_sgd, as `python -m` from the root
    # rendering loads the params' registrations (sign_sgd, rmsprop): undone after each test
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _stages(text: str) -> dict[str, dict]:
    return yaml.safe_load(text)["stages"]


def _deps(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]


@pytest.mark.parametrize("params", PROJECT_FILES, ids=lambda p: p.name)
def test_every_committed_pipeline_is_the_rendering_of_its_params_file(params):
    committed = layout.pipeline_path(params, ROOT)
    assert committed.is_file(), f"{committed} missing: run `python -m bench.pipeline`"
    assert committed.read_text() == pipeline.render(params, ROOT), (
        f"{committed.relative_to(ROOT)} is stale: run `python -m bench.pipeline` and commit it"
    )
    assert "${profile}" not in committed.read_text()


def test_each_profile_has_its_own_pipeline_and_lock():
    pipelines = [layout.pipeline_path(p, ROOT) for p in PROJECT_FILES]
    locks = [lockfile.lock_paths(p.relative_to(ROOT))[0] for p in pipelines]
    goods = [lockfile.lock_paths(p.relative_to(ROOT))[1] for p in pipelines]
    assert pipelines[0] == ROOT / "dvc.yaml" and locks[0] == Path("dvc.lock")
    assert Path("profiles/ci/dvc.lock") in locks
    assert len(set(locks)) == len(locks) == len(set(goods))


def test_a_registered_module_is_a_dependency_of_exactly_its_cells():
    stages = _stages(pipeline.render(ROOT / "profiles" / "ci.yaml", ROOT))
    module = "examples/sign_sgd.py"
    own = {name for name, stage in stages.items() if module in _deps(stage)}
    assert own == {"validate", "tune-sign_sgd", "train-sign_sgd", "invariance", "timing"}
    assert "sign_sgd" not in stages["train"]["matrix"]["optimizer"]
    assert stages["train"]["matrix"]["optimizer"] == ["sgd", "adam"]
    cell = stages["train-sign_sgd"]
    assert "optimizer" not in cell["matrix"] and "--optimizer sign_sgd" in cell["cmd"]
    assert cell["params"] == [{"profiles/ci.yaml": ["profile", "device", "seeds", "train",
                                                    "optimizers.sign_sgd"]}]  # fmt: skip
    assert all(stage["wdir"] == "../.." for stage in stages.values())
    assert all("--params profiles/ci.yaml" in stage["cmd"] for stage in stages.values())


def _project(tmp_path: Path, params: dict, name: str = "params.yaml") -> Path:
    (tmp_path / ".git").mkdir(exist_ok=True)  # the project's root marker
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_params(path, params)
    return path


def test_plugins_are_dependencies_of_every_stage_and_installed_code_of_none(tmp_path, monkeypatch):
    (tmp_path / "myplugin").mkdir()
    (tmp_path / "myplugin" / "__init__.py").write_text("from myplugin import helpers\n")
    (tmp_path / "myplugin" / "helpers.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    params = tiny_params(tmp_path)
    params["plugins"] = ["myplugin"]
    params["optimizers"]["rmsprop"] = {
        "hyperparameters": {}, "grid": None,
        "register": {"torch_optimizer": "torch.optim.RMSprop", "defaults": {"lr": 0.001},
                     "lr_grid": [0.001]},
    }  # fmt: skip
    stages = _stages(pipeline.render(_project(tmp_path, params), tmp_path))
    plugin = {"myplugin/__init__.py", "myplugin/helpers.py"}
    for name, stage in stages.items():
        assert plugin <= set(_deps(stage)), name
        assert not any(d.startswith(("bench/", "optimizers")) for d in _deps(stage)), name
    assert "train-rmsprop" not in stages  # an installed class is pinned by the environment
    assert "rmsprop" in stages["train"]["matrix"]["optimizer"]


def test_validate_refuses_a_pipeline_that_is_not_current(tmp_path):
    path = _project(tmp_path, tiny_params(tmp_path))
    pipeline.write(path, tmp_path)
    assert validate.main(["--params", str(path)]) == 0
    params = yaml.safe_load(path.read_text())
    params["seeds"] = [0, 1]  # a train cell runs every seed: the pipeline does not name them
    write_params(path, params)
    assert validate.main(["--params", str(path)]) == 0
    del params["optimizers"]["sgd"]
    write_params(path, params)
    with pytest.raises(UsageError, match="not current.*python -m bench.pipeline"):
        validate.main(["--params", str(path)])
    assert pipeline.main(["--root", str(tmp_path), "--check"]) == 1
    assert pipeline.main(["--root", str(tmp_path)]) == 0
    assert pipeline.main(["--root", str(tmp_path), "--check"]) == 0
    assert validate.main(["--params", str(path)]) == 0


def test_a_profile_file_names_its_own_profile(tmp_path):
    params = tiny_params(tmp_path)
    path = _project(tmp_path, params, f"profiles/not_{params['profile']}.yaml")
    with pytest.raises(UsageError, match="differs from the file's name"):
        pipeline.render(path, tmp_path)
    params["profile"] = path.stem
    write_params(path, params)
    stages = _stages(pipeline.render(path, tmp_path))
    assert stages["validate"]["wdir"] == "../.."
    assert layout.pipeline_path(path, tmp_path) == tmp_path / "profiles" / path.stem / "dvc.yaml"


def test_init_writes_a_user_repository_that_runs_from_the_installed_package(tmp_path):
    (tmp_path / ".git").mkdir()
    command = [sys.executable, "-m", "bench.pipeline", "--init", "ci"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("params.yaml", "dvc.yaml", "examples/sign_sgd.py"):
        assert (tmp_path / name).is_file(), name
    stages = _stages((tmp_path / "dvc.yaml").read_text())
    assert "examples/sign_sgd.py" in _deps(stages["train-sign_sgd"])
    for name, stage in stages.items():  # hobench's code is the installed package's
        assert not any(d.startswith(("bench/", "optimizers")) for d in _deps(stage)), name
        assert "wdir" not in stage and "--params" not in stage["cmd"].replace(
            "--params params.yaml", ""
        )
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    check = [sys.executable, "-m", "bench.pipeline", "--check"]
    assert subprocess.run(check, cwd=tmp_path, capture_output=True).returncode == 0


def test_the_example_workflow_runs_the_tested_commands():
    """docs/ci-example.yml runs what tests/test_ci_profile_e2e.py runs, with the full history."""
    workflow = yaml.safe_load((ROOT / "docs" / "ci-example.yml").read_text())
    steps = workflow["jobs"]["gate"]["steps"]
    assert steps[0]["with"]["fetch-depth"] == 0
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "make repro PROFILE=ci" in commands
    assert "make compare BASE=$BASE PROFILE=ci" in commands and "pipefail" in commands
    e2e = (ROOT / "tests" / "test_ci_profile_e2e.py").read_text()
    assert '_make("repro", "PROFILE=ci")' in e2e and '_make("compare", "BASE=HEAD"' in e2e


def test_problem_settings_are_a_param_of_the_stages_that_read_them(tmp_path):
    """tune and train (budgets, partitions), invariance (the partition of its maps and of the
    optimizers), timing (the batch size)."""
    params = tiny_params(tmp_path)
    stages = _stages(pipeline.render(_project(tmp_path, params), tmp_path))
    assert not any("problem_settings" in stage.get("params", []) for stage in stages.values())
    params["problem_settings"] = {params["problems"][0]: {"epochs": 2}}
    stages = _stages(pipeline.render(_project(tmp_path, params), tmp_path))
    reading = {
        name for name, stage in stages.items() if "problem_settings" in stage.get("params", [])
    }
    assert reading == {"tune", "train", "invariance", "timing"}
