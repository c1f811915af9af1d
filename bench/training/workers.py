"""Run independent pieces of a cell (a train cell's seeds, a tune cell's grid points) in parallel.

Each piece is a function of its own seed and hyperparameters alone: it builds its model, its
optimizer and its RNG streams from them (:mod:`bench.training.runs`), so the numbers it
computes do not depend on which process runs it, nor on what runs beside it. ``runtime.workers``
(never a DVC parameter, never in a fingerprint) sets how many processes a cell uses.

With one worker, or one piece, the pieces run in this process, one after the other: exactly
what a cell did before workers existed. Otherwise they run in ``spawn``-ed processes (a fresh
interpreter: no torch thread pool or RNG state inherited by ``fork``), each set up like a stage
(``train.threads``, ``train.deterministic``) and reading the params file itself (its plugins
and registered optimizers included). The first piece that fails stops the pieces not yet
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
    context = multiprocessing.get_context("spawn")
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
