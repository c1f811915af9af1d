"""The provenance record written beside every result (tune cell, train run).

    provenance(seed=0, device="cpu", threads=1, params={...}) ->
        {"git_commit", "git_dirty", "params_hash", "torch", "python", "hobench", "numpy",
         "device", "threads", "seed", "hostname", "cpu", "cpu_capability", "created"}

``git_dirty`` ignores what the pipeline itself writes while it runs (``dvc.lock``, ``results/``,
``reports/``): it says whether the code or the params differ from ``git_commit``. Outside a git
checkout both git fields are ``None``. ``params_hash`` is the SHA-256 (first 16 hex digits) of the
canonical JSON of the params the result depends on (keys sorted). ``cpu_capability`` is the
vector instruction set torch's CPU kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``,
e.g. AVX2, AVX512): float32 results are bitwise reproducible for the same value (and thread count),
not across values.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import platform
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Paths the pipeline writes during `dvc repro`; they do not make the checkout "dirty".
PIPELINE_OUTPUTS = ("dvc.lock", "results", "reports")


def params_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex digits) of the canonical JSON of ``params`` (sorted keys)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _git(*arguments: str, cwd: Path) -> str | None:
    try:
        completed = subprocess.run(
            ["git", *arguments], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def git_state(cwd: str | Path = ".") -> tuple[str | None, bool | None]:
    """(HEAD commit, dirty flag) of the checkout containing ``cwd``; (None, None) outside one."""
    cwd = Path(cwd)
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return None, None
    excludes = [f":(exclude){path}" for path in PIPELINE_OUTPUTS]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excludes, cwd=cwd)
    return commit, (None if status is None else bool(status))


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(
    *, seed: int | None, device: str, threads: int, params: Mapping[str, Any], cwd: str | Path = "."
) -> dict[str, Any]:
    """The provenance record of one result (see the module docstring for the keys)."""
    commit, dirty = git_state(cwd)
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "params_hash": params_hash(params),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "hobench": _version("hobench"),
        "numpy": np.__version__,
        "device": str(device),
        "threads": int(threads),
        "seed": seed,
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
