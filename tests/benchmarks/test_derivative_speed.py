"""Speed of the projected-derivative engine against the nested-reverse reference (METHOD.md §2).

Benchmarks (``make bench``; deselected from the fast suite by the ``benchmark`` marker), on the
three problems of :mod:`bench.studies.derivative_cost` (paper MLP S = 8, LeNet-5 S = 10, deep MLP
S = 42; batch 100, one torch thread):

* ``test_variant_speed``: one pytest-benchmark per (problem, variant) — a plain gradient, the
  reference at order 2 and order 3 diagonal, the engine at order 2, order 3 diagonal and full
  order 3. ``extra_info`` holds the problem, S and the variant.
* ``test_order3_diagonal_ratio``: the target. Engine (order 3, diagonal) / reference timed in
  the same process, interleaved (median over rounds), stored in ``extra_info`` with the
  gradient-equivalents of both; target ratio ≤ 1.0 (the engine is ~0.3–0.5 on CPU). The two
  routes are first checked to agree in float64.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from bench.studies.derivative_cost import (
    MODELS,
    REFERENCE_OF,
    check_same_numbers,
    time_variants,
    variants,
)
from optimizers import partition

pytestmark = pytest.mark.benchmark

VARIANTS = list(REFERENCE_OF)  # gradient, reference_order2, …, engine_order3_full
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
    chosen = {n: work[n] for n in ("gradient", "reference_order3_diag", "engine_order3_diag")}
    timing = time_variants(chosen, rounds=5, budget_seconds=30.0)
    seconds = {name: measured["seconds"] for name, measured in timing.items()}
    ratio = seconds["engine_order3_diag"] / seconds["reference_order3_diag"]
    benchmark.extra_info.update(
        {
            "problem": problem,
            "ratio_engine_order3_diag_vs_reference": ratio,
            "engine_order3_diag_gradients": seconds["engine_order3_diag"] / seconds["gradient"],
            "reference_order3_diag_gradients": seconds["reference_order3_diag"]
            / seconds["gradient"],
            "max_relative_difference_float64": error,
        }
    )
    benchmark.pedantic(work["engine_order3_diag"], rounds=1, iterations=1)
    reported = benchmark.extra_info["ratio_engine_order3_diag_vs_reference"]
    assert math.isfinite(reported) and reported > 0
    print(f"\n{problem}: engine order-3 diagonal / reference = {reported:.2f}")
    assert reported <= 1.0, f"{problem}: engine slower than the reference ({reported:.2f}x)"
