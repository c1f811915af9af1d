"""dvc.yaml against the code: stage dependencies that cannot rot, params at the right grain.

* Every stage's ``deps`` cover the project modules its command imports: the import closure of
  the ``python -m <module>`` of its ``cmd``, found statically (every ``import`` statement of every
  project module reached, function-level imports included), so a module added to a stage's code
  path without a dvc.yaml entry fails here instead of leaving stale results behind.
* No stage depends on the ``runtime`` section (changing it must rerun nothing), and every params
  key a stage names exists in params.yaml.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bench import sources

ROOT = Path(__file__).resolve().parents[1]


def import_closure(module: str) -> set[Path]:
    """The files ``module`` imports (bench.sources: the resolver the checkpoints use too)."""
    return sources.import_closure(module, ROOT)


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _command_module(stage: dict) -> str:
    match = re.search(r"python -m ([\w.]+)", stage["cmd"])
    assert match, stage["cmd"]
    return match.group(1)


def _covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_cover_the_import_closure_of_its_command(name):
    stage = _stages()[name]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    closure = import_closure(_command_module(stage))
    assert closure, f"{name}: its command imports no project module?"
    missing = sorted(str(p.relative_to(ROOT)) for p in closure if not _covered(p, deps))
    assert not missing, f"stage {name}: dvc.yaml deps lack {missing}"
    for dep in deps:
        if "${" not in dep and not dep.startswith("results/"):
            assert (ROOT / dep).exists(), f"stage {name}: dep {dep} does not exist"


def test_the_closure_finds_function_level_and_relative_imports():
    closure = {str(p.relative_to(ROOT)) for p in import_closure("bench.train")}
    assert "bench/data.py" in closure  # imported inside train_cell
    assert "optimizers/derivatives.py" in closure  # relative import inside optimizers
    assert "optimizers/__init__.py" in closure


def test_no_stage_depends_on_runtime_settings_and_every_param_exists():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in _stages().items():
        for key in stage.get("params", []):
            assert not str(key).startswith("runtime"), f"stage {name} depends on {key}"
            if "${" in str(key):
                continue
            node = params
            for part in str(key).split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: no param {key}"
                node = node[part]
