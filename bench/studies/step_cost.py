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
shared: the least disturbed repetition), ``c`` the median of its per-repetition ratios. Every
repetition times the four in the same order (:func:`bench.studies.timer.interleaved` without
alternation): ours' blocks follow its recomputation period. The models are those of
:data:`bench.models.STUDY_MODELS`.

    python -m bench.studies.step_cost --out results/step_cost.json     # make step-cost (~1 min)
    python -m bench.studies.step_cost --readme results/step_cost.json  # the README block

``tests/benchmarks/test_optimizer_speed.py`` runs the same measurement under pytest-benchmark.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.cli import ArgumentParser, run
from bench.io import write_json_atomic
from bench.models import STUDY_MODELS as MODELS
from bench.provenance import provenance
from bench.studies.options import positive_int, read_result
from bench.studies.timer import Work, interleaved, round_ratios
from bench.studies.workloads import closure, derivatives_work, gradient_work, random_batch
from optimizers import PartitionedNewton, functional_loss
from optimizers.partition import per_tensor

PROBLEMS = ("mnist_mlp", "cifar10_lenet5")
T = 10


def _work(problem: str, batch_size: int, seed: int, period: int) -> tuple[dict[str, Work], int]:
    """The timed units of one problem, warmed up and at a recomputation boundary; and S."""
    build, shape = MODELS[problem]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = random_batch(shape, batch_size, generator)
    x2, y2 = random_batch(shape, batch_size, generator)
    sgd_model, ours_model = build(), build()
    ours_model.load_state_dict(sgd_model.state_dict())
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-3, momentum=0.9)
    ours = PartitionedNewton.from_model(ours_model, lr=1e-3, update_every=period, warmup=0)
    curvature = functional_loss(ours_model, F.cross_entropy, x2, y2)
    sgd_closure, ours_closure = closure(sgd_model, sgd, x, y), closure(ours_model, ours, x, y)

    def sgd_step() -> None:
        sgd.step(sgd_closure)

    def ours_step() -> None:
        ours.step(ours_closure, curvature if ours.needs_curvature else None)

    params = dict(ours_model.named_parameters())
    groups = per_tensor(ours_model)
    direction = {name: torch.randn_like(p) for name, p in params.items()}
    derivatives = derivatives_work(curvature, params, groups, direction, 3, diagonal=True)
    gradient = gradient_work(ours_model, x, y)
    for warm in (sgd_step, ours_step, derivatives, gradient):  # warm-up
        warm()
    while not ours.needs_curvature:
        ours_step()
    work = {
        "sgd": Work(sgd_step, period),
        "amortised": Work(ours_step, period),  # one recomputation inside
        # the next block's recomputation, then plain steps only, then back to a block boundary
        "plain": Work(ours_step, period - 2, before=ours_step, after=ours_step),
        "derivatives": Work(derivatives, 3),
        "gradient": Work(gradient, 3),
    }
    return work, len(groups)


def measure(
    problem: str, *, batch_size: int = 100, repeats: int = 8, seed: int = 0, period: int = T
) -> dict[str, Any]:
    """The step-cost record of ``problem`` (a key of :data:`bench.models.STUDY_MODELS`)."""
    if problem not in MODELS:
        raise ValueError(f"unknown problem {problem!r} (known: {', '.join(MODELS)})")
    if period < 3 or repeats < 1 or batch_size < 1:
        raise ValueError(f"need period >= 3, repeats >= 1, batch_size >= 1; got {period}, "
                         f"{repeats}, {batch_size}")  # fmt: skip
    work, subsets = _work(problem, batch_size, seed, period)
    # interleaved, so that load on the host hits all alike; in order: ours' blocks follow T
    samples = interleaved(work, repeats, warmup=0, alternate=False)
    best = {key: min(samples[key]) for key in ("sgd", "amortised", "plain")}
    c = statistics.median(round_ratios(samples, "derivatives", "gradient"))
    ratio = best["amortised"] / best["sgd"]
    target = 1.1 + c / period
    return {
        "problem": problem,
        "S": subsets,
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
        f"Measured by `make step-cost` at commit "
        f"`{str(prov.get('git_commit', 'unknown'))[:12]}` (that commit's command: "
        f"`{result['command']}`) on {prov.get('cpu', 'unknown CPU')}, "
        f"{prov.get('threads')} thread(s), torch {prov.get('torch')}, batch "
        f"{result['settings']['batch_size']}, T = {result['settings']['period']}; minima over "
        f"{result['settings']['repeats']} interleaved repetitions."
    )
    return _table(rows) + "\n\n" + note


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/step_cost.json"))
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=positive_int, default=100)
    parser.add_argument("--repeats", type=positive_int, default=8)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--readme", type=Path, metavar="JSON", help="print a stored result's block")
    args = parser.parse_args(argv)
    if args.readme is not None:
        print(readme_block(read_result("--readme", args.readme)))
        return 0
    torch.set_num_threads(args.threads)
    settings = {"batch_size": args.batch_size, "repeats": args.repeats, "period": T}
    rows = []
    for problem in args.problems:
        row = measure(problem, batch_size=args.batch_size, repeats=args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "command": f"python -m bench.studies.step_cost --out {args.out}",
        "settings": settings,
        "rows": rows,
        "provenance": provenance(seed=0, device="cpu", threads=args.threads, params=settings),
    }
    write_json_atomic(args.out, result)
    print(readme_block(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
