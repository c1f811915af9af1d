"""The CI performance-regression gate: key cost ratios against a committed baseline.

Absolute times on shared 2-core machines are noise; ratios of two computations measured
interleaved in the same process are stable to about ±10 %. This gate measures:

* ``partitioned_newton_step / sgd_step`` — one step of our optimizer amortised over its
  recomputation period T (``update_every`` steps, one of which recomputes the curvature),
* ``derivatives_order3_diag / gradient`` — ``projected_derivatives(order=3, diagonal=True)``
  in gradient-equivalents (forward + backward),
* ``kfac_step / sgd_step`` — one K-FAC step (ASDL) amortised over its update period,
* ``derivatives_order3_diag / restricted_reference_order3_diag`` — the engine against the
  restricted reverse route of :mod:`bench.studies.derivative_cost` (the README cost table's
  reference), after checking in float64 that both give the same numbers (to 1e-12 relative),

on the paper's MNIST MLP (784-1024-200-100-10, tanh, batch 100), and compares them with
``results/perf_baseline.json``. A ratio more than ``tolerance`` (30 %) above its baseline fails
the gate with a readable table. The baseline records the machine it was measured on; on another
machine the gate widens the tolerance (×2) and says so.

The workloads are timed by :func:`bench.studies.timer.interleaved` (two warm-up rounds, then
every workload once per round, the order reversed every other round; the median over rounds of
each per-round ratio); the model is :func:`bench.models.mlp_mnist`.

    python -m bench.studies.perf_check                    # compare (make perf-check)
    python -m bench.studies.perf_check --update-baseline  # refresh it (make perf-baseline)
    python -m bench.studies.perf_check --add-missing      # record only the ratios it lacks

``--add-missing`` measures every ratio but writes only those the baseline has no value for
(a newly gated figure), leaving every recorded one as it was; it refuses a baseline measured on
another machine (refresh it whole instead).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.cli import ArgumentParser, run
from bench.errors import UsageError
from bench.io import write_json_atomic
from bench.models import mlp_mnist
from bench.studies.derivative_cost import TOLERANCE as AGREEMENT
from bench.studies.derivative_cost import max_relative_difference, restricted_reverse_reference
from bench.studies.options import positive_float, positive_int, read_result
from bench.studies.timer import interleaved, round_ratios
from bench.studies.workloads import derivatives_work, gradient_work, random_batch

BASELINE = Path("results/perf_baseline.json")
TOLERANCE = 0.30
OTHER_MACHINE_FACTOR = 2.0


def machine() -> dict[str, object]:
    """What identifies the machine a ratio was measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _mlp(seed: int) -> torch.nn.Module:
    return mlp_mnist(generator=torch.Generator().manual_seed(seed))


def _workloads(batch_size: int = 100) -> dict[str, Callable[[], None]]:
    """Zero-argument callables, each one unit of work; built once, timed many times."""
    from optimizers.derivatives import functional_loss
    from optimizers.partition import per_tensor
    from optimizers.registry import make

    gen = torch.Generator().manual_seed(0)
    batch = random_batch((784,), batch_size, gen)
    curvature_batch = random_batch((784,), batch_size, gen)
    sgd = make("sgd", _mlp(1), {"lr": 1e-3})
    ours = make("partitioned_newton", _mlp(1), {"lr": 1e-3})
    kfac = make("kfac", _mlp(1), {"lr": 1e-3})
    period = 10

    def run_sgd() -> None:
        for _ in range(period):
            sgd.step(batch)

    def run_ours() -> None:
        for _ in range(period):
            ours.step(batch, curvature_batch)

    def run_kfac() -> None:
        for _ in range(period):
            kfac.step(batch)

    model = _mlp(2)
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    loss_fn = functional_loss(model, F.cross_entropy, *batch)
    groups = per_tensor(model)
    check_agreement(model, batch, groups, direction)
    return {
        "sgd_step": run_sgd,
        "partitioned_newton_step": run_ours,
        "kfac_step": run_kfac,
        "gradient": gradient_work(model, *batch),
        "derivatives_order3_diag": derivatives_work(
            loss_fn, params, groups, direction, 3, diagonal=True
        ),
        "restricted_reference_order3_diag": functools.partial(
            restricted_reverse_reference, model, *batch, groups, direction, 3
        ),
    }


def check_agreement(model: torch.nn.Module, batch, groups, direction) -> float:
    """Max relative difference, in float64 on a copy of ``model`` and ``batch``, between the
    engine and the restricted reference (order 3 diagonal); AssertionError above 1e-12."""
    from optimizers import projected_derivatives
    from optimizers.derivatives import functional_loss

    model64 = copy.deepcopy(model).to(torch.float64)
    x, y = batch[0].to(torch.float64), batch[1]
    u64 = {n: u.to(torch.float64) for n, u in direction.items()}
    params = {n: p.detach() for n, p in model64.named_parameters()}
    loss_fn = functional_loss(model64, F.cross_entropy, x, y)
    ours = projected_derivatives(loss_fn, params, groups, u64, 3, diagonal=True)
    reference = restricted_reverse_reference(model64, x, y, groups, u64, 3)
    error = max_relative_difference(ours, reference)
    if not error <= AGREEMENT:
        raise AssertionError(
            f"perf-check: the engine and the restricted reference differ by {error:.3g} "
            f"(relative, float64): the ratio would compare different computations"
        )
    return error


RATIOS = {
    "partitioned_newton_step / sgd_step": ("partitioned_newton_step", "sgd_step"),
    "derivatives_order3_diag / gradient": ("derivatives_order3_diag", "gradient"),
    "kfac_step / sgd_step": ("kfac_step", "sgd_step"),
    "derivatives_order3_diag / restricted_reference_order3_diag": (
        "derivatives_order3_diag",
        "restricted_reference_order3_diag",
    ),
}


def measure(rounds: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median over rounds of each ratio; in every round each workload runs once, interleaved."""
    samples = interleaved(_workloads(), rounds, warmup=warmup)
    return {
        name: statistics.median(round_ratios(samples, top, bottom))
        for name, (top, bottom) in RATIOS.items()
    }


def compare(
    measured: dict[str, float], baseline: dict[str, object], current_machine: dict[str, object]
) -> tuple[bool, str]:
    """(passed, readable table) of measured ratios against the baseline's."""
    same_machine = baseline.get("machine") == current_machine
    tolerance = float(baseline.get("tolerance", TOLERANCE))
    if not same_machine:
        tolerance *= OTHER_MACHINE_FACTOR
    reference: dict[str, float] = baseline["ratios"]  # type: ignore[assignment]
    lines = [
        f"| ratio | baseline | measured | change | limit (+{tolerance:.0%}) | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    passed = True
    for name, value in measured.items():
        if name not in reference:
            lines.append(f"| {name} | — | {value:.3f} | — | — | new (no baseline) |")
            continue
        base = float(reference[name])
        change = value / base - 1.0
        ok = value <= base * (1.0 + tolerance)
        passed &= ok
        verdict = "ok" if ok else "REGRESSION"
        limit = base * (1 + tolerance)
        lines.append(
            f"| {name} | {base:.3f} | {value:.3f} | {change:+.0%} | {limit:.3f} | {verdict} |"
        )
    note = (
        "same machine as the baseline"
        if same_machine
        else f"baseline from another machine ({baseline.get('machine')}); "
        f"tolerance widened ×{OTHER_MACHINE_FACTOR:g}"
    )
    return passed, "\n".join(lines) + f"\n\n({note})"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--update-baseline", action="store_true", help="rewrite it whole")
    mode.add_argument(
        "--add-missing", action="store_true", help="record only the ratios the baseline lacks"
    )
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--tolerance", type=positive_float, default=TOLERANCE)
    args = parser.parse_args(argv)
    baseline = None
    if not args.update_baseline:
        if not args.baseline.exists():
            raise UsageError(f"--baseline {args.baseline}: no baseline; run `make perf-baseline`")
        baseline = read_result("--baseline", args.baseline)
    torch.set_num_threads(args.threads)
    current = machine()
    if args.add_missing and baseline.get("machine") != current:
        raise UsageError(
            f"--add-missing: {args.baseline} was measured on {baseline.get('machine')}, this is "
            f"{current}; refresh it whole with `make perf-baseline`"
        )
    try:
        measured = measure(rounds=args.rounds)
    except AssertionError as error:  # the float64 agreement check before timing
        print(error)
        print("perf-check: FAILED (the compared routes disagree)")
        return 1
    if baseline is None or args.add_missing:
        record = baseline_record(measured, baseline, args, current)
        write_json_atomic(args.baseline, record)
        print(json.dumps(record, indent=2))
        return 0
    passed, table = compare(measured, baseline, current)
    print(table)
    print("perf-check: PASSED" if passed else "perf-check: FAILED (ratio regressed)")
    return 0 if passed else 1


def baseline_record(
    measured: dict[str, float], baseline: dict | None, args, current: dict[str, object]
) -> dict[str, object]:
    """A new baseline (``baseline`` None), or ``baseline`` with the measured ratios it lacks
    added and listed under ``added`` (each with its date and command); recorded ones unchanged."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if baseline is None:
        return {
            "ratios": measured,
            "tolerance": args.tolerance,
            "machine": current,
            "rounds": args.rounds,
            "created": created,
            "command": "make perf-baseline",
        }
    missing = {name: value for name, value in measured.items() if name not in baseline["ratios"]}
    added = dict(baseline.get("added", {}))
    command = "python -m bench.studies.perf_check --add-missing"
    added |= {name: {"created": created, "command": command} for name in missing}
    return baseline | {"ratios": baseline["ratios"] | missing, "added": added}


if __name__ == "__main__":
    raise SystemExit(run(main))
