"""The one peak-memory probe of the studies: high-water-mark growth of a fresh process.

A process's peak resident memory only grows, so one workload's peak is measured in a process of
its own: :func:`peak_memory_mb` starts ``python -m bench.studies.memory``, which sets the torch
thread count, builds the workload by calling ``module:function`` with keyword arguments (the
builder returns the zero-argument callable to measure), reads the high-water mark, runs the
callable once and prints the growth in MB. Building (data, models, optimizers) happens before
the first reading, so only what the run itself allocates counts.

    python -m bench.studies.memory --threads 1 --call bench.studies.derivative_cost:variant_work \
        --kwargs '{"problem": "mnist_mlp", "variant": "gradient"}'

:func:`peak_memory_mb_each` measures many workloads the same way, each in a process of its own,
``workers`` at a time, without paying a Python start-up per workload (importing torch and
``torch._dynamo`` is ~4.5 s of a probe's 6-9 s): on Linux and macOS each probe is a fresh child
of multiprocessing's fork server, a process that has imported torch, ``torch._dynamo`` and the
builders' modules and has run nothing else, so a child starts as a fresh ``python -m`` process
would be once those imports are done. The high-water mark is read in that child as above. One
difference remains: a forked child does not inherit the page-table entries of the server's
file-backed pages (the libraries' code), so the code a run touches first counts in its growth,
where a fresh process had touched some of it while importing. Measured on the default
profile's step workloads: 2-8 % more than a fresh process (+3.5 MB on digits_mlp with SGD,
+14 MB of 190 MB on the transformer with ours); the timing stage's figures are made this way.
"""

from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.cli import ArgumentParser, run
from bench.errors import UsageError
from bench.studies.options import positive_int

__all__ = ["growth_mb", "high_water_mb", "peak_memory_mb", "peak_memory_mb_each"]


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


def _reset_high_water() -> float | None:
    """Reset this process's high-water mark to its current resident memory and return that
    (MB): Linux's ``/proc/self/clear_refs`` ``5``. None where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def growth_mb(fn: Callable[[], object]) -> float:
    """Growth (MB) of this process's peak resident memory while ``fn()`` runs once: the peak
    during the run minus the resident memory at its start. On Linux the high-water mark is reset
    to the resident memory just before the run, so that what the process did before (imports,
    building the workload, which may have peaked higher) does not hide part of the run's growth;
    elsewhere it is the growth of the high-water mark itself."""
    base = _reset_high_water()
    if base is None:
        base = high_water_mb()
    fn()
    return max(high_water_mb() - base, 0.0)


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


def _probe(call: str, kwargs: dict[str, Any], threads: int) -> float:
    """In a probe's own process: set the thread count, build the workload, measure it once."""
    import torch

    torch.set_num_threads(threads)  # before the workload is built, as in the parent
    return growth_mb(_builder(call)(**kwargs))


def peak_memory_mb_each(
    calls: Sequence[tuple[str, dict[str, Any]]], *, threads: int, workers: int = 1
) -> list[float]:
    """:func:`peak_memory_mb` of each ``(call, kwargs)``, in order, up to ``workers`` probes at a
    time, each in a fresh child of a fork server that has imported torch, ``torch._dynamo`` and
    the calls' modules (see the module docstring; where there is no fork server, spawn: a fresh
    interpreter per probe). A probe's high-water mark belongs to its own process, whatever runs
    beside it. RuntimeError naming the call when a probe fails."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not calls:
        return []
    for call, _ in calls:
        _builder(call)  # a bad call is refused here, before any process starts
    modules = sorted({call.partition(":")[0] for call, _ in calls})
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "torch._dynamo", __name__, *modules])
    else:
        context = multiprocessing.get_context("spawn")
    count = min(workers, len(calls))
    with ProcessPoolExecutor(count, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(_probe, call, dict(kwargs), threads) for call, kwargs in calls]
        peaks = []
        for (call, kwargs), future in zip(calls, futures, strict=True):
            try:
                peaks.append(float(future.result()))
            except Exception as error:  # the child's error, re-raised here
                raise RuntimeError(
                    f"the memory probe of {call} {kwargs} failed: {error!r}"
                ) from error
        return peaks


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
