"""The one peak-memory probe of the studies: high-water-mark growth of a fresh process.

A process's peak resident memory only grows, so one workload's peak is measured in a process of
its own: :func:`peak_memory_mb` starts ``python -m bench.studies.memory``, which sets the torch
thread count, builds the workload by calling ``module:function`` with keyword arguments (the
builder returns the zero-argument callable to measure), reads the high-water mark, runs the
callable once and prints the growth in MB. Building (data, models, optimizers) happens before
the first reading, so only what the run itself allocates counts.

    python -m bench.studies.memory --threads 1 --call bench.studies.derivative_cost:variant_work \
        --kwargs '{"problem": "mnist_mlp", "variant": "gradient"}'
"""

from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cli import ArgumentParser, run
from bench.errors import UsageError
from bench.studies.options import positive_int

__all__ = ["growth_mb", "high_water_mb", "peak_memory_mb"]


def high_water_mb() -> float:
    """Peak resident memory of this process (MB): VmHWM of /proc/self/status on Linux, else
    ``ru_maxrss``. On Linux ``ru_maxrss`` survives ``exec`` and so starts at the parent's high
    water mark in a subprocess of a large process; VmHWM belongs to the new address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def growth_mb(fn: Callable[[], object]) -> float:
    """Growth (MB) of this process's high-water mark while ``fn()`` runs once."""
    base = high_water_mb()
    fn()
    return high_water_mb() - base


def peak_memory_mb(call: str, *, threads: int, **kwargs: Any) -> float:
    """Peak-memory growth (MB) of a fresh process running ``call(**kwargs)()`` once.

    ``call`` is ``"module:function"``; ``kwargs`` must be JSON values.
    """
    command = [
        sys.executable, "-m", "bench.studies.memory", "--threads", str(threads),
        "--call", call, "--kwargs", json.dumps(kwargs),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True)  # in this process's cwd
    if out.returncode != 0:
        raise RuntimeError(f"the memory probe of {call} {kwargs} failed:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


def _builder(call: str) -> Callable[..., Callable[[], object]]:
    module_name, sep, function = call.partition(":")
    if not sep or not module_name or not function:
        raise UsageError(f"--call takes module:function, got {call!r}")
    try:
        builder = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"--call {call!r}: {error}") from None
    return builder


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--call", required=True, help="module:function building the workload")
    parser.add_argument("--kwargs", default="{}", help="the builder's keyword arguments (JSON)")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as error:
        raise UsageError(f"--kwargs {args.kwargs!r}: not JSON ({error})") from None
    if not isinstance(kwargs, dict):
        raise UsageError(f"--kwargs takes a JSON object, got {args.kwargs!r}")
    import torch

    torch.set_num_threads(args.threads)  # before the workload is built, as in the parent
    print(growth_mb(_builder(args.call)(**kwargs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
