"""optimizers/ is a library of its own: it imports and trains with torch, numpy and scipy alone.

A fresh interpreter hides the benchmark suite and every extra (each ``sys.meta_path`` finder is
wrapped so that it does not find them: they look not installed), then imports ``optimizers``
and each public submodule, trains with the entries that need nothing more, and builds the three
adapters of optional packages, which must fail with an ImportError saying what to install.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Import names of the bench suite and of every package an extra of pyproject.toml installs
# (asdl is the import name of asdfghjkl).
BLOCKED = (
    "bench",
    "pandas",
    "yaml",
    "matplotlib",
    "seaborn",
    "PIL",
    "tqdm",
    "dvc",
    "datasets",
    "pyarrow",
    "sklearn",
    "mlxtend",
    "mnist1d",
    "asdl",
    "pytorch_optimizer",
)
TRAINED = ("sgd", "adam", "partitioned_newton")
# optimizer → the package (distribution) its message must name
OPTIONAL = {"kfac": "asdfghjkl", "adahessian": "pytorch-optimizer", "shampoo": "pytorch-optimizer"}
INSTALL = "pip install 'hobench[baselines]'"

CHILD = r"""
import importlib, importlib.abc, json, math, pkgutil, sys

blocked = frozenset(sys.argv[1].split(","))
refused = []


class Hide(importlib.abc.MetaPathFinder):
    # Wraps one finder of sys.meta_path: a blocked module is not found (as if not installed:
    # importlib.util.find_spec gives None, import raises ModuleNotFoundError).

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            refused.append(name)
            return None
        return self.finder.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()


preloaded = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
try:
    import bench  # noqa: F401
except ModuleNotFoundError:
    bench_hidden = True
else:
    bench_hidden = False

import torch
import torch.nn.functional as F
from torch import nn

import optimizers
import optimizers.registry
from optimizers.registry import make

submodules = sorted(m.name for m in pkgutil.iter_modules(optimizers.__path__) if m.name[0] != "_")
for name in submodules:
    importlib.import_module(f"optimizers.{name}")


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


generator = torch.Generator().manual_seed(1)
batches = [
    (torch.randn(16, 4, generator=generator, dtype=torch.float64),
     torch.randint(0, 3, (16,), generator=generator))
    for _ in range(12)
]
trained = {}
for name in sys.argv[2].split(","):
    net = model()
    start = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    settings = {"update_every": 2, "warmup": 1} if name == "partitioned_newton" else {}
    opt = make(name, net, settings)
    losses = [float(opt.step(batches[k], batches[-1 - k])) for k in range(6)]
    end = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    trained[name] = {
        "finite": all(math.isfinite(v) for v in losses),
        "moved": not torch.equal(start, end),
        "diagnostics": sorted(opt.diagnostics()),
    }
errors = {}
for name in sys.argv[3].split(","):
    refused.clear()
    try:
        make(name, model())
    except Exception as error:  # the test wants to see exactly what a user sees
        errors[name] = {
            "type": type(error).__name__,
            "import_error": isinstance(error, ImportError),
            "message": str(error),
            "refused": sorted(set(refused)),  # asked for while building: a lazy import
        }
    else:
        errors[name] = None
print(json.dumps({
    "preloaded": preloaded,
    "bench_hidden": bench_hidden,
    "submodules": submodules,
    "trained": trained,
    "errors": errors,
    "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in blocked),
}))
"""


@pytest.fixture(scope="module")
def child() -> dict:
    """The report of one fresh interpreter running CHILD (a few seconds: it imports torch)."""
    arguments = [",".join(BLOCKED), ",".join(TRAINED), ",".join(OPTIONAL)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *arguments], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_nothing_blocked_was_loaded_before_or_after(child):
    assert child["preloaded"] == [], "imported at interpreter start: the block would be moot"
    assert child["bench_hidden"], "the benchmark suite was still importable"
    assert child["loaded"] == []


def test_every_public_submodule_imports(child):
    assert {"registry", "baselines", "partitioned_newton", "derivatives"} <= set(
        child["submodules"]
    )


@pytest.mark.parametrize("name", TRAINED)
def test_entries_without_optional_packages_train(child, name):
    report = child["trained"][name]
    assert report["finite"] and report["moved"], report
    if name == "partitioned_newton":
        assert "usable_solves" in report["diagnostics"]
        assert any(key.startswith("eta/") for key in report["diagnostics"]), report


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_adapters_of_optional_packages_say_what_to_install(child, name):
    error = child["errors"][name]
    assert error is not None, f"make({name!r}) built without its optional package"
    assert error["import_error"], error
    assert OPTIONAL[name] in error["message"] and INSTALL in error["message"], error["message"]
    assert name in error["message"], error["message"]


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_adapters_import_their_package_when_built(child, name):
    """Asked for during ``make``: the import is lazy (``import optimizers`` did not need it)."""
    package = "asdl" if name == "kfac" else "pytorch_optimizer"
    assert package in child["errors"][name]["refused"], child["errors"][name]
