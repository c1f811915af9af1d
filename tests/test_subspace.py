"""Tests of optimizers.subspace.subspace_step against independent float64 references.

References: np.linalg.solve (Newton, and the order-2 "solve" step on indefinite H̄), |H̄| from
np.linalg.eigh (the "saddle_free" step), np.linalg.pinv (singular H̄ in equilibrated variables),
closed forms for S = 1 and for a diagonal hard case, brute-force multi-start minimisation of the
model with scipy.optimize.minimize (plus a grid for S ≤ 2), and the scaling law of METHOD.md §6.
Random inputs come from the ``seed`` fixture (fresh each run, replay with
``HOBENCH_SEED=<int>``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from optimizers.subspace import (
    DROP_TOLERANCE,
    INDEFINITE_MODES,
    OK_STATUSES,
    ZERO_D_TOLERANCE,
    SolverStatus,
    SubspaceStep,
    subspace_step,
)

RESIDUAL_TOLERANCE = 1e-10
SCALING_TOLERANCE = 1e-12


def model(eta, g, H, d, lambda_int):
    """m(η) = −ḡᵀη + ½ηᵀH̄η + (λ_int/6)‖Dη‖³, written out independently of the solver."""
    eta = np.asarray(eta, dtype=np.float64)
    return -g @ eta + 0.5 * eta @ H @ eta + lambda_int / 6.0 * np.linalg.norm(d * eta) ** 3


def model_gradient(eta, g, H, d, lambda_int):
    y = d * eta
    return -g + H @ eta + 0.5 * lambda_int * np.linalg.norm(y) * d * y


def brute_force_minimum(g, H, d, lambda_int, rng, starts, radius):
    """Lowest model value found by BFGS from random starts (and a grid for S ≤ 2) in a box."""
    size = g.shape[0]
    objective = lambda x: model(x, g, H, d, lambda_int)
    gradient = lambda x: model_gradient(x, g, H, d, lambda_int)
    candidates = [rng.uniform(-radius, radius, size) for _ in range(starts)]
    candidates += [rng.normal(size=size) * 10.0 ** rng.uniform(-2, 1) for _ in range(starts)]
    if size <= 2:
        axis = np.linspace(-radius, radius, 201 if size == 1 else 61)
        grid = np.array(list(itertools.product(axis, repeat=size)))
        values = np.array([objective(x) for x in grid])
        candidates += list(grid[np.argsort(values)[:5]])
    best = math.inf
    for start in candidates:
        result = minimize(objective, start, jac=gradient, method="BFGS", options={"gtol": 1e-12})
        best = min(best, float(result.fun), objective(start))
    return best


def a_priori_radius(g, H, d, lambda_int):
    """A box holding every η with m(η) ≤ 0 when all d_s > 0 (from (λ/6)r³ ≤ ‖b‖r + ½‖M‖r²)."""
    b = g / d
    M = H / np.outer(d, d)
    norm_m, norm_b = np.linalg.norm(M, 2), np.linalg.norm(b)
    r = (3.0 / lambda_int) * (
        0.5 * norm_m + math.sqrt(0.25 * norm_m**2 + 2 * lambda_int * norm_b / 3)
    )
    return 1.05 * r / d.min()


def random_symmetric(rng, size, kind):
    """H̄ [S, S] with eigenvalues of size 0.3..3: 'pd' all positive, 'indefinite' ≥ 1 negative."""
    q, _ = np.linalg.qr(rng.normal(size=(size, size)))
    magnitudes = 10.0 ** rng.uniform(-0.5, 0.5, size)
    signs = np.ones(size)
    if kind == "indefinite":
        signs = rng.choice([-1.0, 1.0], size)
        signs[rng.integers(size)] = -1.0
    return (q * (signs * magnitudes)) @ q.T


def random_case(rng, size, kind):
    """(ḡ, H̄, d, λ_int, expected status) for the kinds pd, indefinite, zero_d, zero_d_unbounded."""
    g = rng.normal(size=size)
    lambda_int = float(rng.choice([0.5, 1.0, 3.0]))
    d = 10.0 ** rng.uniform(-0.5, 0.5, size)
    if kind == "pd":
        return (
            g,
            random_symmetric(rng, size, "pd"),
            d,
            lambda_int,
            SolverStatus.CUBIC_POSITIVE_DEFINITE,
        )
    if kind == "indefinite":
        H = random_symmetric(rng, size, "indefinite")
        return g, H, d, lambda_int, SolverStatus.CUBIC_INDEFINITE
    zero = rng.random(size) < 0.5
    zero[rng.integers(size)] = True
    d[zero] = 0.0
    H = random_symmetric(rng, size, rng.choice(["pd", "indefinite"]))
    block = random_symmetric(rng, int(zero.sum()), "pd" if kind == "zero_d" else "indefinite")
    H[np.ix_(zero, zero)] = block
    expected = SolverStatus.CUBIC_SINGULAR_D if kind == "zero_d" else SolverStatus.UNBOUNDED
    return g, H, d, lambda_int, expected


def relative_error(value, reference):
    """Normwise ‖value − reference‖ / ‖reference‖ (H̄'s eigenvalues are 0.3..3 in these tests)."""
    return np.linalg.norm(value - reference) / np.linalg.norm(reference)


def assert_stationary(step, g, H, d, lambda_int):
    assert step.residual <= RESIDUAL_TOLERANCE, step
    eta = step.eta.numpy()
    gradient = model_gradient(eta, g, H, d, lambda_int)
    scale = np.linalg.norm(g) + np.linalg.norm(H, 2) * np.linalg.norm(eta) + 1e-300
    scale += lambda_int * np.linalg.norm(d * eta) * np.linalg.norm(d**2 * eta)
    assert np.linalg.norm(gradient) <= 1e-9 * scale, (gradient, scale)


def check_global_minimum(seed, size, kind, starts):
    rng = np.random.default_rng(seed)
    g, H, d, lambda_int, expected = random_case(rng, size, kind)
    step = subspace_step(g, H, d, lambda_int)
    assert step.status is expected, step
    if expected is SolverStatus.UNBOUNDED:
        zero = d == 0
        curvature, vectors = np.linalg.eigh(H[np.ix_(zero, zero)])
        direction = np.zeros(size)
        direction[zero] = vectors[:, 0]
        assert curvature[0] < 0 and model(1e4 * direction, g, H, d, lambda_int) < -1e6
        assert not step.ok and torch.all(step.eta == 0)
        return
    assert step.ok
    eta = step.eta.numpy()
    value = model(eta, g, H, d, lambda_int)
    assert step.model_value == pytest.approx(value, rel=1e-12, abs=1e-14)
    assert step.r == pytest.approx(np.linalg.norm(d * eta), rel=1e-12, abs=1e-300)
    assert_stationary(step, g, H, d, lambda_int)
    if (d > 0).all():
        radius = a_priori_radius(g, H, d, lambda_int)
    else:
        radius = 2.0 * np.abs(eta).max() + 1.0
    best = brute_force_minimum(g, H, d, lambda_int, rng, starts, radius)
    assert value <= best + 1e-10 * (1.0 + abs(best)), (value, best)


KINDS = ["pd", "indefinite", "zero_d", "zero_d_unbounded"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_global_minimum_against_brute_force(seed, size, kind):
    check_global_minimum(seed, size, kind, starts=6)


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(10))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_global_minimum_against_brute_force_sweep(seed, size, kind, repeat):
    check_global_minimum(seed + repeat, size, kind, starts=30)


def test_newton_equals_linear_solve(seed):
    rng = np.random.default_rng(seed)
    for size in (1, 2, 5, 20):
        g, H = rng.normal(size=size), random_symmetric(rng, size, "pd")
        for d, lambda_int in ((None, 0.0), (None, 1.0), (10.0 ** rng.uniform(-1, 1, size), 0.0)):
            step = subspace_step(g, H, d, lambda_int)
            assert step.status is SolverStatus.NEWTON and step.ok and step.r == 0.0
            expected = np.linalg.solve(H, g)
            assert relative_error(step.eta.numpy(), expected) <= 1e-12, seed
            assert step.model_value == pytest.approx(-0.5 * g @ expected, rel=1e-12)
            assert_stationary(step, g, H, np.zeros(size), 0.0)


def test_newton_refuses_not_positive_definite(seed):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=3)
    singular = np.full((3, 3), 2.0)  # rank 1; diagonal scaling cannot hide it
    for H in (random_symmetric(rng, 3, "indefinite"), np.diag([1.0, 0.0, 2.0]), singular):
        step = subspace_step(g, H)
        assert step.status is SolverStatus.NOT_POSITIVE_DEFINITE and not step.ok
        assert torch.all(step.eta == 0) and math.isnan(step.residual)


def test_newton_is_scale_aware_not_absolute():
    """diag(1, 1e-17, 1) ≻ 0 is a rescaled identity (METHOD.md §6): no absolute threshold."""
    step = subspace_step([1.0, 1.0, 1.0], np.diag([1.0, 1e-17, 1.0]))
    assert step.status is SolverStatus.NEWTON
    assert step.eta[1].item() == pytest.approx(1e17, rel=1e-15)


def test_cauchy_step_is_closed_form(seed):
    rng = np.random.default_rng(seed)
    g, H = rng.normal(), 10.0 ** rng.uniform(-3, 3)
    step = subspace_step(
        torch.tensor([g], dtype=torch.float64), torch.tensor([[H]], dtype=torch.float64)
    )
    assert step.status is SolverStatus.NEWTON
    assert step.eta.item() == pytest.approx(g / H, rel=1e-15)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cubic_one_dimensional_closed_form(seed, sign):
    """S = 1: |η| = x solves (λ/2)d³x² + H̄x − |ḡ| = 0, η = sign(ḡ) x."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        g, H = rng.normal() * 10.0 ** rng.uniform(-2, 2), sign * 10.0 ** rng.uniform(-2, 2)
        d, lambda_int = 10.0 ** rng.uniform(-2, 2), float(rng.choice([0.5, 1.0, 3.0]))
        c = lambda_int * d**3
        x = (
            2 * abs(g) / (H + math.sqrt(H * H + 2 * c * abs(g)))
            if H > 0
            else ((-H + math.sqrt(H * H + 2 * c * abs(g))) / c)
        )
        step = subspace_step([g], [[H]], [d], lambda_int)
        if H > 0 and c * abs(g) <= ZERO_D_TOLERANCE * H * H:  # d counts as zero: η = ḡ/H̄
            assert step.status is SolverStatus.CUBIC_SINGULAR_D, (g, H, d, lambda_int)
            assert step.eta.item() == pytest.approx(math.copysign(x, g), rel=1e-12)
            continue
        expected_status = (
            SolverStatus.CUBIC_POSITIVE_DEFINITE if H > 0 else SolverStatus.CUBIC_INDEFINITE
        )
        assert step.status is expected_status, (g, H, d, lambda_int)
        assert step.eta.item() == pytest.approx(math.copysign(x, g), rel=1e-13), (g, H, d)
        assert step.r == pytest.approx(d * x, rel=1e-13)


def test_one_dimensional_hard_case_and_zero_gradient():
    """S = 1, ḡ = 0: H̄ < 0 gives |η| = −2H̄/(λ d³) (either sign), H̄ > 0 gives η = 0."""
    step = subspace_step([0.0], [[-3.0]], [2.0], 0.5)
    assert step.status is SolverStatus.HARD_CASE and step.ok
    x = 2 * 3.0 / (0.5 * 8.0)
    assert abs(step.eta.item()) == pytest.approx(x, rel=1e-14)
    assert step.model_value == pytest.approx(-0.5 * 3.0 * x * x + 0.5 / 6 * 8.0 * x**3, rel=1e-14)
    step = subspace_step([0.0], [[3.0]], [2.0], 0.5)
    assert step.status is SolverStatus.CUBIC_POSITIVE_DEFINITE and step.eta.item() == 0.0


@pytest.mark.parametrize("g2", [0.0, 1.0, -5.9])
def test_hard_case_diagonal(g2):
    """H̄ = diag(−1, 2), D = I, λ = 1, ḡ = (0, g2), |g2| < 6: η = (±(4 − (g2/3)²)^{1/2}, g2/3)."""
    g, H, d = np.array([0.0, g2]), np.diag([-1.0, 2.0]), np.ones(2)
    step = subspace_step(g, H, d, 1.0)
    assert step.status is SolverStatus.HARD_CASE and step.ok
    eta2 = g2 / 3
    eta1 = math.sqrt(4 - eta2**2)
    assert np.allclose(np.abs(step.eta.numpy()), [eta1, abs(eta2)], rtol=1e-14, atol=1e-15)
    assert step.r == pytest.approx(2.0, rel=1e-14)
    assert step.model_value == pytest.approx(model(np.array([eta1, eta2]), g, H, d, 1.0), rel=1e-13)
    assert_stationary(step, g, H, d, 1.0)
    # just outside the hard case: the easy case, with a root r > r0 = 2
    step = subspace_step(np.array([0.0, 6.5]), H, d, 1.0)
    assert step.status is SolverStatus.CUBIC_INDEFINITE and step.r > 2.0


def rotated_hard_case(rng, size):
    """M = Q diag(μ) Qᵀ with λ_min < 0 simple, b ⊥ q_min, ‖M_rest⁺ b‖ < r0; H̄ = DMD, ḡ = Db."""
    q, _ = np.linalg.qr(rng.normal(size=(size, size)))
    mu = np.concatenate([[-1.5], 10.0 ** rng.uniform(-0.3, 0.5, size - 1)])
    lambda_int, d = 1.0, 10.0 ** rng.uniform(-1, 1, size)
    coefficients = np.concatenate([[0.0], rng.normal(size=size - 1)])
    coefficients *= 0.5 * (1.5 / 0.5) / np.linalg.norm(coefficients[1:] / (mu[1:] + 1.5))
    b = q @ coefficients
    M = (q * mu) @ q.T
    y0 = q[:, 1:] @ (coefficients[1:] / (mu[1:] + 1.5))
    t = math.sqrt((1.5 / 0.5) ** 2 - y0 @ y0)
    expected_value = -b @ y0 + 0.5 * y0 @ M @ y0 + 0.5 * t * t * mu[0] + lambda_int / 6 * 3.0**3
    return d * b, d[:, None] * M * d[None, :], d, lambda_int, expected_value


def test_hard_case_rotated_model_value(seed):
    rng = np.random.default_rng(seed)
    for size in (2, 3, 5):
        g, H, d, lambda_int, expected_value = rotated_hard_case(rng, size)
        step = subspace_step(g, H, d, lambda_int)
        assert step.status is SolverStatus.HARD_CASE, (seed, step)
        assert step.model_value == pytest.approx(expected_value, rel=1e-12)
        assert model(step.eta.numpy(), g, H, d, lambda_int) == pytest.approx(
            expected_value, rel=1e-12
        )
        assert step.r == pytest.approx(3.0, rel=1e-12)
        assert_stationary(step, g, H, d, lambda_int)


def test_singular_d_schur_complement(seed):
    """d = (d1, 0): η2 = (ḡ2 − H̄21 η1)/H̄22, η1 solves the S = 1 cubic of the Schur complement."""
    rng = np.random.default_rng(seed)
    g, d1, lambda_int = rng.normal(size=2), 10.0 ** rng.uniform(-1, 1), 1.0
    H = random_symmetric(rng, 2, "indefinite")
    H[1, 1] = abs(H[1, 1]) + 0.5
    step = subspace_step(g, H, [d1, 0.0], lambda_int)
    assert step.status is SolverStatus.CUBIC_SINGULAR_D
    g_schur, H_schur = g[0] - H[0, 1] * g[1] / H[1, 1], H[0, 0] - H[0, 1] ** 2 / H[1, 1]
    reference = subspace_step([g_schur], [[H_schur]], [d1], lambda_int)
    eta = step.eta.numpy()
    assert eta[0] == pytest.approx(reference.eta.item(), rel=1e-12)
    assert eta[1] == pytest.approx((g[1] - H[1, 0] * eta[0]) / H[1, 1], rel=1e-12)
    # all d = 0: the quadratic model, η = H̄⁻¹ḡ when H̄ ≻ 0
    H = random_symmetric(rng, 3, "pd")
    g = rng.normal(size=3)
    step = subspace_step(g, H, np.zeros(3), 1.0)
    assert step.status is SolverStatus.CUBIC_SINGULAR_D
    assert relative_error(step.eta.numpy(), np.linalg.solve(H, g)) <= 1e-12


def test_decoupled_zero_subset_gets_zero_step(seed):
    """u_s = 0 for one subset: its ḡ_s, row of H̄ and d_s are all zero; η_s = 0, others unchanged."""
    rng = np.random.default_rng(seed)
    g, H, d = (
        rng.normal(size=3),
        random_symmetric(rng, 3, "indefinite"),
        10.0 ** rng.uniform(-1, 1, 3),
    )
    full = subspace_step(g, H, d, 1.0)
    g0, H0, d0 = (
        np.insert(g, 1, 0.0),
        np.insert(np.insert(H, 1, 0.0, axis=0), 1, 0.0, axis=1),
        np.insert(d, 1, 0.0),
    )
    step = subspace_step(g0, H0, d0, 1.0)
    assert step.status is SolverStatus.CUBIC_SINGULAR_D and step.eta[1].item() == 0.0
    assert np.allclose(np.delete(step.eta.numpy(), 1), full.eta.numpy(), rtol=1e-12, atol=0)


def test_near_zero_d_counts_as_zero(seed):
    """λ d_s³ |ḡ_s| ≤ ε H̄_ss² and (λ/2) r d_s² ≤ DROP_TOLERANCE H̄_ss: d_s is dropped."""
    rng = np.random.default_rng(seed)
    g, H = rng.normal(size=2) + np.array([0.0, 1.0]), random_symmetric(rng, 2, "pd")
    exact = subspace_step(g, H, [1.0, 0.0], 1.0)
    a_priori = (ZERO_D_TOLERANCE * H[1, 1] ** 2 / abs(g[1])) ** (1 / 3)
    a_posteriori = math.sqrt(DROP_TOLERANCE * H[1, 1] / (0.5 * exact.r))
    tiny = 0.5 * min(a_priori, a_posteriori)
    near = subspace_step(g, H, [1.0, tiny], 1.0)
    assert near.status is SolverStatus.CUBIC_SINGULAR_D
    assert relative_error(near.eta.numpy(), exact.eta.numpy()) <= 1e-12
    # the dropped term (λ/2) r d_s² η_s is what the residual sees: at most ~DROP_TOLERANCE
    assert near.residual <= DROP_TOLERANCE
    above = subspace_step(g, H, [1.0, 4 * a_priori], 1.0)
    assert above.status is SolverStatus.CUBIC_POSITIVE_DEFINITE


def test_dropped_d_restored_when_its_term_matters(seed):
    """ḡ_s tiny passes the a priori test, but (λ/2) r d_s² ≫ DROP_TOLERANCE H̄_ss at the step:
    d_s is kept, and the step is stationary for the full model."""
    rng = np.random.default_rng(seed)
    g, H = np.array([rng.normal() + 3.0, 1e-9]), random_symmetric(rng, 2, "pd")
    d = np.array([1.0, 0.5 * (ZERO_D_TOLERANCE * H[1, 1] ** 2 / 1e-9) ** (1 / 3)])
    step = subspace_step(g, H, d, 1.0)
    assert step.status is SolverStatus.CUBIC_POSITIVE_DEFINITE
    assert_stationary(step, g, H, d, 1.0)
    # with ḡ_s = 0 the a priori test does not apply at all: same status, stationary
    g[1] = 0.0
    step = subspace_step(g, H, [1.0, 1e-3], 1.0)
    assert step.status is SolverStatus.CUBIC_POSITIVE_DEFINITE
    assert_stationary(step, g, H, np.array([1.0, 1e-3]), 1.0)


def test_extreme_grading_counts_as_zero(seed):
    """d_s²/H̄_ss below eps times the other subsets' (M graded beyond float64): dropped."""
    rng = np.random.default_rng(seed)
    g, H = rng.normal(size=3), random_symmetric(rng, 3, "pd")
    g[1] = 0.0
    d = np.array([1.0, 1e-60, 2.0])
    step, exact = subspace_step(g, H, d, 1.0), subspace_step(g, H, [1.0, 0.0, 2.0], 1.0)
    assert step.status is SolverStatus.CUBIC_SINGULAR_D
    assert relative_error(step.eta.numpy(), exact.eta.numpy()) <= 1e-12


def test_unbounded_cases():
    # negative curvature on ker(D)
    step = subspace_step([1.0, 1.0], np.diag([1.0, -2.0]), [1.0, 0.0], 1.0)
    assert step.status is SolverStatus.UNBOUNDED and not step.ok
    # a null direction v of H̄ on ker(D) with ḡᵀv ≠ 0: m(t v) = −t ḡᵀv
    step = subspace_step([0.0, 1.0], np.diag([1.0, 0.0]), [1.0, 0.0], 1.0)
    assert step.status is SolverStatus.UNBOUNDED
    # the same with ḡᵀv = 0 is bounded: η_2 = 0 (minimum norm)
    step = subspace_step([1.0, 0.0], np.diag([1.0, 0.0]), [1.0, 0.0], 1.0)
    assert step.status is SolverStatus.CUBIC_SINGULAR_D and step.eta[1].item() == 0.0
    # null direction on ker(D) coupled to the other subsets: m(1, −t) = ½ − t + 1/6 → −∞
    g, H, d = np.zeros(2), np.array([[1.0, 1.0], [1.0, 0.0]]), np.array([1.0, 0.0])
    assert model(np.array([1.0, -1e6]), g, H, d, 1.0) < -1e5
    step = subspace_step(g, H, d, 1.0)
    assert step.status is SolverStatus.UNBOUNDED and torch.all(step.eta == 0)
    assert step.r == 0.0 and step.model_value == 0.0


@pytest.mark.parametrize(
    ("where", "value"),
    [(w, v) for w in ("g", "H") for v in (math.nan, math.inf, -math.inf)]
    + [("d", math.nan), ("d", math.inf)],  # −inf in d is a negative d: ValueError
)
def test_non_finite_inputs(where, value):
    inputs = {"g": np.ones(2), "H": np.eye(2), "d": np.ones(2)}
    inputs[where][1] = value
    step = subspace_step(inputs["g"], inputs["H"], inputs["d"], 1.0)
    assert step.status is SolverStatus.NON_FINITE and not step.ok
    assert torch.all(step.eta == 0) and step.eta.shape == (2,)


@pytest.mark.parametrize(
    ("g", "H", "d", "lambda_int", "match"),
    [
        (np.ones((2, 1)), np.eye(2), None, 0.0, r"g must have shape"),
        (np.ones(0), np.eye(0), None, 0.0, r"S >= 1"),
        (np.ones(2), np.eye(3), None, 0.0, r"H must have shape.*\[3, 3\]"),
        (np.ones(2), np.ones(2), None, 0.0, r"H must have shape"),
        (np.ones(2), np.eye(2), np.ones(3), 1.0, r"d must have shape.*\[3\]"),
        (np.ones(2), np.eye(2), np.array([1.0, -0.5]), 1.0, r"d must be >= 0.*-0.5"),
        (np.ones(2), np.eye(2), np.ones(2), -1.0, r"lambda_int.*-1.0"),
        (np.ones(2), np.eye(2), np.ones(2), math.nan, r"lambda_int.*nan"),
        (np.ones(2), np.eye(2), np.ones(2), "one", r"lambda_int.*one"),
        (["a", "b"], np.eye(2), None, 0.0, r"g must be real"),
    ],
)
def test_bad_inputs_raise(g, H, d, lambda_int, match):
    with pytest.raises(ValueError, match=match):
        subspace_step(g, H, d, lambda_int)


def test_bad_indefinite_mode_raises():
    with pytest.raises(ValueError, match=r"indefinite must be one of.*'newton'"):
        subspace_step(np.ones(2), np.eye(2), indefinite="newton")


def test_input_types_and_result_record(seed):
    rng = np.random.default_rng(seed)
    g, H, d = rng.normal(size=3), random_symmetric(rng, 3, "indefinite"), rng.uniform(0.5, 2, 3)
    reference = subspace_step(g, H, d, 1.0)
    as_torch = subspace_step(
        torch.tensor(g, requires_grad=True), torch.tensor(H), torch.tensor(d), torch.tensor(1.0)
    )
    as_list = subspace_step(g.tolist(), H.tolist(), d.tolist(), 1)
    for step in (as_torch, as_list):
        assert step.eta.dtype == torch.float64 and step.eta.device.type == "cpu"
        assert not step.eta.requires_grad and step.eta.shape == (3,)
        assert torch.equal(step.eta, reference.eta) and step.status is reference.status
    as_float32 = subspace_step(torch.tensor(g, dtype=torch.float32), H, d, 1.0)
    assert as_float32.eta.dtype == torch.float64
    assert isinstance(reference.status, str) and reference.status == "cubic_indefinite"
    assert SolverStatus("hard_case") is SolverStatus.HARD_CASE
    with pytest.raises(dataclasses.FrozenInstanceError):
        reference.r = 0.0  # type: ignore[misc]
    assert isinstance(reference, SubspaceStep)
    # a non-symmetric H̄ is replaced by (H̄ + H̄ᵀ)/2
    skew = rng.normal(size=(3, 3))
    skewed = subspace_step(g, H + skew - skew.T, d, 1.0)
    assert np.allclose(skewed.eta.numpy(), reference.eta.numpy(), rtol=1e-12, atol=1e-14)
    assert [s.value for s in SolverStatus] == [  # in this order: PartitionedNewton's codes
        "newton",
        "not_positive_definite",
        "cubic_positive_definite",
        "cubic_indefinite",
        "cubic_singular_d",
        "hard_case",
        "unbounded",
        "non_finite",
        "newton_indefinite",
        "saddle_free",
        "order2_singular",
        "flat_subset",
    ]
    refused = {SolverStatus.NOT_POSITIVE_DEFINITE, SolverStatus.UNBOUNDED, SolverStatus.NON_FINITE}
    assert set(SolverStatus) - OK_STATUSES == refused


def scaled(g, H, d, a):
    """METHOD.md §6: ḡ_s a_s², H̄_st a_s² a_t², d_s a_s²."""
    a2 = a**2
    return a2 * g, a2[:, None] * H * a2[None, :], None if d is None else a2 * d


def scaling_cases(rng):
    """One case per ok status, (name, ḡ, H̄, d, λ_int, compare η or only model values)."""
    size = 4
    g = rng.normal(size=size)
    pd, indefinite = random_symmetric(rng, size, "pd"), random_symmetric(rng, size, "indefinite")
    d = 10.0 ** rng.uniform(-0.5, 0.5, size)
    with_zero = d.copy()
    with_zero[[1, 3]] = 0.0
    bounded = indefinite.copy()
    bounded[np.ix_([1, 3], [1, 3])] = random_symmetric(rng, 2, "pd")
    hard = np.zeros((size, size))
    hard[0, 0], hard[1:, 1:] = -1.5 * d[0] ** 2, pd[1:, 1:]
    hard_g = np.concatenate([[0.0], 0.01 * g[1:]])
    rotated_g, rotated_H, rotated_d, rotated_lambda, _ = rotated_hard_case(rng, size)
    yield SolverStatus.NEWTON, g, pd, None, 0.0, True
    yield SolverStatus.CUBIC_POSITIVE_DEFINITE, g, pd, d, 1.0, True
    yield SolverStatus.CUBIC_INDEFINITE, g, indefinite, d, 3.0, True
    yield SolverStatus.CUBIC_SINGULAR_D, g, bounded, with_zero, 1.0, True
    yield SolverStatus.HARD_CASE, hard_g, hard, d, 1.0, True
    yield SolverStatus.HARD_CASE, rotated_g, rotated_H, rotated_d, rotated_lambda, False


def test_scaling_law(seed):
    """η̃_s = η_s / a_s² (and equal status, r, model value) to 1e-12 relative, every ok status."""
    rng = np.random.default_rng(seed)
    for status, g, H, d, lambda_int, compare_eta in scaling_cases(rng):
        a = 10.0 ** rng.uniform(-2, 2, g.shape[0]) * rng.choice([-1.0, 1.0], g.shape[0])
        step = subspace_step(g, H, d, lambda_int)
        other = subspace_step(*scaled(g, H, d, a), lambda_int)
        assert step.status is status and other.status is status, (status, step, other)
        back = other.eta.numpy() * a**2
        eta = step.eta.numpy()
        if compare_eta:
            error = np.linalg.norm(back - eta) / np.linalg.norm(eta)
            assert error <= SCALING_TOLERANCE, (status, error)
        assert other.r == pytest.approx(step.r, rel=SCALING_TOLERANCE, abs=1e-300)
        assert other.model_value == pytest.approx(step.model_value, rel=SCALING_TOLERANCE)
        assert other.residual <= RESIDUAL_TOLERANCE


def test_near_zero_d_decision_is_scale_covariant(seed):
    """Both the dropped (CUBIC_SINGULAR_D) and the restored (a posteriori) decisions."""
    rng = np.random.default_rng(seed)
    g, H = rng.normal(size=3) + 1.0, random_symmetric(rng, 3, "pd")
    exact = subspace_step(g, H, [1.0, 0.0, 2.0], 1.0)
    a_priori = (ZERO_D_TOLERANCE * H[1, 1] ** 2 / abs(g[1])) ** (1 / 3)
    a_posteriori = math.sqrt(DROP_TOLERANCE * H[1, 1] / (0.5 * exact.r))
    restored_g = g.copy()
    restored_g[1] = 1e-9
    restored_d = (ZERO_D_TOLERANCE * H[1, 1] ** 2 / 1e-9) ** (1 / 3) / 2
    cases = [
        (g, np.array([1.0, 0.5 * min(a_priori, a_posteriori), 2.0]), SolverStatus.CUBIC_SINGULAR_D),
        (restored_g, np.array([1.0, restored_d, 2.0]), SolverStatus.CUBIC_POSITIVE_DEFINITE),
    ]
    for g, d, status in cases:
        a = 10.0 ** rng.uniform(-2, 2, 3)
        step, other = subspace_step(g, H, d, 1.0), subspace_step(*scaled(g, H, d, a), 1.0)
        assert step.status is other.status is status
        error = relative_error(other.eta.numpy() * a**2, step.eta.numpy())
        assert error <= SCALING_TOLERANCE


# ------------------------------------------------------ order 2 on an H̄ that is not ≻ 0 (§4)
def graded(rng, size, low=-1.0, high=1.0):
    """A random positive diagonal 10^U(low, high) [S]: the scales a_s² of METHOD.md §6."""
    return 10.0 ** rng.uniform(low, high, size)


def random_indefinite(rng, size):
    """C M C with M indefinite (eigenvalues ±0.3..3) and C graded: what ḡ, H̄ look like."""
    c = graded(rng, size)
    return c[:, None] * random_symmetric(rng, size, "indefinite") * c[None, :]


def equilibrated(H):
    """(c, K): c = |H̄_ss|^{1/2}, K = H̄ / (c cᵀ), written out independently of the solver."""
    c = np.sqrt(np.abs(np.diag(H)))
    return c, H / np.outer(c, c)


def absolute_value(K):
    """|K| = V |Λ| Vᵀ from np.linalg.eigh."""
    values, vectors = np.linalg.eigh(K)
    return (vectors * np.abs(values)) @ vectors.T


def saddle_free_reference(g, H):
    """η = C⁻¹|K|⁻¹C⁻¹ḡ, assembled as (C|K|C)η = ḡ and solved by np.linalg.solve."""
    c, K = equilibrated(H)
    return np.linalg.solve(c[:, None] * absolute_value(K) * c[None, :], g)


def equilibrated_tolerance(H, floor):
    """``floor``, or 16·eps·κ when larger: κ = max|λ| / min|λ| over the eigenvalues of K (on the
    subsets with H̄_ss ≠ 0, those above 1e-10 max|λ|), which rounding errors are amplified by
    (principal blocks of a random indefinite H̄ can be far worse conditioned than H̄)."""
    kept = np.diag(H) != 0
    magnitudes = np.abs(np.linalg.eigvalsh(equilibrated(H[np.ix_(kept, kept)])[1]))
    magnitudes = magnitudes[magnitudes > 1e-10 * magnitudes.max()]
    return max(floor, 16 * np.finfo(np.float64).eps * magnitudes.max() / magnitudes.min())


def equilibrated_error(eta, reference, H):
    """‖C(η − η_ref)‖ / ‖Cη_ref‖: the error in the scale-covariant variables z = Cη."""
    c = np.sqrt(np.abs(np.diag(H)))
    return relative_error(c * eta, c * reference)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_solve_mode_is_the_linear_solve_whatever_the_inertia(seed, size):
    """indefinite="solve": η = H̄⁻¹ḡ (np.linalg.solve) on random indefinite, graded H̄."""
    rng = np.random.default_rng(seed)
    for _ in range(5):
        g, H = rng.normal(size=size) * graded(rng, size), random_indefinite(rng, size)
        step = subspace_step(g, H, indefinite="solve")
        assert step.status is SolverStatus.NEWTON_INDEFINITE and step.ok and step.r == 0.0
        expected = np.linalg.solve(H, g)
        assert equilibrated_error(step.eta.numpy(), expected, H) <= 1e-11, seed
        assert step.model_value == pytest.approx(-0.5 * g @ expected, rel=1e-10)
        assert step.residual <= RESIDUAL_TOLERANCE
        assert_stationary(step, g, H, np.zeros(size), 0.0)  # a stationary point (a saddle)
        # the same with d given and λ_int = 0, or λ_int > 0 and d None: the order-2 step
        for d, lambda_int in ((graded(rng, size), 0.0), (None, 1.0)):
            other = subspace_step(g, H, d, lambda_int, indefinite="solve")
            assert torch.equal(other.eta, step.eta) and other.status is step.status


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_saddle_free_mode_is_the_absolute_value_inverse(seed, size):
    """indefinite="saddle_free": η = C⁻¹|K|⁻¹C⁻¹ḡ; on an H̄ with unit |diagonal| (C = I) it is
    the textbook |H̄|⁻¹ḡ, on a diagonal H̄ it is ḡ_s/|H̄_ss|; a descent step: ḡᵀη > 0, m(η) < 0."""
    rng = np.random.default_rng(seed)
    for _ in range(5):
        g, H = rng.normal(size=size) * graded(rng, size), random_indefinite(rng, size)
        step = subspace_step(g, H, indefinite="saddle_free")
        assert step.status is SolverStatus.SADDLE_FREE and step.ok and step.r == 0.0
        eta = step.eta.numpy()
        assert equilibrated_error(eta, saddle_free_reference(g, H), H) <= 1e-11, seed
        assert g @ eta > 0 and step.model_value < 0
        assert step.model_value == pytest.approx(model(eta, g, H, np.zeros(size), 0.0), rel=1e-12)
        assert step.residual <= RESIDUAL_TOLERANCE
        _, unit = equilibrated(H)  # |diagonal| 1: C = I, |H̄| is the plain eigen-modulus
        textbook = np.linalg.solve(absolute_value(unit), g)
        step = subspace_step(g, unit, indefinite="saddle_free")
        assert relative_error(step.eta.numpy(), textbook) <= 1e-11, seed
    diagonal = rng.choice([-1.0, 1.0], size) * graded(rng, size, -3, 3)
    diagonal[0] = -abs(diagonal[0])
    g = rng.normal(size=size)
    step = subspace_step(g, np.diag(diagonal), indefinite="saddle_free")
    assert step.status is SolverStatus.SADDLE_FREE
    assert np.allclose(step.eta.numpy(), g / np.abs(diagonal), rtol=1e-14, atol=0)
    step = subspace_step(g, np.diag(diagonal), indefinite="solve")
    assert np.allclose(step.eta.numpy(), g / diagonal, rtol=1e-14, atol=0)


@pytest.mark.parametrize("mode", INDEFINITE_MODES)
def test_positive_definite_is_newton_in_every_mode(seed, mode):
    """H̄ ≻ 0: every mode takes the very same Newton step (bitwise), status NEWTON."""
    rng = np.random.default_rng(seed)
    for size in (1, 3, 6):
        g, H = rng.normal(size=size), random_symmetric(rng, size, "pd")
        reference = subspace_step(g, H)
        step = subspace_step(g, H, indefinite=mode)
        assert step.status is SolverStatus.NEWTON
        assert torch.equal(step.eta, reference.eta) and step.residual == reference.residual


def test_skip_mode_is_the_default_and_refuses(seed):
    rng = np.random.default_rng(seed)
    g, H = rng.normal(size=3), random_indefinite(rng, 3)
    for step in (subspace_step(g, H), subspace_step(g, H, indefinite="skip")):
        assert step.status is SolverStatus.NOT_POSITIVE_DEFINITE and not step.ok
        assert torch.all(step.eta == 0)
    flat = np.diag([1.0, 0.0, 2.0])
    assert subspace_step(g, flat, indefinite="skip").status is SolverStatus.NOT_POSITIVE_DEFINITE


@pytest.mark.parametrize("mode", INDEFINITE_MODES)
def test_cubic_model_ignores_the_mode(seed, mode):
    """λ_int > 0 with d: the cubic minimiser, identical whatever ``indefinite`` says."""
    rng = np.random.default_rng(seed)
    g, H, d = rng.normal(size=4), random_symmetric(rng, 4, "indefinite"), graded(rng, 4)
    reference = subspace_step(g, H, d, 1.0)
    step = subspace_step(g, H, d, 1.0, indefinite=mode)
    assert step.status is reference.status is SolverStatus.CUBIC_INDEFINITE
    assert torch.equal(step.eta, reference.eta) and step.r == reference.r


def with_flat_subsets(rng, H, g, flat, coupled):
    """H̄ and ḡ with H̄_ss = 0 on ``flat``; the rows of H̄ there are zero unless ``coupled``."""
    H, g = H.copy(), g.copy()
    if not coupled:
        H[flat, :] = 0.0
        H[:, flat] = 0.0
    H[flat, flat] = 0.0
    g[flat] = rng.normal(size=int(flat.sum()))  # a slope there does not make it move
    return H, g


@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("mode", ["solve", "saddle_free"])
def test_flat_subset_takes_no_step(seed, mode, coupled):
    """H̄_ss = 0: η_s = 0 (status FLAT_SUBSET), the others take the step of the reduced model."""
    rng = np.random.default_rng(seed)
    for size in (2, 3, 5):
        flat = np.zeros(size, dtype=bool)  # 1 to S − 1 flat subsets, anywhere
        flat[rng.choice(size, int(rng.integers(1, size)), replace=False)] = True
        H, g = with_flat_subsets(rng, random_indefinite(rng, size), rng.normal(size=size), flat,
                                 coupled)  # fmt: skip
        step = subspace_step(g, H, indefinite=mode)
        assert step.status is SolverStatus.FLAT_SUBSET and step.ok
        eta = step.eta.numpy()
        assert np.all(eta[flat] == 0.0)
        kept = ~flat
        g_r, H_r = g[kept], H[np.ix_(kept, kept)]
        reduced = subspace_step(g_r, H_r, indefinite=mode)
        if reduced.status is SolverStatus.NEWTON or mode == "solve":
            expected = np.linalg.solve(H_r, g_r)
        else:
            expected = saddle_free_reference(g_r, H_r)
        error = equilibrated_error(eta[kept], expected, H_r)
        assert error <= equilibrated_tolerance(H_r, 1e-11), (seed, size)
        assert step.model_value == pytest.approx(model(eta, g, H, np.zeros(size), 0.0), rel=1e-12)
        assert step.residual <= RESIDUAL_TOLERANCE
    # every subset flat: no subset moves, and that is the step (η = 0, usable)
    step = subspace_step([1.0, -2.0], np.zeros((2, 2)), indefinite=mode)
    assert step.status is SolverStatus.FLAT_SUBSET and step.ok and torch.all(step.eta == 0)
    assert step.model_value == 0.0


def singular_case(rng, size, rank):
    """(ḡ, H̄ = C K C, c, K) with K of the given rank, unit |diagonal|, C graded; ḡ generic
    (it has components along null(K))."""
    q, _ = np.linalg.qr(rng.normal(size=(size, size)))
    values = np.zeros(size)
    values[:rank] = rng.choice([-1.0, 1.0], rank) * 10.0 ** rng.uniform(-0.5, 0.5, rank)
    K = (q * values) @ q.T
    unit = np.sqrt(np.abs(np.diag(K)))
    K = K / np.outer(unit, unit)
    c = graded(rng, size)
    return rng.normal(size=size) * c, c[:, None] * K * c[None, :], c, K


@pytest.mark.parametrize("mode", ["solve", "saddle_free"])
def test_singular_case_is_the_minimum_norm_solution_in_equilibrated_variables(seed, mode):
    """K = C⁻¹H̄C⁻¹ of rank < S: η = C⁻¹ K⁺ C⁻¹ḡ (|K|⁺ for saddle_free), np.linalg.pinv;
    status ORDER2_SINGULAR; no step along null(K)."""
    rng = np.random.default_rng(seed)
    for size, rank in ((2, 1), (3, 1), (3, 2), (5, 3), (6, 5)):
        g, H, c, K = singular_case(rng, size, rank)
        step = subspace_step(g, H, indefinite=mode)
        assert step.status is SolverStatus.ORDER2_SINGULAR and step.ok, (size, rank)
        inverse = np.linalg.pinv(K if mode == "solve" else absolute_value(K), rcond=1e-10,
                                 hermitian=True)  # fmt: skip
        expected = (inverse @ (g / c)) / c
        assert equilibrated_error(step.eta.numpy(), expected, H) <= 1e-10, (seed, size, rank)
        values, vectors = np.linalg.eigh(K)
        null_vectors = vectors[:, np.argsort(np.abs(values))[: size - rank]]
        assert np.abs(null_vectors.T @ (c * step.eta.numpy())).max() <= 1e-10
        assert step.residual <= RESIDUAL_TOLERANCE


def test_raw_pseudo_inverse_counterexample():
    """H̄ = [[1, 1], [1, 1]] under A = diag(1, 2) (H̄ → AH̄A, ḡ → Aḡ): the minimum-norm solution
    in raw coordinates moves (it is not A⁻¹ times the original), ours is A⁻¹ times it."""
    g, H, A = np.array([1.0, 3.0]), np.ones((2, 2)), np.diag([1.0, 2.0])
    raw = np.linalg.pinv(H) @ g
    raw_scaled = np.linalg.pinv(A @ H @ A) @ (A @ g)
    assert np.linalg.norm(np.linalg.solve(A, raw_scaled) - raw) > 0.1  # not invariant
    for mode in ("solve", "saddle_free"):
        step = subspace_step(g, H, indefinite=mode)
        other = subspace_step(A @ g, A @ H @ A, indefinite=mode)
        assert step.status is other.status is SolverStatus.ORDER2_SINGULAR
        assert np.allclose(step.eta.numpy(), [1.0, 1.0], rtol=1e-15)  # z = (ḡ₁+ḡ₂)/4 (1, 1)
        assert np.allclose(A @ other.eta.numpy(), step.eta.numpy(), rtol=1e-15, atol=0)


def order2_scaling_cases(rng, mode):
    """(status, ḡ, H̄) with one case per status the order-2 step gives on an H̄ not ≻ 0."""
    size = 5
    g = rng.normal(size=size)
    indefinite = random_indefinite(rng, size)
    yield (SolverStatus.SADDLE_FREE if mode == "saddle_free" else SolverStatus.NEWTON_INDEFINITE,
           g, indefinite)  # fmt: skip
    singular_g, singular_H, _, _ = singular_case(rng, size, 3)
    yield SolverStatus.ORDER2_SINGULAR, singular_g, singular_H
    yield SolverStatus.ORDER2_SINGULAR, np.array([1.0, 3.0]), np.ones((2, 2))  # counterexample
    flat = np.array([False, True, False, False, True])
    for coupled in (False, True):
        yield (SolverStatus.FLAT_SUBSET,
               *reversed(with_flat_subsets(rng, indefinite, g, flat, coupled)))  # fmt: skip


@pytest.mark.parametrize("mode", ["solve", "saddle_free"])
def test_order2_scaling_law(seed, mode):
    """METHOD.md §6 for the new steps: with A = Diag(a²) (a_s = ±10^U(-2, 2)), the step on
    (AH̄A, Aḡ) is A⁻¹ times the step on (H̄, ḡ), status, model value and residual unchanged."""
    rng = np.random.default_rng(seed)
    for status, g, H in order2_scaling_cases(rng, mode):
        size = g.shape[0]
        a = 10.0 ** rng.uniform(-2, 2, size) * rng.choice([-1.0, 1.0], size)
        step = subspace_step(g, H, indefinite=mode)
        other = subspace_step(*scaled(g, H, None, a)[:2], indefinite=mode)
        assert step.status is other.status is status, (status, step, other)
        error = relative_error(other.eta.numpy() * a**2, step.eta.numpy())
        tolerance = equilibrated_tolerance(H, SCALING_TOLERANCE)
        assert error <= tolerance, (status, error, tolerance)
        assert other.model_value == pytest.approx(step.model_value, rel=tolerance)
        assert other.residual <= RESIDUAL_TOLERANCE
    a = np.array([1.0, 2.0])  # the counterexample with the a = (1, 2) (A = diag(1, 4))
    g, H = np.array([1.0, 3.0]), np.ones((2, 2))
    step, other = (
        subspace_step(g, H, indefinite=mode),
        subspace_step(*scaled(g, H, None, a)[:2], indefinite=mode),
    )
    assert relative_error(other.eta.numpy() * a**2, step.eta.numpy()) <= SCALING_TOLERANCE
