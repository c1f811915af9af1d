"""Speed of the projected-derivative engine against the nested-reverse reference (METHOD.md §2).

Benchmarks (``make bench``; deselected from the fast suite by the ``benchmark`` marker), on the
three problems of :mod:`bench.studies.derivative_cost` (paper MLP S = 8, LeNet-5 S = 10, deep MLP
S = 42; batch 100, one torch thread):

* ``test_variant_speed``: one pytest-benchmark per (problem, variant) of
  :data:`bench.studies.derivative_cost.ORDER_OF` — a plain gradient, the restricted and the
  unrestricted reference at order 2 and order 3 diagonal, the engine at order 2, order 3
  diagonal and full order 3, the ``split_linear`` route at order 2 and order 3 diagonal.
  ``extra_info`` holds the problem, S and the variant.
* ``test_order3_diagonal_ratio``: engine (order 3, diagonal) / each order-3-diagonal reference,
  timed in the same process, interleaved (median over rounds), stored in ``extra_info`` with the
  gradient-equivalents of all three. Targets: ≤ 1.0 × the unrestricted reference (the engine
  measured 0.3–0.5×), ≤ 1.3 × the restricted one (the engine measured at parity with it, ~1.0×;
  1.3 is the perf gate's tolerance). The routes are first checked to agree in float64.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from bench.studies.derivative_cost import (
    MODELS,
    ORDER_OF,
    check_same_numbers,
    time_variants,
    variants,
)
from optimizers import partition

pytestmark = pytest.mark.benchmark

VARIANTS = list(ORDER_OF)  # gradient, restricted_order2, …, engine_split_order3_diag
HEAVY = {("cifar10_deepmlp_w256", "engine_order3_full")}  # ~800 gradient-equivalents per call


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _work(problem: str):
    return variants(problem)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("problem", list(MODELS))
def test_variant_speed(benchmark, problem, variant):
    fn = _work(problem)[variant]
    benchmark.extra_info.update(
        {
            "problem": problem,
            "subsets": len(partition.per_tensor(MODELS[problem][0]())),
            "variant": variant,
        }
    )
    heavy = (problem, variant) in HEAVY
    benchmark.pedantic(fn, rounds=1 if heavy else 5, iterations=1, warmup_rounds=0 if heavy else 1)


@pytest.mark.parametrize("problem", list(MODELS))
def test_order3_diagonal_ratio(benchmark, problem):
    error = check_same_numbers(problem)
    work = _work(problem)
    names = ("gradient", "restricted_order3_diag", "unrestricted_order3_diag", "engine_order3_diag")
    timing = time_variants({n: work[n] for n in names}, rounds=5, budget_seconds=30.0)
    seconds = {name: measured["seconds"] for name, measured in timing.items()}
    ratios = {
        kind: seconds["engine_order3_diag"] / seconds[f"{kind}_order3_diag"]
        for kind in ("restricted", "unrestricted")
    }
    benchmark.extra_info.update(
        {"problem": problem, "max_relative_difference_float64": error}
        | {f"ratio_engine_order3_diag_vs_{kind}": ratio for kind, ratio in ratios.items()}
        | {f"{name}_gradients": seconds[name] / seconds["gradient"] for name in names[1:]}
    )
    benchmark.pedantic(work["engine_order3_diag"], rounds=1, iterations=1)
    assert all(math.isfinite(r) and r > 0 for r in ratios.values())
    print(f"\n{problem}: engine order-3 diagonal / restricted, unrestricted = {ratios}")
    limits = {"restricted": 1.3, "unrestricted": 1.0}
    for kind, limit in limits.items():
        assert ratios[kind] <= limit, f"{problem}: engine / {kind} = {ratios[kind]:.2f} > {limit}"
