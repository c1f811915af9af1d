"""Cost of the projected derivatives in gradient-equivalents and against a nested-reverse reference.

The reference (:func:`nested_reverse_reference`) is the straightforward route of METHOD.md §2,
written here independently of the engine, with reverse passes w.r.t. the *parameters* θ:

* one backward with a graph: ∇L, and ḡ_s = ⟨∇L, u_s⟩;
* S double-backward passes, the Hessian-vector products h_s = ∇⟨∇L, u_s⟩ (with a graph when
  order 3 is wanted), rows H̄_st = ⟨h_s, u_t⟩;
* S triple-backward passes for the order-3 diagonal D^3_sss = ⟨∇⟨h_s, u_s⟩, u_s⟩.

Problems (METHOD.md §7, built by :data:`bench.models.STUDY_MODELS`, paper initialisation,
cross-entropy, random inputs, batch 100): the MNIST MLP 784-1024-200-100-10 tanh (S = 8), LeNet-5
tanh on 3×32×32 (S = 10) and a deep MLP 3072-(256×20)-10 ELU (S = 42; the paper's width 1024
reduced for CPU). Partition: one subset per parameter tensor.

Variants, timed in one process by :func:`bench.studies.timer.interleaved` (round-robin, order
reversed every other round, median over rounds): one plain gradient (forward + backward, the
unit), the reference at order 2 and at order 3 diagonal, and the engine at order 2, order 3
diagonal and full order 3. A variant whose warm-up run is long for the per-variant budget is timed
in fewer rounds; one whose warm-up alone exceeds the budget (full order 3 at S = 42) keeps it as
its single sample. Peak memory (:mod:`bench.studies.memory`): the growth of the peak RSS of a
fresh subprocess running the variant once, after building the problem. Before timing, the engine
and the reference are checked to agree to 1e-12 (relative) in float64.

Threads: ``--threads`` (default 1). One thread is the reproducible setting: kernels do not
compete with each other or with other jobs for cores, so ratios are stable on a shared machine.

    python -m bench.studies.derivative_cost --out results/derivative_cost.json   # ~7 min
    python -m bench.studies.derivative_cost --readme results/derivative_cost.json

(``make derivative-cost`` runs the first; the second prints the README block of a stored result;
``--quick``: 3 rounds, 5 s per variant, no memory measurement.)
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.cli import ArgumentParser, run
from bench.io import write_json_atomic
from bench.models import STUDY_MODELS
from bench.provenance import provenance
from bench.studies import memory
from bench.studies.options import command_line, positive_float, positive_int, read_result
from bench.studies.timer import interleaved
from bench.studies.workloads import derivatives_work, gradient_work, random_batch
from optimizers import partition, projected_derivatives
from optimizers.derivatives import functional_loss

MODELS = STUDY_MODELS  # problem: (builder, input shape)
BATCH_SIZE = 100
TOLERANCE = 1e-12  # relative, float64: engine against reference


# --------------------------------------------------------------------- the reference
def nested_reverse_reference(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    groups: list[list[str]],
    direction: dict[str, Tensor],
    order: int = 3,
) -> tuple[Tensor, ...]:
    """(ḡ [S], H̄ [S, S], diag D^3 [S]) up to ``order`` ≤ 3 by 1 + S + S nested reverse passes
    w.r.t. the parameters of ``model`` (METHOD.md §2)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    params = dict(model.named_parameters())
    names = [n for g in groups for n in g]
    leaves = [params[n] for n in names]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, leaves, create_graph=order > 1)
    grads = dict(zip(names, grads, strict=True))

    def dot(vectors: dict[str, Tensor], group: list[str]) -> Tensor:
        return sum((vectors[n] * direction[n]).sum() for n in group)

    g_bar = torch.stack([dot(grads, g) for g in groups]).detach()
    if order == 1:
        return (g_bar,)
    rows, diagonal = [], []
    for s, group in enumerate(groups):
        hvp = torch.autograd.grad(
            dot(grads, group), leaves, retain_graph=True, create_graph=order > 2
        )
        hvp = dict(zip(names, hvp, strict=True))  # h_s = ∇⟨∇L, u_s⟩
        rows.append(torch.stack([dot(hvp, g) for g in groups]))  # H̄_s· [S]
        if order > 2:
            third = torch.autograd.grad(rows[-1][s], leaves, retain_graph=True)
            diagonal.append(dot(dict(zip(names, third, strict=True)), group))
    h_bar = torch.stack(rows).detach()
    if order == 2:
        return g_bar, h_bar
    return g_bar, h_bar, torch.stack(diagonal).detach()


# ------------------------------------------------------------------------- variants
REFERENCE_OF = {  # the reference each variant is compared with (× reference)
    "gradient": "reference_order3_diag",
    "reference_order2": "reference_order2",
    "reference_order3_diag": "reference_order3_diag",
    "engine_order2": "reference_order2",
    "engine_order3_diag": "reference_order3_diag",
    "engine_order3_full": "reference_order3_diag",  # no full-order-3 reference: S² passes
}


def _setup(problem: str, batch_size: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    build, shape = MODELS[problem]
    torch.manual_seed(seed)
    model = build().to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x, y = random_batch(shape, batch_size, gen)
    x = x.to(dtype)
    groups = partition.per_tensor(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = {n: torch.randn(p.shape, generator=gen).to(dtype) for n, p in params.items()}
    return model, x, y, groups, params, direction


def variants(problem: str, batch_size: int = BATCH_SIZE) -> dict[str, Callable[[], object]]:
    """The timed callables of one problem, keyed as in :data:`REFERENCE_OF`."""
    model, x, y, groups, params, direction = _setup(problem, batch_size)
    loss_fn = functional_loss(model, F.cross_entropy, x, y)

    def engine(order: int, diagonal: bool) -> Callable[[], object]:
        return derivatives_work(loss_fn, params, groups, direction, order, diagonal=diagonal)

    return {
        "gradient": gradient_work(model, x, y),
        "reference_order2": lambda: nested_reverse_reference(model, x, y, groups, direction, 2),
        "reference_order3_diag": lambda: nested_reverse_reference(model, x, y, groups, direction),
        "engine_order2": engine(2, False),
        "engine_order3_diag": engine(3, True),
        "engine_order3_full": engine(3, False),
    }


def variant_work(problem: str, variant: str, batch_size: int = BATCH_SIZE) -> Callable[[], object]:
    """One variant's callable (the workload :func:`peak_memory_mb` measures in a fresh process)."""
    return variants(problem, batch_size)[variant]


def time_variants(
    work: dict[str, Callable[[], object]], rounds: int, budget_seconds: float
) -> dict[str, dict[str, float]]:
    """Median seconds per variant over interleaved rounds, with a per-variant budget.

    Every variant first runs once (warm-up, timed). A variant then takes part in the first
    ``min(rounds, budget_seconds // warm-up time)`` rounds, alternating with the others in each
    round (order reversed every other round); a variant whose warm-up alone exceeds the budget
    (the full order 3 at S = 42) is not rerun: its warm-up time is its single sample.
    """
    samples = interleaved(work, rounds, budget=budget_seconds)
    return {
        name: {"seconds": statistics.median(values), "rounds": len(values)}
        for name, values in samples.items()
    }


def peak_memory_mb(problem: str, variant: str, threads: int, batch_size: int = BATCH_SIZE) -> float:
    """Peak-RSS growth (MB) of a fresh process running one variant once after building it."""
    return memory.peak_memory_mb(
        "bench.studies.derivative_cost:variant_work",  # not __name__: "__main__" when run
        threads=threads,
        problem=problem,
        variant=variant,
        batch_size=batch_size,
    )


def check_same_numbers(problem: str, batch_size: int = 8) -> float:
    """Max relative difference engine vs reference in float64 (orders 2 and 3 diagonal);
    raises AssertionError above :data:`TOLERANCE`."""
    model, x, y, groups, params, direction = _setup(problem, batch_size, dtype=torch.float64)
    loss_fn = functional_loss(model, F.cross_entropy, x, y)
    worst = 0.0
    for order in (2, 3):
        ours = projected_derivatives(loss_fn, params, groups, direction, order, diagonal=True)
        ref = nested_reverse_reference(model, x, y, groups, direction, order)
        for a, b in zip(ours, ref, strict=True):
            worst = max(worst, ((a - b).norm() / b.norm()).item())
    if not worst <= TOLERANCE:
        raise AssertionError(f"{problem}: engine and reference differ by {worst:.3g} (relative)")
    return worst


# ----------------------------------------------------------------------------- report
def markdown_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| problem | S | variant | ms | gradient-equivalents | × reference | reference | "
        "peak memory (MB) |",
        "|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        peak = "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        lines.append(
            f"| {r['problem']} | {r['subsets']} | {r['variant']} | {1e3 * r['seconds']:.1f} | "
            f"{r['gradients']:.2f} | {r['vs_reference']:.2f} | {r['reference']} | {peak} |"
        )
    return "\n".join(lines)


def readme_block(result: dict[str, object]) -> str:
    """The README's cost table, rendered from a stored result (never typed by hand)."""
    prov = result["provenance"]
    note = (
        f"Measured by `make derivative-cost` at commit "
        f"`{str(prov.get('git_commit', 'unknown'))[:12]}` (that commit's command: "
        f"`{result['command']}`) on {prov.get('cpu', 'unknown CPU')}, "
        f"{prov.get('threads')} thread(s), torch {prov.get('torch')}, batch "
        f"{result['settings']['batch_size']}; medians of interleaved rounds. "
        "The README block is refreshed from that file by `make readme`."
    )
    return markdown_table(result["rows"]) + "\n\n" + note


def measure(
    problems: list[str], rounds: int, threads: int, with_memory: bool, budget_seconds: float
) -> list[dict[str, object]]:
    """One row per (problem, variant): median seconds, gradient-equivalents, × its reference,
    peak memory (``with_memory``) and the float64 agreement of engine and reference."""
    torch.set_num_threads(threads)
    rows = []
    for problem in problems:
        error = check_same_numbers(problem)
        work = variants(problem)
        timing = time_variants(work, rounds, budget_seconds)
        subsets = len(partition.per_tensor(MODELS[problem][0]()))
        for variant, measured in timing.items():
            seconds = measured["seconds"]
            reference = REFERENCE_OF[variant]
            peak = peak_memory_mb(problem, variant, threads) if with_memory else None
            rows.append(
                {
                    "problem": problem,
                    "subsets": subsets,
                    "variant": variant,
                    "seconds": seconds,
                    "rounds": measured["rounds"],
                    "gradients": seconds / timing["gradient"]["seconds"],
                    "reference": reference,
                    "vs_reference": seconds / timing[reference]["seconds"],
                    "peak_memory_mb": peak,
                    "max_relative_difference_float64": error,
                }
            )
        print(f"{problem}: done", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/derivative_cost.json"))
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--budget", type=positive_float, default=20.0, help="seconds per variant")
    parser.add_argument("--problems", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--quick", action="store_true", help="3 rounds, 5 s per variant, no memory measurement"
    )
    parser.add_argument(
        "--readme", type=Path, metavar="JSON", help="print the README block of a stored result"
    )
    args = parser.parse_args(argv)
    if args.readme is not None:
        print(readme_block(read_result("--readme", args.readme)))
        return 0
    rounds, budget = (3, 5.0) if args.quick else (args.rounds, args.budget)
    start = time.perf_counter()
    rows = measure(args.problems, rounds, args.threads, not args.quick, budget)
    settings = {"batch_size": BATCH_SIZE, "rounds": rounds, "budget_seconds": budget}
    settings |= {"problems": args.problems, "quick": args.quick}
    result = {
        "rows": rows,
        "settings": settings,
        "provenance": provenance(
            seed=0, device="cpu", threads=args.threads, params=settings, cwd=Path(__file__).parent
        ),
        "command": command_line("bench.studies.derivative_cost", argv),
        "wall_seconds": time.perf_counter() - start,
        "peak_rss_mb_this_process": memory.high_water_mb(),
    }
    write_json_atomic(args.out, result)
    print(markdown_table(rows))
    print(f"\nwritten to {args.out} in {result['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
