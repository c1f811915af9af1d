"""Proof that optimizers.projected_derivatives is exact (float64, fresh random inputs).

Every test draws a fresh seed (replay a failure with HOBENCH_SEED=<seed>, printed in the message).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from reference import (
    CASES,
    CASES_BY_NAME,
    DT,
    directional_derivative,
    fresh_seed,
    partitions_for,
    reference_derivatives,
    relative_error,
    setup,
)
from torch import nn

import optimizers.derivatives as engine_module
from optimizers import partition, projected_derivatives
from optimizers.derivatives import functional_loss, num_passes

TOL = 1e-10


def _engine(loss_fn, params, groups, direction, order, **kw):
    return projected_derivatives(loss_fn, params, groups, direction, order=order, **kw)


# --------------------------------------------------------------- against the slow reference
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_reference_for_every_partition(case):
    seed = fresh_seed()
    model, loss_fn, params, direction, gen = setup(case, seed)
    for kind, groups in partitions_for(model, gen).items():
        got = _engine(loss_fn, params, groups, direction, 3)
        expected = reference_derivatives(loss_fn, params, groups, direction, 3)
        for d, (a, b) in enumerate(zip(got, expected, strict=True), start=1):
            assert a.shape == (len(groups),) * d
            err = relative_error(a, b)
            assert err <= TOL, f"{case.name}/{kind} order {d}: rel err {err:.2e} (seed {seed})"


def test_matches_reference_with_many_subsets():
    """S ≥ 10 (per-tensor partition of a 6-layer tanh MLP: S = 12)."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    widths = [4, 5, 5, 4, 5, 4, 3]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).to(DT)
    x = torch.randn(3, 4, dtype=DT, generator=gen)
    y = torch.randint(0, 3, (3,), generator=gen)
    loss_fn = functional_loss(model, F.cross_entropy, x, y)
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = {n: torch.randn(p.shape, dtype=DT, generator=gen) for n, p in params.items()}
    groups = partition.per_tensor(model)
    assert len(groups) == 12
    got = _engine(loss_fn, params, groups, direction, 3)
    expected = reference_derivatives(loss_fn, params, groups, direction, 3)
    for d in range(3):
        assert relative_error(got[d], expected[d]) <= TOL, f"order {d + 1} (seed {seed})"
    diag = _engine(loss_fn, params, groups, direction, 3, diagonal=True)
    expected_diagonal = torch.stack([got[2][s, s, s] for s in range(12)])
    torch.testing.assert_close(diag[2], expected_diagonal, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["tanh_mlp", "layernorm"])
def test_order_four_matches_reference(name):
    seed = fresh_seed()
    model, loss_fn, params, direction, _ = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_module(model)
    got = _engine(loss_fn, params, groups, direction, 4)
    expected = reference_derivatives(loss_fn, params, groups, direction, 4)
    for d in range(4):
        err = relative_error(got[d], expected[d])
        assert err <= TOL, f"{name} order {d + 1}: {err:.2e} (seed {seed})"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_diagonal_mode_is_the_diagonal_of_the_full_tensors(case):
    seed = fresh_seed()
    model, loss_fn, params, direction, _ = setup(case, seed)
    groups = partition.per_tensor(model)
    full = _engine(loss_fn, params, groups, direction, 4 if case.name == "tanh_mlp" else 3)
    diag = _engine(loss_fn, params, groups, direction, len(full), diagonal=True)
    torch.testing.assert_close(diag[0], full[0], rtol=0, atol=0)
    torch.testing.assert_close(diag[1], full[1], rtol=0, atol=0)
    size = len(groups)
    for d in range(2, len(full)):
        expected = torch.stack([full[d][(s,) * (d + 1)] for s in range(size)])
        assert diag[d].shape == (size,)
        torch.testing.assert_close(
            diag[d], expected, rtol=1e-12, atol=1e-14, msg=f"order {d + 1} (seed {seed})"
        )


@pytest.mark.parametrize("name", ["tanh_mlp", "conv_maxpool", "batchnorm_train"])
def test_float32_close_to_float64(name):
    seed = fresh_seed()
    model, loss_fn, params, direction, _ = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_tensor(model)
    exact = _engine(loss_fn, params, groups, direction, 3)
    model32 = model.float()
    loss32 = functional_loss(
        model32,
        CASES_BY_NAME[name].criterion,
        *[t.float() if t.is_floating_point() else t for t in _inputs_targets(name, seed)],
    )
    p32 = {n: p.float() for n, p in params.items()}
    u32 = {n: u.float() for n, u in direction.items()}
    single = _engine(loss32, p32, groups, u32, 3)
    for d, (a, b) in enumerate(zip(single, exact, strict=True), start=1):
        assert a.dtype == torch.float32
        err = relative_error(a.double(), b)
        assert err <= 1e-4, f"{name} order {d}: float32 rel err {err:.2e} (seed {seed})"


def _inputs_targets(name, seed):
    gen = torch.Generator().manual_seed(seed)
    _, inputs, targets = CASES_BY_NAME[name].build(gen)
    return (*inputs, targets)


# ------------------------------------------------- finite differences: no autodiff trusted
def _shift(params, groups, direction, eta):
    moved = dict(params)
    for s, group in enumerate(groups):
        for name in group:
            moved[name] = params[name] + eta[s] * direction[name]
    return moved


@pytest.mark.parametrize("name", [c.name for c in CASES if c.smooth])
def test_each_order_matches_finite_differences_of_the_order_below(name):
    """D^d · v = d/dt D^{d−1}(θ + t Σ v_s u_s) at t = 0, by a 4-point central difference of the
    engine's own lower order (and of the loss itself for d = 1)."""
    seed = fresh_seed()
    model, loss_fn, params, direction, gen = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_module(model)
    size = len(groups)
    v = torch.randn(size, dtype=DT, generator=gen)
    h = 1e-3
    derivs = _engine(loss_fn, params, groups, direction, 4)

    def lower(t: float, d: int):
        moved = _shift(params, groups, direction, t * v)
        if d == 0:
            return loss_fn(moved).detach()
        return _engine(loss_fn, moved, groups, direction, d)[d - 1]

    for d in range(1, 5):
        fd = (
            -lower(2 * h, d - 1) + 8 * lower(h, d - 1) - 8 * lower(-h, d - 1) + lower(-2 * h, d - 1)
        ) / (12 * h)
        contracted = torch.tensordot(derivs[d - 1], v, dims=([d - 1], [0]))
        err = relative_error(contracted, fd)
        assert err <= 1e-6, f"{name} order {d}: FD rel err {err:.2e} (seed {seed})"


# ------------------------------------------------------------------- structural identities
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_symmetry_sum_and_single_subset(case):
    seed = fresh_seed()
    model, loss_fn, params, direction, _ = setup(case, seed)
    groups = partition.per_tensor(model)
    derivs = _engine(loss_fn, params, groups, direction, 3)
    single = _engine(loss_fn, params, partition.single(model), direction, 3)
    for d, tensor in enumerate(derivs, start=1):
        for perm in itertools.permutations(range(d)):
            assert torch.equal(tensor, tensor.permute(perm)), f"order {d} not symmetric"
        directional = directional_derivative(loss_fn, params, direction, d)
        assert abs(tensor.sum() - directional) <= 1e-10 * max(1.0, abs(directional)), (
            f"{case.name} order {d}: sum {tensor.sum().item()} vs L^({d})[u..u] "
            f"{directional.item()} (seed {seed})"
        )
        assert single[d - 1].shape == (1,) * d
        assert abs(single[d - 1].flatten()[0] - directional) <= 1e-10 * max(1.0, abs(directional))


def test_scaling_one_subset_direction_scales_entries_by_c_to_the_k():
    seed = fresh_seed()
    model, loss_fn, params, direction, gen = setup(CASES_BY_NAME["tanh_mlp"], seed)
    groups = partition.per_module(model)
    size = len(groups)
    base = _engine(loss_fn, params, groups, direction, 3)
    s = int(torch.randint(0, size, (1,), generator=gen))
    c = float(torch.empty(()).uniform_(0.3, 3.0, generator=gen))
    scaled_u = {n: (u * c if n in groups[s] else u) for n, u in direction.items()}
    scaled = _engine(loss_fn, params, groups, scaled_u, 3)
    for d in range(3):
        for index in itertools.product(range(size), repeat=d + 1):
            k = sum(i == s for i in index)
            expected = base[d][index] * c**k
            assert abs(scaled[d][index] - expected) <= 1e-10 * max(1.0, abs(expected)), (
                f"order {d + 1} entry {index}: k={k}, c={c} (seed {seed})"
            )


def test_quadratic_closed_form():
    """L = ½ θᵀAθ + bᵀθ: ḡ_s = (Aθ + b)·u_s, H̄_st = u_sᵀ A u_t, D^3 = 0."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    n = 7
    a = torch.randn(n, n, dtype=DT, generator=gen)
    a = a @ a.T
    b = torch.randn(n, dtype=DT, generator=gen)
    theta = {
        "x": torch.randn(4, dtype=DT, generator=gen),
        "y": torch.randn(3, dtype=DT, generator=gen),
    }
    u = {"x": torch.randn(4, dtype=DT, generator=gen), "y": torch.randn(3, dtype=DT, generator=gen)}
    flat = lambda p: torch.cat([p["x"], p["y"]])
    loss = lambda p: 0.5 * flat(p) @ a @ flat(p) + b @ flat(p)
    g, h, d3 = _engine(loss, theta, [["x"], ["y"]], u, 3)
    ux = torch.cat([u["x"], torch.zeros(3, dtype=DT)])
    uy = torch.cat([torch.zeros(4, dtype=DT), u["y"]])
    grad = a @ flat(theta) + b
    torch.testing.assert_close(g, torch.stack([grad @ ux, grad @ uy]), rtol=1e-13, atol=1e-13)
    expected_h = torch.stack([torch.stack([p @ a @ q for q in (ux, uy)]) for p in (ux, uy)])
    torch.testing.assert_close(h, expected_h, rtol=1e-13, atol=1e-13)
    assert torch.count_nonzero(d3) == 0


# --------------------------------------------- the checks catch a broken engine (mutations)
def _agrees_with_reference(monkeypatch_target=None) -> bool:
    model, loss_fn, params, direction, _ = setup(CASES_BY_NAME["tanh_mlp"], fresh_seed())
    groups = partition.per_tensor(model)
    got = _engine(loss_fn, params, groups, direction, 3)
    expected = reference_derivatives(loss_fn, params, groups, direction, 3)
    return all(relative_error(a, b) <= TOL for a, b in zip(got, expected, strict=True))


def test_reference_comparison_detects_a_broken_symmetrisation(monkeypatch):
    def unsymmetric(rows, num_subsets, k):  # fills sorted indices only, forgets the mirror
        out = torch.zeros((num_subsets,) * k, dtype=DT)
        for index in itertools.product(range(num_subsets), repeat=k):
            if list(index) == sorted(index):
                out[index] = rows[index[:-1]][index[-1]]
        return out

    assert _agrees_with_reference()
    monkeypatch.setattr(engine_module, "_assemble", unsymmetric)
    assert not _agrees_with_reference()


def test_reference_comparison_detects_a_sign_error(monkeypatch):
    original = engine_module._grad
    monkeypatch.setattr(
        engine_module, "_grad", lambda o, e, create_graph: -original(o, e, create_graph)
    )
    assert not _agrees_with_reference()


def test_reference_comparison_detects_a_wrong_subset_mask(monkeypatch):
    original = engine_module.projected_derivatives

    def shifted_mask(loss_fn, params, groups, direction, order=3, **kw):
        rolled = [groups[-1]] + list(groups[:-1])  # every subset moves the wrong tensors
        merged = [list(g) for g in rolled]
        return original(loss_fn, params, merged, direction, order, **kw)

    model, loss_fn, params, direction, _ = setup(CASES_BY_NAME["tanh_mlp"], fresh_seed())
    groups = partition.per_tensor(model)
    got = shifted_mask(loss_fn, params, groups, direction, 2)
    expected = reference_derivatives(loss_fn, params, groups, direction, 2)
    assert relative_error(got[1], expected[1]) > 1e-3


# ---------------------------------------------------------------------- contract and inputs
def _tiny():
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).to(DT)
    x, y = torch.randn(4, 3, dtype=DT), torch.randint(0, 2, (4,))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    return model, functional_loss(model, F.cross_entropy, x, y), params, direction


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda p, g, u: (p, [["nope"]], u), ValueError, "missing from params"),
        (
            lambda p, g, u: (p, g, {k: v for k, v in u.items() if k != "0.bias"}),
            ValueError,
            "no tensor",
        ),
        (
            lambda p, g, u: (p, g, {**u, "ghost": torch.zeros(1, dtype=DT)}),
            ValueError,
            "not in params",
        ),
        (lambda p, g, u: (p, [["0.weight"], ["0.weight", "0.bias"]], u), ValueError, "two subsets"),
        (lambda p, g, u: (p, [["0.weight"], []], u), ValueError, "empty"),
        (lambda p, g, u: (p, [], u), ValueError, "empty"),
        (lambda p, g, u: (p, g, {**u, "0.bias": torch.zeros(5, dtype=DT)}), ValueError, "shape"),
        (lambda p, g, u: (p, g, {**u, "0.bias": u["0.bias"].float()}), ValueError, "dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, error, match):
    model, loss_fn, params, direction = _tiny()
    p, g, u = mutate(params, partition.per_tensor(model), direction)
    with pytest.raises(error, match=match):
        projected_derivatives(loss_fn, p, g, u, order=2)


@pytest.mark.parametrize("order", [0, -1, 1.5, True, "2"])
def test_bad_order_is_rejected(order):
    model, loss_fn, params, direction = _tiny()
    with pytest.raises(ValueError, match="order"):
        projected_derivatives(loss_fn, params, partition.per_tensor(model), direction, order=order)


def test_non_scalar_loss_is_rejected():
    model, _, params, direction = _tiny()
    x = torch.randn(4, 3, dtype=DT)
    loss_fn = lambda p: torch.func.functional_call(model, p, (x,))
    with pytest.raises(ValueError, match="scalar"):
        projected_derivatives(loss_fn, params, partition.per_tensor(model), direction, order=2)


def test_inputs_untouched_dtype_kept_loss_called_once_and_no_grad_leak():
    model, loss_fn, params, direction = _tiny()
    for p in model.parameters():
        p.requires_grad_(True)
    live = dict(model.named_parameters())  # tensors that require grad
    before = {n: p.detach().clone() for n, p in live.items()}
    u_before = {n: u.clone() for n, u in direction.items()}
    calls = []
    counted = lambda p: calls.append(1) or loss_fn(p)
    out = projected_derivatives(counted, live, partition.per_tensor(model), direction, order=3)
    assert len(calls) == 1
    assert all(t.dtype == DT and t.device.type == "cpu" and not t.requires_grad for t in out)
    for n, p in live.items():
        assert torch.equal(p.detach(), before[n]) and p.grad is None
        assert torch.equal(direction[n], u_before[n])


def test_batchnorm_buffers_left_exactly_as_found():
    torch.manual_seed(fresh_seed())
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    model.train()
    x, y = torch.randn(5, 3, dtype=DT), torch.randint(0, 2, (5,))
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    groups = partition.per_tensor(model)
    before = {n: b.clone() for n, b in model.named_buffers()}
    in_place = lambda p: F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)
    projected_derivatives(in_place, params, groups, direction, order=3, module=model)
    projected_derivatives(
        functional_loss(model, F.cross_entropy, x, y), params, groups, direction, order=3
    )
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), f"buffer {n} changed"
    # without module=, the in-place loss would have moved them: the test can fail
    projected_derivatives(in_place, params, groups, direction, order=2)
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])


def test_constant_higher_orders_are_zero_and_params_outside_groups_stay_fixed():
    """A linear loss has H̄ = 0 and D^3 = 0; a tensor in no subset is held fixed."""
    theta = {"a": torch.tensor([1.0, 2.0], dtype=DT), "b": torch.tensor([3.0], dtype=DT)}
    u = {"a": torch.tensor([1.0, -1.0], dtype=DT)}
    loss = lambda p: (p["a"] * p["b"]).sum()
    g, h, d3 = projected_derivatives(loss, theta, [["a"]], u, order=3)
    torch.testing.assert_close(g, torch.tensor([0.0], dtype=DT))
    assert torch.count_nonzero(h) == 0 and torch.count_nonzero(d3) == 0


@pytest.mark.parametrize(
    "size, order, diagonal, expected",
    [
        (8, 2, False, 9),
        (8, 3, True, 17),
        (8, 3, False, 1 + 8 + 36),
        (10, 4, False, 1 + 10 + 55 + 220),
    ],
)
def test_number_of_passes(size, order, diagonal, expected):
    assert num_passes(size, order, diagonal) == expected
    assert num_passes(size, order, diagonal) == 1 + sum(
        size if (diagonal and k >= 3) else math.comb(size + k - 2, k - 1)
        for k in range(2, order + 1)
    )
