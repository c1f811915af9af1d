"""projected_derivatives is exact on sequence models (float64, fresh seeds, several shapes).

Token and position embeddings (``nn.Embedding``), causal self-attention through
``F.scaled_dot_product_attention(is_causal=True)`` and whole tiny transformer language models
(2 pre-LayerNorm blocks, GELU MLP, d_model 8–16, context 5–8, vocabulary 11), at orders 1–3
including the full order-3 tensor, against the routes of tests/test_derivatives.py:

1. tests/reference.py: the loss in elementary operators (embedding as one-hot @ weight, softmax
   as exp(s − logsumexp s) with an additive −∞ mask, LayerNorm from mean and rsqrt, GELU from
   erf), differentiated by torch.autograd.functional; each of its orders checked against
   finite differences of the order below;
2. finite differences of the engine's own order below, at shifted parameters;
3. the sum identity Σ D^d = L^{(d)}[u, …, u] by nested forward mode.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from reference import (
    DT,
    SEQUENCE_CASES,
    SEQUENCE_CASES_BY_NAME,
    contraction_error,
    directional_derivative,
    finite_difference_check,
    partitions_for,
    phi,
    reference_derivatives,
    relative_error,
    setup,
)
from test_derivatives import FD_TOL, _compare, _shift

from optimizers import partition, projected_derivatives
from optimizers.derivatives import functional_loss

pytestmark = pytest.mark.usefixtures("single_thread")
LMS = [c.name for c in SEQUENCE_CASES if c.name.startswith("transformer")]
IDS = lambda case: case.name  # noqa: E731


@pytest.mark.parametrize("case", SEQUENCE_CASES, ids=IDS)
def test_reference_loss_is_the_module_loss(case, seed):
    s = setup(case, seed)
    direct = case.criterion(s.model(*s.inputs), s.targets)
    for loss in (s.loss_fn(s.params), s.reference_loss_fn(s.params)):
        assert abs(loss - direct) <= 1e-12 * abs(direct), f"{loss.item()} vs {direct.item()}"


@pytest.mark.parametrize("case", SEQUENCE_CASES, ids=IDS)
def test_reference_orders_match_finite_differences_of_the_order_below(case, seed):
    """The reference itself: D^d·v = d/dt D^{d−1}(η = t v), orders 1–3 (blocks of 3 subsets)."""
    s = setup(case, seed)
    groups = partition.blocks(s.model, 3)
    v = torch.randn(len(groups), dtype=DT, generator=s.gen)
    zero = torch.zeros(len(groups), dtype=DT)
    f = phi(s.reference_loss_fn, s.params, groups, s.direction)
    exact = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 3)
    for d in range(1, 4):
        if d == 1:
            below = lambda e: f(e).detach()  # noqa: E731
        else:
            below = lambda e, d=d: reference_derivatives(  # noqa: E731
                s.reference_loss_fn, s.params, groups, s.direction, d - 1, at=e
            )[-1]
        fd = finite_difference_check(below, zero, v, 1e-4)
        err = contraction_error(exact[d - 1], v, fd)
        assert err <= FD_TOL, f"{case.name}: reference order {d} vs FD, rel err {err:.2e}"


@pytest.mark.parametrize("case", SEQUENCE_CASES, ids=IDS)
def test_engine_matches_reference_full_tensors_up_to_order_three(case, seed):
    """Complete D^1, D^2, D^3 for per_module, single, weights_biases, blocks(2), a random map
    (and per_tensor for the models with at most 8 tensors)."""
    s = setup(case, seed)
    kinds = partitions_for(s.model, s.gen)
    if len(s.params) > 8:
        del kinds["per_tensor"]  # S = 30 on the LMs: test_per_tensor_full_order_three
    for kind, groups in kinds.items():
        got = projected_derivatives(s.loss_fn, s.params, groups, s.direction, 3)
        expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 3)
        _compare(got, expected, f"{case.name}/{kind} (S={len(groups)})")


@pytest.mark.parametrize("name", LMS)
def test_per_tensor_full_order_three_against_finite_differences(name, seed):
    """S = 30 (one subset per tensor): the full [30, 30, 30] tensor, contracted with a random v,
    equals central differences of the engine's H̄ at θ + t Σ v_s u_s; likewise H̄·v and ḡ·v;
    every entry symmetric and the diagonal mode its diagonal."""
    s = setup(SEQUENCE_CASES_BY_NAME[name], seed)
    groups = partition.per_tensor(s.model)
    assert len(groups) == 30
    derivatives = projected_derivatives(s.loss_fn, s.params, groups, s.direction, 3)
    v = torch.randn(len(groups), dtype=DT, generator=s.gen)
    zero = torch.zeros(len(groups), dtype=DT)

    def lower(eta, d):
        moved = _shift(s.params, groups, s.direction, eta)
        if d == 0:
            return s.loss_fn(moved).detach()
        return projected_derivatives(s.loss_fn, moved, groups, s.direction, d)[d - 1]

    for d in range(1, 4):
        fd = finite_difference_check(lambda e, d=d: lower(e, d - 1), zero, v, 1e-4)
        err = contraction_error(derivatives[d - 1], v, fd)
        assert err <= FD_TOL, f"{name} order {d}: engine vs FD of order {d - 1}, {err:.2e}"
    third = derivatives[2]
    for perm in itertools.permutations(range(3)):
        assert torch.equal(third, third.permute(perm))
    diagonal = projected_derivatives(s.loss_fn, s.params, groups, s.direction, 3, diagonal=True)
    expected = torch.stack([third[k, k, k] for k in range(len(groups))])
    assert relative_error(diagonal[2], expected) <= 1e-13


@pytest.mark.slow
@pytest.mark.parametrize("name", LMS)
def test_per_tensor_full_order_three_against_the_reference(name, seed):
    """The same S = 30 tensors against the elementary reference (~1 min per model)."""
    s = setup(SEQUENCE_CASES_BY_NAME[name], seed)
    groups = partition.per_tensor(s.model)
    got = projected_derivatives(s.loss_fn, s.params, groups, s.direction, 3)
    expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 3)
    _compare(got, expected, f"{name}/per_tensor (S=30)")


@pytest.mark.parametrize("case", SEQUENCE_CASES, ids=IDS)
def test_sums_are_the_directional_derivatives(case, seed):
    """Σ_{s1..sd} D^d = L^{(d)}(θ)[u, …, u] (nested jvp on the reference) for d = 1..3, and the
    S = 1 result is that number."""
    s = setup(case, seed)
    groups = partition.per_module(s.model)
    derivatives = projected_derivatives(s.loss_fn, s.params, groups, s.direction, 3)
    single = projected_derivatives(s.loss_fn, s.params, partition.single(s.model), s.direction, 3)
    for d, tensor in enumerate(derivatives, start=1):
        directional = directional_derivative(s.reference_loss_fn, s.params, s.direction, d)
        scale = max(1.0, abs(directional.item()))
        assert abs(tensor.sum() - directional) <= 1e-10 * scale, (case.name, d)
        assert abs(single[d - 1].reshape(()) - directional) <= 1e-10 * scale, (case.name, d)


@pytest.mark.parametrize("name", LMS)
def test_float32_close_to_float64(name, seed):
    """The LM in float32 (the benchmark's dtype): orders 1–3 within 1e-4 of float64."""
    case = SEQUENCE_CASES_BY_NAME[name]
    s = setup(case, seed)
    groups = partition.per_module(s.model)
    exact = projected_derivatives(s.loss_fn, s.params, groups, s.direction, 3)
    model32 = s.model.float()
    loss32 = functional_loss(model32, case.criterion, s.inputs[0], s.targets)
    p32 = {n: p.float() for n, p in s.params.items()}
    u32 = {n: u.float() for n, u in s.direction.items()}
    single = projected_derivatives(loss32, p32, groups, u32, 3)
    for d, (a, b) in enumerate(zip(single, exact, strict=True), start=1):
        assert a.dtype == torch.float32
        err = relative_error(a.double(), b)
        assert err <= 1e-4, f"{name} order {d}: float32 vs float64 rel err {err:.2e}"
