"""Cost of the projected derivatives in gradient-equivalents and against two reverse references.

Both references are written here independently of the engine, with reverse passes w.r.t. the
*parameters* θ (METHOD.md §2), 1 + S (order 2) or 1 + S + S (order-3 diagonal) passes:

* one backward with a graph: ∇L, and ḡ_s = ⟨∇L, u_s⟩;
* S double-backward passes for the rows of H̄ (with a graph when order 3 is wanted);
* S triple-backward passes for the order-3 diagonal D^3_sss.

**The reference** (:func:`restricted_reverse_reference`) restricts every pass to the parameters
it needs, as the paper's reference implementation does: the pass for row s differentiates
⟨∇L, u_s⟩ w.r.t. the parameters of the subsets t ≥ s only (H̄_st, t ≥ s; the rest by symmetry),
the pass for D^3_sss differentiates H̄_ss w.r.t. the parameters of subset s only. The
**unrestricted** route (:func:`nested_reverse_reference`, the second column) differentiates
every parameter at every pass: full Hessian-vector products h_s = ∇⟨∇L, u_s⟩ and full
third-order passes ∇⟨h_s, u_s⟩. Before timing, the engine is checked to agree with both to
1e-12 (relative) in float64.

Problems (METHOD.md §7, built by :data:`bench.models.STUDY_MODELS`, paper initialisation,
cross-entropy, random inputs, batch 100): the MNIST MLP 784-1024-200-100-10 tanh (S = 8), LeNet-5
tanh on 3×32×32 (S = 10) and a deep MLP 3072-(256×20)-10 ELU (S = 42; the paper's width 1024
reduced for CPU). Partition: one subset per parameter tensor, input to output.

Variants (:data:`ORDER_OF`), timed in one process by :func:`bench.studies.timer.interleaved`
(round-robin, order reversed every other round, 15 rounds): one plain gradient (forward +
backward, the unit), each reference at order 2 and at order 3 diagonal, the engine at order 2,
order 3 diagonal and full order 3, and its ``split_linear`` route at order 2 and order 3
diagonal. Seconds are medians over rounds; ratios (gradient-equivalents, × a reference) are
medians of the per-round ratios of two variants timed in the same rounds
(:func:`paired_ratios`), reported with their range. Every variant is compared with the
restricted reference of its order (order-3 variants: the order-3-diagonal one; there is no
full-order-3 reference, it would take S² passes) and with the unrestricted one. A variant whose
warm-up run is long for the per-variant budget is timed in fewer rounds; one whose warm-up alone
exceeds the budget (full order 3 at S = 42) keeps it as its single sample. Peak memory
(:mod:`bench.studies.memory`): the growth of the peak RSS of a fresh subprocess running the
variant once, after building the problem.

Threads: ``--threads`` (default 1). One thread is the reproducible setting: kernels do not
compete with each other or with other jobs for cores, so ratios are stable on a shared machine.

    python -m bench.studies.derivative_cost --out results/derivative_cost.json   # ~11 min
    python -m bench.studies.derivative_cost --readme results/derivative_cost.json

(``make derivative-cost`` runs the first; the second prints the README block of a stored result;
``--quick``: 3 rounds, 5 s per variant, no memory measurement.)
"""

from __future__ import annotations

import functools
import itertools
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
from bench.studies.workloads import gradient_work, random_batch
from optimizers import partition, projected_derivatives
from optimizers.derivatives import functional_loss

MODELS = STUDY_MODELS  # problem: (builder, input shape)
BATCH_SIZE = 100
TOLERANCE = 1e-12  # relative, float64: engine against reference


# -------------------------------------------------------------------- the references
def restricted_reverse_reference(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    groups: list[list[str]],
    direction: dict[str, Tensor],
    order: int = 3,
) -> tuple[Tensor, ...]:
    """(ḡ [S], H̄ [S, S], diag D^3 [S]) up to ``order`` ≤ 3 by 1 + S + S reverse passes w.r.t.
    the parameters of ``model``, each pass restricted to the subsets it needs (the route of the
    paper's reference implementation, written independently here).

    After the one backward with a graph, the pass for row s differentiates ⟨∇L, u_s⟩ w.r.t. the
    parameters of the subsets t ≥ s only (H̄_st for t ≥ s, the rest by symmetry), and the pass for
    D^3_sss differentiates H̄_ss w.r.t. the parameters of subset s only.
    """
    return _reverse_reference(model, x, y, groups, direction, order, restricted=True)


def nested_reverse_reference(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    groups: list[list[str]],
    direction: dict[str, Tensor],
    order: int = 3,
) -> tuple[Tensor, ...]:
    """(ḡ [S], H̄ [S, S], diag D^3 [S]) up to ``order`` ≤ 3 by 1 + S + S nested reverse passes
    w.r.t. *all* the parameters of ``model`` at every pass (the unrestricted route, METHOD.md §2):
    full Hessian-vector products h_s = ∇⟨∇L, u_s⟩ for the rows, full third-order passes
    ∇⟨h_s, u_s⟩ for the diagonal."""
    return _reverse_reference(model, x, y, groups, direction, order, restricted=False)


def _reverse_reference(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    groups: list[list[str]],
    direction: dict[str, Tensor],
    order: int,
    restricted: bool,
) -> tuple[Tensor, ...]:
    """Both references: ``restricted`` chooses the parameters each pass differentiates."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    params = dict(model.named_parameters())
    num_subsets = len(groups)
    leaves = [[params[n] for n in g] for g in groups]  # per subset
    units = [[direction[n] for n in g] for g in groups]
    loss = F.cross_entropy(model(x), y)
    flat = torch.autograd.grad(loss, _flat(leaves), create_graph=order > 1)
    grads = _split(flat, leaves, 0)  # ∇L per subset

    def dot(vectors: list[list[Tensor]], t: int) -> Tensor:  # ⟨vectors_t, u_t⟩
        return sum((v * u).sum() for v, u in zip(vectors[t], units[t], strict=True))

    g_bar = [dot(grads, s) for s in range(num_subsets)]
    if order == 1:
        return (torch.stack(g_bar).detach(),)
    entries: dict[tuple[int, int], Tensor] = {}
    diagonal = []
    for s in range(num_subsets):
        first = s if restricted else 0  # the pass for row s reaches subsets first..S−1
        hvp = torch.autograd.grad(
            g_bar[s],
            _flat(leaves[first:]),
            retain_graph=True,
            create_graph=order > 2,
            materialize_grads=True,
        )
        hvp = _split(hvp, leaves, first)  # h_s = ∇⟨∇L, u_s⟩ on subsets first..S−1
        row = {t: dot(hvp, t) for t in range(first, num_subsets)}  # H̄_st
        entries |= {(s, t): value.detach() for t, value in row.items()}
        if order > 2:  # the pass for D^3_sss reaches subset s alone, or every subset
            first, reach = (s, leaves[s]) if restricted else (0, _flat(leaves))
            third = torch.autograd.grad(row[s], reach, retain_graph=True, materialize_grads=True)
            diagonal.append(dot(_split(third, leaves, first), s).detach())
    h_bar = torch.stack(
        [
            torch.stack(
                [entries[(s, t) if (s, t) in entries else (t, s)] for t in range(num_subsets)]
            )
            for s in range(num_subsets)
        ]
    )
    g_bar = torch.stack(g_bar).detach()
    return (g_bar, h_bar) if order == 2 else (g_bar, h_bar, torch.stack(diagonal))


def _flat(per_subset: list[list[Tensor]]) -> list[Tensor]:
    return [tensor for subset in per_subset for tensor in subset]


def _split(flat: tuple[Tensor, ...], like: list[list[Tensor]], first: int) -> list[list[Tensor]]:
    """``flat`` (the tensors of subsets ``first``, ``first`` + 1, …) regrouped per subset, indexed
    like ``like`` (subsets before ``first``, and after the ones ``flat`` covers, are empty)."""
    out: list[list[Tensor]] = [[] for _ in like]
    position = 0
    for t in range(first, len(like)):
        if position >= len(flat):
            break
        out[t] = list(flat[position : position + len(like[t])])
        position += len(like[t])
    return out


# ------------------------------------------------------------------------- variants
# Each variant is compared with the restricted reference of its order (the reference) and with
# the unrestricted one; order-3 variants with the order-3-diagonal references (no full-order-3
# reference: it would take S² passes).
ORDER_OF = {
    "gradient": 3,
    "restricted_order2": 2,
    "restricted_order3_diag": 3,
    "unrestricted_order2": 2,
    "unrestricted_order3_diag": 3,
    "engine_order2": 2,
    "engine_order3_diag": 3,
    "engine_order3_full": 3,
    "engine_split_order2": 2,  # split_linear=True
    "engine_split_order3_diag": 3,
}
REFERENCE_OF = {
    v: "restricted_order3_diag" if k == 3 else "restricted_order2" for v, k in ORDER_OF.items()
}
REFERENCES = {"restricted": restricted_reverse_reference, "unrestricted": nested_reverse_reference}
UNRESTRICTED_OF = {
    v: "unrestricted_order3_diag" if k == 3 else "unrestricted_order2" for v, k in ORDER_OF.items()
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
    problem_data, restricted = (model, x, y, groups, direction), restricted_reverse_reference

    def engine(order: int, diagonal: bool, split: bool = False) -> Callable[[], object]:
        return functools.partial(
            projected_derivatives, *(loss_fn, params, groups, direction, order),
            diagonal=diagonal, split_linear=split,
        )  # fmt: skip

    return {
        "gradient": gradient_work(model, x, y),
        "restricted_order2": functools.partial(restricted, *problem_data, 2),
        "restricted_order3_diag": functools.partial(restricted, *problem_data, 3),
        "unrestricted_order2": functools.partial(nested_reverse_reference, *problem_data, 2),
        "unrestricted_order3_diag": functools.partial(nested_reverse_reference, *problem_data, 3),
        "engine_order2": engine(2, False),
        "engine_order3_diag": engine(3, True),
        "engine_order3_full": engine(3, False),
        "engine_split_order2": engine(2, False, split=True),
        "engine_split_order3_diag": engine(3, True, split=True),
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
    """Max relative difference of the engine (default and ``split_linear`` routes) against each
    reference (restricted and unrestricted) in float64, orders 2 and 3 diagonal; AssertionError
    above :data:`TOLERANCE`."""
    model, x, y, groups, params, direction = _setup(problem, batch_size, dtype=torch.float64)
    loss_fn = functional_loss(model, F.cross_entropy, x, y)
    worst = 0.0
    for order, split in itertools.product((2, 3), (False, True)):
        ours = projected_derivatives(
            loss_fn, params, groups, direction, order, diagonal=True, split_linear=split
        )
        for name, reference in REFERENCES.items():
            ref = reference(model, x, y, groups, direction, order)
            error = max_relative_difference(ours, ref)
            if not error <= TOLERANCE:
                raise AssertionError(
                    f"{problem}: the engine (split_linear={split}) and the {name} reference "
                    f"differ by {error:.3g} (relative, order {order}, float64)"
                )
            worst = max(worst, error)
    return worst


def max_relative_difference(ours: tuple[Tensor, ...], ref: tuple[Tensor, ...]) -> float:
    """max over the tensors of ‖a − b‖ / ‖b‖."""
    return max(((a - b).norm() / b.norm()).item() for a, b in zip(ours, ref, strict=True))


# ----------------------------------------------------------------------------- report
def markdown_table(rows: list[dict[str, object]]) -> str:
    """The cost table of ``rows``; rows stored before the restricted reference existed (no
    ``vs_unrestricted`` key: a single, unrestricted reference) keep their own layout."""
    if rows and "vs_unrestricted" not in rows[0]:
        return _single_reference_table(rows)
    lines = [
        "| problem | S | variant | ms | gradient-equivalents | × restricted reference "
        "(range over rounds) | × unrestricted reference | peak memory (MB) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        low, high = r["vs_reference_range"]
        spread = "" if r["variant"] == r["reference"] else f" ({low:.2f}–{high:.2f})"
        lines.append(
            f"| {r['problem']} | {r['subsets']} | {r['variant']} | {1e3 * r['seconds']:.1f} | "
            f"{r['gradients']:.2f} | {r['vs_reference']:.2f}{spread} | "
            f"{r['vs_unrestricted']:.2f} | {peak} |"
        )
    return "\n".join(lines)


def _single_reference_table(rows: list[dict[str, object]]) -> str:
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
        f"`{str(prov.get('git_commit', 'unknown'))[:12]}`"
        f"{' with uncommitted changes' if prov.get('git_dirty') else ''} (that commit's command: "
        f"`{result['command']}`) on {prov.get('cpu', 'unknown CPU')}, "
        f"{prov.get('threads')} thread(s), torch {prov.get('torch')}, batch "
        f"{result['settings']['batch_size']}; medians of interleaved rounds. "
        "The README block is refreshed from that file by `make readme`."
    )
    return markdown_table(result["rows"]) + "\n\n" + note


def measure(
    problems: list[str], rounds: int, threads: int, with_memory: bool, budget_seconds: float
) -> list[dict[str, object]]:
    """One row per (problem, variant): median seconds (and every sample), gradient-equivalents,
    × the restricted and × the unrestricted reference of its order (medians of the per-round
    ratios, with their range), peak memory (``with_memory``) and the float64 agreement of the
    engine with both references."""
    torch.set_num_threads(threads)
    rows = []
    for problem in problems:
        error = check_same_numbers(problem)
        samples = interleaved(variants(problem), rounds, budget=budget_seconds)
        subsets = len(partition.per_tensor(MODELS[problem][0]()))
        for variant, values in samples.items():
            reference, unrestricted = REFERENCE_OF[variant], UNRESTRICTED_OF[variant]
            ratios = {
                name: paired_ratios(values, samples[name])
                for name in ("gradient", reference, unrestricted)
            }
            peak = peak_memory_mb(problem, variant, threads) if with_memory else None
            rows.append(
                {
                    "problem": problem,
                    "subsets": subsets,
                    "variant": variant,
                    "seconds": statistics.median(values),
                    "rounds": len(values),
                    "samples_seconds": values,
                    "gradients": statistics.median(ratios["gradient"]),
                    "reference": reference,
                    "vs_reference": statistics.median(ratios[reference]),
                    "vs_reference_range": [min(ratios[reference]), max(ratios[reference])],
                    "unrestricted_reference": unrestricted,
                    "vs_unrestricted": statistics.median(ratios[unrestricted]),
                    "vs_unrestricted_range": [
                        min(ratios[unrestricted]),
                        max(ratios[unrestricted]),
                    ],
                    "peak_memory_mb": peak,
                    "max_relative_difference_float64": error,
                }
            )
        print(f"{problem}: done", file=sys.stderr, flush=True)
    return rows


def paired_ratios(top: list[float], bottom: list[float]) -> list[float]:
    """The per-round ratios top / bottom over the rounds both took part in.

    :func:`interleaved` with a budget times a variant in its *first* rounds only, so the first
    ``min(len(top), len(bottom))`` samples of both come from the same rounds (a variant kept at
    its single warm-up sample is paired with the other's first round). Ratios within a round
    cancel most of a shared machine's slow-downs, which hit both alike.
    """
    return [a / b for a, b in zip(top, bottom, strict=False)]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/derivative_cost.json"))
    parser.add_argument("--rounds", type=positive_int, default=15)  # a shared machine: 7 was noisy
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
