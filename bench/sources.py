"""From module names to the source files a result depends on: one resolver for the checkpoint
fingerprint of a train cell and for the pipeline's code dependencies (tests/test_dvc_pipeline.py).

    import_closure("bench.train", root)          # files of every module it imports, transitively
    dotted_module("mypkg.opt:make")              # "mypkg.opt" ("pkg.mod.Class" works too)
    code_digest(files, root)                     # SHA-256 over their paths and bytes

The closure is static: every ``import`` statement of every module reached, function-level ones
included (the pipeline imports lazily), relative imports resolved, each parent package's
``__init__`` counted, plus the ``*.json`` package data beside the modules. It keeps the modules of
hobench itself (``bench``, ``optimizers``, wherever they are installed) and those whose file lies
inside ``root`` (the user's project: plugins, a registered optimizer's module); installed third-
party packages are pinned by the environment, not tracked as files.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import sysconfig
from pathlib import Path

OWN_PACKAGES = ("bench", "optimizers")


def dotted_module(dotted: str) -> str:
    """The module of a dotted object path: ``"pkg.mod:attr"`` → ``"pkg.mod"``; for
    ``"pkg.mod.Class"`` the longest prefix that is a module."""
    module, sep, _ = dotted.partition(":")
    if sep:
        return module
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if _spec_origin(name) is not None:
            return name
    return dotted


def _spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None


def _spec_origin(name: str) -> Path | None:
    spec = _spec(name)
    origin = getattr(spec, "origin", None)
    if not origin or origin in ("built-in", "frozen") or not origin.endswith(".py"):
        return None
    return Path(origin).resolve()


@functools.cache
def _installed_dirs() -> tuple[Path, ...]:
    """Where installed packages live (a venv inside the project is not the project's code)."""
    paths = {sysconfig.get_path(key) for key in ("purelib", "platlib", "stdlib", "platstdlib")}
    return tuple(Path(p).resolve() for p in paths if p)


def _project_top_level(name: str, root: Path) -> bool:
    """Whether ``name``'s top-level package is ours or the project's (looked up without
    importing anything: only such modules' submodules are looked up, which imports parents)."""
    top = name.split(".")[0]
    if top in OWN_PACKAGES:
        return True
    if not top:
        return False
    path = _spec_origin(top)
    if path is None:
        return False
    installed = any(path.is_relative_to(folder) for folder in _installed_dirs())
    return path.is_relative_to(root) and not installed


def _tracked(name: str, root: Path) -> Path | None:
    """The file of module ``name`` when it is ours or the project's, else None."""
    return _spec_origin(name) if _project_top_level(name, root) else None


def _is_package(name: str) -> bool:
    spec = _spec(name)
    return spec is not None and spec.submodule_search_locations is not None


def imported_modules(path: Path, module: str, root: Path) -> set[str]:
    """Modules named by the import statements of ``path`` (module ``module``), anywhere in it;
    ``from a import b`` names ``a`` and, when ``a`` is a package, ``a.b``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            if _project_top_level(base, root) and _is_package(base):
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if _project_top_level(name, root)}


# import_closure's results in this process: (module, root) → (files, their mtimes). A train cell
# asks for the same closure once per seed; parsing ~100 files costs ~2 s on a loaded machine.
_CLOSURES: dict[tuple[str, Path], tuple[frozenset[Path], tuple[int, ...]]] = {}


def _mtimes(files: frozenset[Path]) -> tuple[int, ...]:
    return tuple(p.stat().st_mtime_ns if p.exists() else -1 for p in sorted(files))


def import_closure(module: str, root: str | Path) -> set[Path]:
    """Files of ``module`` and of every tracked module it imports, transitively (see above).

    Remembered per process, and recomputed when one of the files it found has changed since
    (a new import can only enter through a changed file)."""
    root = Path(root).resolve()
    cached = _CLOSURES.get((module, root))
    if cached is not None and _mtimes(cached[0]) == cached[1]:
        return set(cached[0])
    files = frozenset(_closure(module, root))
    _CLOSURES[(module, root)] = (files, _mtimes(files))
    return set(files)


def _closure(module: str, root: Path) -> set[Path]:
    seen: dict[Path, str] = {}
    pending = [module]
    while pending:
        parts = pending.pop().split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__
            name = ".".join(parts[:depth])
            path = _tracked(name, root)
            if path is not None and path not in seen:
                seen[path] = name
                pending.extend(imported_modules(path, name, root))
    data = {d.resolve() for path in seen for d in path.parent.glob("*.json")}
    return set(seen) | data


def code_digest(files: set[Path] | list[Path], root: str | Path) -> str:
    """SHA-256 (16 hex digits) over the files' paths (relative to ``root`` where they are under
    it) and bytes, in sorted order: equal exactly when the code is the same."""
    root = Path(root).resolve()
    digest = hashlib.sha256()
    for path in sorted(Path(f).resolve() for f in files):
        name = path.relative_to(root) if path.is_relative_to(root) else path
        digest.update(f"{name}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def optimizer_sources(config, optimizer: str, stage: str) -> set[Path]:
    """The code a cell of ``optimizer`` run by ``stage`` (a module, e.g. ``bench.train``) depends
    on: the stage's closure, the params' ``plugins`` and, for a params-registered optimizer, the
    module of its ``torch_optimizer`` or ``factory`` (when it is the project's, not installed)."""
    files = import_closure(stage, config.root)
    for plugin in config.plugins:
        files |= import_closure(plugin, config.root)
    entry = config.optimizers[optimizer].register
    if entry is not None:
        files |= import_closure(dotted_module(entry.torch_optimizer or entry.factory), config.root)
    return files
