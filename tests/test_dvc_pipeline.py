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


PIPELINES = [ROOT / "dvc.yaml", *sorted((ROOT / "profiles").glob("*/dvc.yaml"))]


def _stages() -> dict[str, dict]:
    """Every stage of every profile's pipeline, as ``<pipeline>:<stage>`` (bench/pipeline.py)."""
    found = {}
    for path in PIPELINES:
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            assert (path.parent / stage.get("wdir", ".")).resolve() == ROOT, (path, name)
            found[f"{path.relative_to(ROOT)}:{name}"] = stage
    return found


def _keys(stage: dict) -> list[str]:
    """A stage's params keys, whether of params.yaml or of a profile's own file."""
    keys = []
    for entry in stage.get("params", []):
        keys += [str(entry)] if not isinstance(entry, dict) else list(next(iter(entry.values())))
    return keys


def _params_of(name: str) -> dict:
    pipeline = ROOT / name.partition(":")[0]
    params = (
        ROOT / "params.yaml" if pipeline.parent == ROOT else pipeline.parent.with_suffix(".yaml")
    )
    return yaml.safe_load(params.read_text())


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
    for name, stage in _stages().items():
        params = _params_of(name)
        for key in _keys(stage):
            assert not str(key).startswith("runtime"), f"stage {name} depends on {key}"
            if "${" in str(key):
                continue
            node = params
            for part in str(key).split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: no param {key}"
                node = node[part]
