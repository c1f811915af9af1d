"""Run independent pieces of a cell (a train cell's seeds, a tune cell's grid points) in parallel.

Each piece is a function of its own seed and hyperparameters alone: it builds its model, its
optimizer and its RNG streams from them (:mod:`bench.training.runs`), so the numbers it
computes do not depend on which process runs it, nor on what runs beside it. ``runtime.workers``
(never a DVC parameter, never in a fingerprint) sets how many processes a cell uses.

With one worker, or one piece, the pieces run in this process, one after the other: exactly
what a cell did before workers existed. Otherwise they run in child processes, each set up like
a stage (``train.threads``, ``train.deterministic``) and reading the params file itself (its
plugins and registered optimizers included). On Linux the children are ``fork``-ed, as torch's
own DataLoader workers are: they inherit the imported modules (torch, and ``torch._dynamo``,
which the first ``torch.optim`` optimizer of a process imports, 2–4 s, imported here once
before forking) instead of importing them again; nothing has run on torch's thread pool yet
(the pieces start from their seeds, not from this process's state). Elsewhere they are
``spawn``-ed (fresh interpreters). The first piece that fails stops the pieces not yet
started and its exception is raised here; the pieces already finished keep their results
(each writes its own outputs atomically).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["run_pieces"]


def _setup(threads: int, deterministic: bool) -> None:
    from bench.training.runs import setup_torch

    setup_torch(threads, deterministic)


def run_pieces(
    function: Callable[..., T],
    pieces: Sequence[tuple[Any, ...]],
    *,
    workers: int,
    threads: int,
    deterministic: bool,
) -> list[T]:
    """``[function(*piece) for piece in pieces]``, in up to ``workers`` processes.

    ``function`` must be importable by name (a module-level function) and its arguments
    picklable: with more than one worker it runs in another interpreter. Results come back in
    the order of ``pieces``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    count = min(workers, len(pieces))
    if count <= 1:
        return [function(*piece) for piece in pieces]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork":
        import torch._dynamo  # noqa: F401  (see the module docstring)
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(
        max_workers=count, mp_context=context, initializer=_setup,
        initargs=(threads, deterministic),
    ) as pool:  # fmt: skip
        futures = [pool.submit(function, *piece) for piece in pieces]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            for future in futures:
                future.cancel()
            raise failed[0].exception()
        return [future.result() for future in futures]
