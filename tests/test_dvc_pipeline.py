"""dvc.yaml against the code: stage dependencies that cannot rot, params at the right grain.

* Every stage's ``deps`` cover the project modules its command imports: the import closure of
  the ``python -m <module>`` of its ``cmd``, found statically (every ``import`` statement of every
  project module reached, function-level imports included), so a module added to a stage's code
  path without a dvc.yaml entry fails here instead of leaving stale results behind.
* No stage depends on the ``runtime`` section (changing it must rerun nothing), and every params
  key a stage names exists in params.yaml.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "optimizers")


def _module_file(module: str) -> Path | None:
    """The file of a project module (``bench.training.loop`` → bench/training/loop.py)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Project modules named by the import statements of ``path`` (anywhere in it)."""
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    return {name for name in found if _module_file(name) is not None}


def import_closure(module: str) -> set[Path]:
    """Files of every project module ``module`` imports, transitively, with parent packages,
    and the package data (``*.json`` beside them, e.g. optimizers/search_spaces.json)."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__
            path = _module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                pending.extend(_imported_modules(path))
    return seen | {data for path in seen for data in path.parent.glob("*.json")}


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
