"""Packaging as a library: pyproject.toml declares ranges; constraints.txt has this machine's pins.

The declared requirements (``[project] dependencies`` and every extra) carry no exact pin, the
installed environment meets every one of them, constraints.txt pins torch 2.13.0 and matches
the installed versions, and the built-in search spaces ship as package data.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import operator
import re
import tomllib
from pathlib import Path

import pytest

from optimizers.registry import SEARCH_SPACES_FILE, load_search_spaces

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
NAME = PROJECT["project"]["name"]


def _declared() -> list[tuple[str, str]]:
    """(where, requirement) for ``[project] dependencies`` and every optional group."""
    found = [("dependencies", text) for text in PROJECT["project"]["dependencies"]]
    for extra, texts in PROJECT["project"].get("optional-dependencies", {}).items():
        found += [(f"optional-dependencies.{extra}", text) for text in texts]
    return found


# -- requirement parsing: packaging when installed (pytest depends on it), else a simple parse
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*([^;]*)(?:;.*)?")
_CLAUSE = re.compile(r"\s*(===|==|!=|<=|>=|~=|<|>)\s*(\S+)\s*")
_VERSION = re.compile(r"v?(\d+(?:\.\d+)*)(?:[-_.]?(a|b|rc)(\d+))?(?:\.post(\d+))?(?:\+\S+)?")
_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


def _simple_parse(text: str) -> tuple[str, list[str], list[tuple[str, str]]]:
    """(name, extras, [(operator, version)]) of a requirement without markers' logic."""
    name, extras, specifier = _REQUIREMENT.fullmatch(text).groups()
    clauses = [_CLAUSE.fullmatch(part).groups() for part in specifier.split(",") if part.strip()]
    return name, [e.strip() for e in (extras or "").split(",") if e.strip()], clauses


def _simple_key(version: str) -> tuple:
    """An ordering key for plain PEP 440 versions (release, pre-release, post; local ignored)."""
    release, pre, number, post = _VERSION.fullmatch(version).groups()
    parts = tuple(int(v) for v in release.split("."))
    parts += (0,) * (8 - len(parts))
    return parts, ({"a": 0, "b": 1, "rc": 2}[pre], int(number)) if pre else (3, 0), int(post or -1)


def _simple_contains(clauses: list[tuple[str, str]], version: str) -> bool:
    return all(_COMPARE[op](_simple_key(version), _simple_key(bound)) for op, bound in clauses)


try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pragma: no cover - pytest itself depends on packaging
    Requirement = None


def _parse(text: str) -> tuple[str, list[str], list[tuple[str, str]]]:
    if Requirement is None:
        return _simple_parse(text)
    requirement = Requirement(text)
    clauses = [(spec.operator, spec.version) for spec in requirement.specifier]
    return requirement.name, sorted(requirement.extras), clauses


def _contains(text: str, version: str) -> bool:
    if Requirement is None:
        return _simple_contains(_parse(text)[2], version)
    return Requirement(text).specifier.contains(version, prereleases=True)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraints() -> dict[str, str]:
    """constraints.txt as canonical name → pinned version (every line must be an exact pin)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
            assert match, f"constraints.txt: {line!r} is not an exact pin name==version"
            pins[_canonical(match[1])] = match[2]
    return pins


@pytest.mark.parametrize("where, text", _declared())
def test_declared_requirements_are_ranges_not_pins(where, text):
    name, _, clauses = _parse(text)
    pinned = [f"{op}{version}" for op, version in clauses if op in ("==", "===")]
    assert not pinned, f"pyproject.toml {where}: {text!r} pins {name} exactly; use a range"


@pytest.mark.parametrize("where, text", _declared())
def test_installed_environment_meets_every_declared_requirement(where, text):
    name, extras, _ = _parse(text)
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"pyproject.toml {where}: {text!r} is not installed")
    assert _contains(text, version), f"pyproject.toml {where}: {text!r}, installed {version}"
    if _canonical(name) == _canonical(NAME):  # an extra pulling another extra of ours
        groups = PROJECT["project"]["optional-dependencies"]
        assert set(extras) <= set(groups), f"{where}: {text!r} names an unknown extra"


def test_constraints_pin_the_cpu_torch_and_describe_this_environment():
    pins = _constraints()
    assert pins.get("torch") == "2.13.0"
    drifted = {}
    for name, pinned in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed.split("+")[0] != pinned:
            drifted[name] = f"pinned {pinned}, installed {installed}"
    assert not drifted, f"constraints.txt does not describe this environment: {drifted}"


def test_constraints_meet_the_declared_ranges():
    """An install through constraints.txt can satisfy pyproject.toml (no pin outside a range)."""
    pins = _constraints()
    for where, text in _declared():
        name = _canonical(_parse(text)[0])
        if name in pins:
            assert _contains(text, pins[name]), f"{where}: {text!r} vs pin {pins[name]}"


def test_search_spaces_are_package_data_loaded_with_importlib_resources():
    package_data = PROJECT["tool"]["setuptools"]["package-data"]
    assert SEARCH_SPACES_FILE in package_data["optimizers"]
    resource = importlib.resources.files("optimizers").joinpath(SEARCH_SPACES_FILE)
    assert resource.is_file()
    data = json.loads(resource.read_text(encoding="utf-8"))
    assert data["search_spaces"] == load_search_spaces()
    assert all("lr" in axes for axes in data["search_spaces"].values())


@pytest.mark.skipif(Requirement is None, reason="packaging is not installed")
@pytest.mark.parametrize(
    "text, version",
    [
        *((text, "2.13.0+cpu") for _, text in _declared()),
        ("asdfghjkl>=0.1a5,<0.2", "0.1a5"),
        ("asdfghjkl>=0.1a5,<0.2", "0.1a4"),
        ("asdfghjkl>=0.1a5,<0.2", "0.1"),
        ("asdfghjkl>=0.1a5,<0.2", "0.2"),
        ("mnist1d>=0.0.2.post1", "0.0.2"),
        ("mnist1d>=0.0.2.post1", "0.0.3"),
        ("torch>=2.1", "2.1.0"),
        ("torch>=2.1", "2.0.1"),
        ("torch==2.13.0", "2.13.0+cpu"),
        ("numpy>=1.26,!=2.0.0", "2.0.0"),
    ],
)
def test_the_simple_parse_agrees_with_packaging(text, version):
    """The fallback used without ``packaging`` gives packaging's answers on our requirements."""
    requirement = Requirement(text)
    name, extras, clauses = _simple_parse(text)
    assert canonicalize_name(name) == canonicalize_name(requirement.name)
    assert sorted(extras) == sorted(requirement.extras)
    expected = requirement.specifier.contains(version, prereleases=True)
    assert _simple_contains(clauses, version) == expected
