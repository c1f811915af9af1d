"""The one timer of every cost study: wall-clock seconds of callables timed interleaved.

Absolute times on a shared machine are noise; the studies report ratios of computations timed
in the same process, in the same rounds, so that a disturbance of the host hits every one alike.
:func:`interleaved` is that protocol:

* ``warmup`` untimed rounds (every callable once, in the order given) unless a ``budget`` asks
  for the last warm-up round to be timed;
* ``rounds`` timed rounds, every callable once per round, the order reversed every other round
  (``alternate``) so that neither always runs first after the other;
* a sample is the seconds of one round's run divided by :attr:`Work.calls`;
* with ``budget`` (seconds per callable), a callable whose warm-up run took ``w`` seconds takes
  part in the first ``min(rounds, budget // w)`` rounds only, and one whose warm-up alone exceeds
  the budget keeps its warm-up time as its single sample.

The study then reduces the samples as it documents (median, minimum, median of per-round ratios
with :func:`round_ratios`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Work", "interleaved", "round_ratios", "seconds"]


@dataclass(frozen=True)
class Work:
    """One timed unit: ``fn`` called ``calls`` times in a row; ``before`` and ``after`` run
    untimed around it (e.g. steps that bring an optimizer to the state the block measures)."""

    fn: Callable[[], object]
    calls: int = 1
    before: Callable[[], object] | None = None
    after: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.calls, bool) or not isinstance(self.calls, int) or self.calls < 1:
            raise ValueError(f"Work.calls must be a positive int, got {self.calls!r}")

    def run(self) -> float:
        """Seconds per call of one run (``before``/``after`` excluded)."""
        if self.before is not None:
            self.before()
        elapsed = seconds(self.fn, self.calls)
        if self.after is not None:
            self.after()
        return elapsed / self.calls


def seconds(fn: Callable[[], object], calls: int = 1) -> float:
    """Wall-clock seconds of ``calls`` consecutive calls of ``fn`` (``time.perf_counter``)."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def interleaved(
    work: Mapping[str, Callable[[], object] | Work],
    rounds: int,
    *,
    warmup: int = 1,
    alternate: bool = True,
    budget: float | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every entry of ``work``, one sample per round it took part in."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    if budget is not None and (warmup < 1 or not budget > 0):
        raise ValueError(f"a budget ({budget!r}) needs warmup >= 1 and a positive value")
    units = {name: item if isinstance(item, Work) else Work(item) for name, item in work.items()}
    for _ in range(warmup - (budget is not None)):
        for unit in units.values():
            unit.run()
    samples: dict[str, list[float]] = {name: [] for name in units}
    planned = dict.fromkeys(units, rounds)
    if budget is not None:  # the last warm-up round, timed: it sets each entry's rounds
        for name, unit in units.items():
            first = unit.run()
            planned[name] = min(rounds, int(budget / first))
            if planned[name] == 0:
                samples[name].append(first)
    for r in range(rounds):
        names = [name for name in units if planned[name] > r]
        for name in reversed(names) if alternate and r % 2 else names:
            samples[name].append(units[name].run())
    return samples


def round_ratios(samples: Mapping[str, list[float]], top: str, bottom: str) -> list[float]:
    """``top / bottom`` per round (both timed in every round)."""
    if len(samples[top]) != len(samples[bottom]):
        raise ValueError(f"{top!r} and {bottom!r} were not timed in the same rounds")
    return [a / b for a, b in zip(samples[top], samples[bottom], strict=True)]
