"""Cost of one PartitionedNewton step against one SGD step, on the paper's MLP and LeNet-5.

Measured in one process, interleaved, on one batch of 100 (float32, CPU, 1 thread by default):

* ``sgd``: one ``torch.optim.SGD`` step (momentum 0.9) with its closure (forward + backward);
* ``amortised``: a block of T = 10 PartitionedNewton steps (one curvature recomputation: order 3,
  diagonal, per-tensor subsets) divided by T;
* ``plain``: one PartitionedNewton step that does not recompute the curvature;
* ``c``: one ``projected_derivatives`` call (order 3, diagonal) in gradient-equivalents (one
  forward + backward of the training batch).

The target of the optimizer issue: nothing but the recomputation costs, i.e.
amortised / sgd ≤ 1.1 + c / T. Timings are minima over interleaved repetitions (the host is
shared: the least disturbed repetition), ``c`` the median of its per-repetition ratios.

    python -m bench.step_cost --out results/step_cost.json     # make step-cost (~1 min)
    python -m bench.step_cost --readme results/step_cost.json  # the README block

``tests/benchmarks/test_optimizer_speed.py`` runs the same measurement under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.derivative_cost import MODELS
from bench.io import write_json_atomic
from bench.provenance import provenance
from optimizers import PartitionedNewton, functional_loss, projected_derivatives
from optimizers.partition import per_tensor

PROBLEMS = ("mnist_mlp", "cifar10_lenet5")
T = 10


def _seconds(run: Callable[[], Any], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - start) / steps


def measure(
    problem: str, *, batch_size: int = 100, repeats: int = 8, seed: int = 0, period: int = T
) -> dict[str, Any]:
    """The step-cost record of ``problem`` (a key of :data:`bench.derivative_cost.MODELS`)."""
    if problem not in MODELS:
        raise ValueError(f"unknown problem {problem!r} (known: {', '.join(MODELS)})")
    if period < 3 or repeats < 1 or batch_size < 1:
        raise ValueError(f"need period >= 3, repeats >= 1, batch_size >= 1; got {period}, "
                         f"{repeats}, {batch_size}")  # fmt: skip
    build, shape = MODELS[problem]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(batch_size, *shape, generator=generator)
    y = torch.randint(0, 10, (batch_size,), generator=generator)
    x2 = torch.randn(batch_size, *shape, generator=generator)
    y2 = torch.randint(0, 10, (batch_size,), generator=generator)
    sgd_model, ours_model = build(), build()
    ours_model.load_state_dict(sgd_model.state_dict())
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-3, momentum=0.9)
    ours = PartitionedNewton.from_model(ours_model, lr=1e-3, update_every=period, warmup=0)
    curvature = functional_loss(ours_model, F.cross_entropy, x2, y2)

    def closure_of(model, optimizer):
        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return closure

    sgd_closure, ours_closure = closure_of(sgd_model, sgd), closure_of(ours_model, ours)

    def sgd_step() -> None:
        sgd.step(sgd_closure)

    def ours_step() -> None:
        ours.step(ours_closure, curvature if ours.needs_curvature else None)

    params = dict(ours_model.named_parameters())
    groups = per_tensor(ours_model)
    direction = {name: torch.randn_like(p) for name, p in params.items()}

    def derivatives() -> None:
        projected_derivatives(curvature, params, groups, direction, order=3, diagonal=True)

    def gradient() -> None:
        ours_model.zero_grad()
        F.cross_entropy(ours_model(x), y).backward()

    for run in (sgd_step, ours_step, derivatives, gradient):  # warm-up
        run()
    while not ours.needs_curvature:
        ours_step()
    samples: dict[str, list[float]] = {"sgd": [], "amortised": [], "plain": [], "c": []}
    for _ in range(repeats):  # interleaved, so that load on the host hits all alike
        samples["sgd"].append(_seconds(sgd_step, period))
        samples["amortised"].append(_seconds(ours_step, period))  # one recomputation inside
        ours_step()  # the next block's recomputation, then plain steps only
        samples["plain"].append(_seconds(ours_step, period - 2))
        ours_step()
        samples["c"].append(_seconds(derivatives, 3) / _seconds(gradient, 3))
    best = {key: min(values) for key, values in samples.items() if key != "c"}
    c = statistics.median(samples["c"])
    ratio = best["amortised"] / best["sgd"]
    target = 1.1 + c / period
    return {
        "problem": problem,
        "S": len(groups),
        "period": period,
        "sgd_step_ms": 1e3 * best["sgd"],
        "amortised_step_ms": 1e3 * best["amortised"],
        "ratio_amortised_to_sgd": ratio,
        "ratio_plain_to_sgd": best["plain"] / best["sgd"],
        "derivative_cost_gradient_equivalents": c,
        "target": target,
        "meets_target": ratio <= target,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    align = ["---" if c in ("problem", "met") else "---:" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def readme_block(result: dict[str, Any]) -> str:
    """The README's step-cost table, rendered from a stored result."""
    rows = [
        {
            "problem": r["problem"],
            "S": r["S"],
            "SGD step (ms)": f"{r['sgd_step_ms']:.1f}",
            "ours, amortised over T (ms)": f"{r['amortised_step_ms']:.1f}",
            "× SGD": f"{r['ratio_amortised_to_sgd']:.2f}",
            "× SGD without recomputation": f"{r['ratio_plain_to_sgd']:.2f}",
            "c (gradient-equivalents)": f"{r['derivative_cost_gradient_equivalents']:.2f}",
            "target 1.1 + c/T": f"{r['target']:.2f}",
            "met": "yes" if r["meets_target"] else "no",
        }
        for r in result["rows"]
    ]
    prov = result["provenance"]
    note = (
        f"Measured by `{result['command']}` (`make step-cost`) at commit "
        f"`{str(prov.get('git_commit', 'unknown'))[:12]}` on {prov.get('cpu', 'unknown CPU')}, "
        f"{prov.get('threads')} thread(s), torch {prov.get('torch')}, batch "
        f"{result['settings']['batch_size']}, T = {result['settings']['period']}; minima over "
        f"{result['settings']['repeats']} interleaved repetitions."
    )
    return _table(rows) + "\n\n" + note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/step_cost.json"))
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--readme", type=Path, metavar="JSON", help="print a stored result's block")
    args = parser.parse_args(argv)
    if args.readme is not None:
        print(readme_block(json.loads(args.readme.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    settings = {"batch_size": args.batch_size, "repeats": args.repeats, "period": T}
    rows = []
    for problem in args.problems:
        row = measure(problem, batch_size=args.batch_size, repeats=args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "command": "python -m bench.step_cost --out " + str(args.out),
        "settings": settings,
        "rows": rows,
        "provenance": provenance(seed=0, device="cpu", threads=args.threads, params=settings),
    }
    write_json_atomic(args.out, result)
    print(readme_block(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
