"""The CI performance-regression gate: key cost ratios against a committed baseline.

Absolute times on shared 2-core machines are noise; ratios of two computations measured
interleaved in the same process are stable to about ±10 %. This gate measures:

* ``partitioned_newton_step / sgd_step`` — one step of our optimizer amortised over its
  recomputation period T (``update_every`` steps, one of which recomputes the curvature),
* ``derivatives_order3_diag / gradient`` — ``projected_derivatives(order=3, diagonal=True)``
  in gradient-equivalents (forward + backward),
* ``kfac_step / sgd_step`` — one K-FAC step (ASDL) amortised over its update period,

on the paper's MNIST MLP (784-1024-200-100-10, tanh, batch 100), and compares them with
``results/perf_baseline.json``. A ratio more than ``tolerance`` (30 %) above its baseline fails
the gate with a readable table. The baseline records the machine it was measured on; on another
machine the gate widens the tolerance (×2) and says so.

    python -m bench.perf_check                      # compare (make perf-check)
    python -m bench.perf_check --update-baseline    # refresh the baseline (make perf-baseline)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.io import write_json_atomic

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


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    sizes = [784, 1024, 200, 100, 10]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            linear.weight.normal_(0.0, 1.0 / fan_in**0.5)
            linear.bias.zero_()
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _workloads(batch_size: int = 100) -> dict[str, Callable[[], None]]:
    """Zero-argument callables, each one unit of work; built once, timed many times."""
    from optimizers import projected_derivatives
    from optimizers.derivatives import functional_loss
    from optimizers.partition import per_tensor
    from optimizers.registry import make

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 784, generator=gen)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    x2 = torch.randn(batch_size, 784, generator=gen)
    y2 = torch.randint(0, 10, (batch_size,), generator=gen)
    batch, curvature_batch = (x, y), (x2, y2)

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
    groups = per_tensor(model)
    loss_fn = functional_loss(model, F.cross_entropy, x, y)

    def run_gradient() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def run_derivatives() -> None:
        projected_derivatives(loss_fn, params, groups, direction, order=3, diagonal=True)

    return {
        "sgd_step": run_sgd,
        "partitioned_newton_step": run_ours,
        "kfac_step": run_kfac,
        "gradient": run_gradient,
        "derivatives_order3_diag": run_derivatives,
    }


RATIOS = {
    "partitioned_newton_step / sgd_step": ("partitioned_newton_step", "sgd_step"),
    "derivatives_order3_diag / gradient": ("derivatives_order3_diag", "gradient"),
    "kfac_step / sgd_step": ("kfac_step", "sgd_step"),
}


def measure(rounds: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median over rounds of each ratio; in every round each workload runs once, interleaved."""
    work = _workloads()
    for _ in range(warmup):
        for fn in work.values():
            fn()
    per_round: dict[str, list[float]] = {name: [] for name in RATIOS}
    for r in range(rounds):
        names = list(work) if r % 2 == 0 else list(reversed(work))  # alternate the order
        seconds: dict[str, float] = {}
        for name in names:
            start = time.perf_counter()
            work[name]()
            seconds[name] = time.perf_counter() - start
        for ratio, (top, bottom) in RATIOS.items():
            per_round[ratio].append(seconds[top] / seconds[bottom])
    return {name: statistics.median(values) for name, values in per_round.items()}


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--update-baseline", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    current = machine()
    measured = measure(rounds=args.rounds)
    if args.update_baseline:
        record = {
            "ratios": measured,
            "tolerance": args.tolerance,
            "machine": current,
            "rounds": args.rounds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "make perf-baseline",
        }
        write_json_atomic(args.baseline, record)
        print(json.dumps(record, indent=2))
        return 0
    if not args.baseline.exists():
        print(
            f"perf-check: no baseline at {args.baseline}; run `make perf-baseline`", file=sys.stderr
        )
        return 2
    baseline = json.loads(args.baseline.read_text())
    passed, table = compare(measured, baseline, current)
    print(table)
    print("perf-check: PASSED" if passed else "perf-check: FAILED (ratio regressed)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
