"""Proof that optimizers.projected_derivatives is exact (float64, fresh random inputs).

Three independent routes back the engine (nested reverse passes through torch's own modules):
1. tests/reference.py: the same loss rewritten in elementary operators, φ(η) built explicitly and
   differentiated by torch.autograd.functional; each of its orders is itself confirmed by
   central finite differences of the order below (so no higher-order formula is trusted);
2. central finite differences of the engine's own order d − 1 at shifted parameters;
3. L^{(d)}(θ)[u, …, u] by nested forward mode (torch.func.jvp) for the sum identity and S = 1.
Every test takes the ``seed`` fixture (fresh from os.urandom, replay with HOBENCH_SEED=<seed>).
"""

from __future__ import annotations

import contextlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from reference import (
    CASES,
    CASES_BY_NAME,
    DT,
    contraction_error,
    directional_derivative,
    finite_difference_check,
    partitions_for,
    phi,
    reference_derivatives,
    reference_loss,
    relative_error,
    setup,
)
from torch import nn

import optimizers.derivatives as engine_module
from optimizers import partition, projected_derivatives
from optimizers.derivatives import functional_loss, num_passes

pytestmark = pytest.mark.usefixtures("single_thread")
TOL = 1e-10  # normwise relative error against the float64 reference
FD_TOL = 1e-6  # Richardson-extrapolated 4-point central differences, h = 1e-4
SMOOTH = [c.name for c in CASES if c.smooth]


def _engine(loss_fn, params, groups, direction, order, **kw):
    return projected_derivatives(loss_fn, params, groups, direction, order=order, **kw)


def _compare(got, expected, label, tol=TOL):
    assert len(got) == len(expected)
    for d, (a, b) in enumerate(zip(got, expected, strict=True), start=1):
        assert a.shape == b.shape, f"{label} order {d}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        err = relative_error(a, b)
        assert err <= tol, f"{label} order {d}: normwise relative error {err:.2e} > {tol:.0e}"


def _shift(params, groups, direction, eta):
    """θ + Σ_s η_s u_s."""
    moved = dict(params)
    for s, group in enumerate(groups):
        for name in group:
            moved[name] = params[name] + eta[s] * direction[name]
    return moved


# ------------------------------------------------ the reference is itself checked (no autodiff)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reference_loss_is_the_module_loss(case, seed):
    s = setup(case, seed)
    direct = case.criterion(s.model(*s.inputs), s.targets)
    for loss in (s.loss_fn(s.params), s.reference_loss_fn(s.params)):
        assert abs(loss - direct) <= 1e-12 * abs(direct), f"{loss.item()} vs {direct.item()}"


@pytest.mark.parametrize("name", SMOOTH)
def test_reference_orders_match_finite_differences_of_the_order_below(name, seed):
    """Reference D^d·v = d/dt D^{d−1}(η = t v): φ is evaluated at η = ±h v, ±2h v."""
    s = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_module(s.model)
    v = torch.randn(len(groups), dtype=DT, generator=s.gen)
    zero = torch.zeros(len(groups), dtype=DT)
    top = 3 if name.startswith("conv") else 4
    f = phi(s.reference_loss_fn, s.params, groups, s.direction)
    exact = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, top)
    for d in range(1, top + 1):
        below = (
            (lambda e: f(e).detach())
            if d == 1
            else (
                lambda e, d=d: reference_derivatives(
                    s.reference_loss_fn, s.params, groups, s.direction, d - 1, at=e
                )[-1]
            )
        )
        fd = finite_difference_check(below, zero, v, 1e-4)
        err = contraction_error(exact[d - 1], v, fd)
        assert err <= FD_TOL, f"{name}: reference order {d} vs FD, rel err {err:.2e}"


# ------------------------------------------------------------- engine against the reference
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_reference_for_every_partition(case, seed):
    """Orders 1–3 for per_tensor, per_module, single, weights_biases, blocks(2), a random map."""
    s = setup(case, seed)
    for kind, groups in partitions_for(s.model, s.gen).items():
        got = _engine(s.loss_fn, s.params, groups, s.direction, 3)
        expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 3)
        _compare(got, expected, f"{case.name}/{kind} (S={len(groups)})")


def _deep_mlp(seed, depth, batch=3, norm=False):
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 5)]
    for _ in range(depth - 2):
        layers += [nn.LayerNorm(5) if norm else nn.Tanh(), nn.Tanh(), nn.Linear(5, 5)]
    layers += [nn.Tanh(), nn.Linear(5, 3)]
    model = nn.Sequential(*layers).to(DT)
    x = torch.randn(batch, 4, dtype=DT, generator=gen)
    y = torch.randint(0, 3, (batch,), generator=gen)
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = {n: torch.randn(p.shape, dtype=DT, generator=gen) for n, p in params.items()}
    engine_loss = functional_loss(model, F.cross_entropy, x, y)
    return model, engine_loss, reference_loss(model, F.cross_entropy, (x,), y), params, direction


def test_matches_reference_with_many_subsets(seed):
    """S = 12 (per-tensor partition of a 6-layer tanh MLP), full and diagonal."""
    model, loss_fn, ref_loss, params, direction = _deep_mlp(seed, 6)
    groups = partition.per_tensor(model)
    assert len(groups) == 12
    got = _engine(loss_fn, params, groups, direction, 3)
    _compare(got, reference_derivatives(ref_loss, params, groups, direction, 3), "S=12")
    diagonal = _engine(loss_fn, params, groups, direction, 3, diagonal=True)
    expected_diagonal = torch.stack([got[2][s, s, s] for s in range(12)])
    assert relative_error(diagonal[2], expected_diagonal) <= 1e-13


def test_matches_reference_with_twenty_subsets_and_layernorm(seed):
    model, loss_fn, ref_loss, params, direction = _deep_mlp(seed, 6, batch=5, norm=True)
    groups = partition.per_tensor(model)
    assert len(groups) == 20
    got = _engine(loss_fn, params, groups, direction, 3)
    _compare(got, reference_derivatives(ref_loss, params, groups, direction, 3), "S=20")


@pytest.mark.parametrize(
    "name", ["tanh_mlp", "layernorm", "batchnorm1d_train", "residual_softplus_mse", "elu_mlp_mse"]
)
def test_order_four_matches_reference(name, seed):
    s = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_module(s.model)
    got = _engine(s.loss_fn, s.params, groups, s.direction, 4)
    expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 4)
    _compare(got, expected, f"{name} (S={len(groups)})")


@pytest.mark.parametrize(
    "name",
    ["conv_maxpool", pytest.param("conv_batchnorm2d_gelu_avgpool", marks=pytest.mark.slow)],
)
def test_order_four_matches_reference_on_conv_nets(name, seed):
    s = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_tensor(s.model)
    got = _engine(s.loss_fn, s.params, groups, s.direction, 4)
    expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 4)
    _compare(got, expected, f"{name} (S={len(groups)})")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_order_four_over_many_seeds_and_partitions(case, seed):
    """Sweep: 4 seeds derived from ``seed`` × every partition kind, orders 1–4."""
    for offset in range(4):
        s = setup(case, seed + offset)
        for kind, groups in partitions_for(s.model, s.gen).items():
            got = _engine(s.loss_fn, s.params, groups, s.direction, 4)
            expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 4)
            _compare(got, expected, f"{case.name}/{kind} seed+{offset} (S={len(groups)})")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_diagonal_mode_is_the_diagonal_of_the_full_tensors(case, seed):
    s = setup(case, seed)
    groups = partition.per_tensor(s.model)
    order = 4 if case.name in ("tanh_mlp", "layernorm") else 3
    full = _engine(s.loss_fn, s.params, groups, s.direction, order)
    diagonal = _engine(s.loss_fn, s.params, groups, s.direction, order, diagonal=True)
    assert torch.equal(diagonal[0], full[0]) and torch.equal(diagonal[1], full[1])
    for d in range(2, order):
        expected = torch.stack([full[d][(k,) * (d + 1)] for k in range(len(groups))])
        assert diagonal[d].shape == (len(groups),)
        assert relative_error(diagonal[d], expected) <= 1e-13, f"order {d + 1}"


@pytest.mark.parametrize("name", ["tanh_mlp", "conv_maxpool", "batchnorm1d_train", "layernorm"])
def test_float32_close_to_float64(name, seed):
    s = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_tensor(s.model)
    exact = _engine(s.loss_fn, s.params, groups, s.direction, 3)
    x32 = s.inputs[0].float()
    y32 = s.targets.float() if s.targets.is_floating_point() else s.targets
    loss32 = functional_loss(s.model.float(), CASES_BY_NAME[name].criterion, x32, y32)
    p32 = {n: p.float() for n, p in s.params.items()}
    u32 = {n: u.float() for n, u in s.direction.items()}
    single = _engine(loss32, p32, groups, u32, 3)
    for d, (a, b) in enumerate(zip(single, exact, strict=True), start=1):
        assert a.dtype == torch.float32
        err = relative_error(a.double(), b)
        assert err <= 1e-4, f"{name} order {d}: float32 vs float64 rel err {err:.2e}"


# ------------------------------------------------- finite differences of the engine itself
@pytest.mark.parametrize("name", SMOOTH)
def test_each_order_matches_finite_differences_of_the_order_below(name, seed):
    """D^d·v (last index contracted) = d/dt D^{d−1}(θ + t Σ v_s u_s) at t = 0, the engine re-run
    at shifted parameters; d = 1 differentiates the loss itself. Orders 1–4."""
    s = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_module(s.model)
    v = torch.randn(len(groups), dtype=DT, generator=s.gen)
    top = 3 if name.startswith("conv") else 4
    derivatives = _engine(s.loss_fn, s.params, groups, s.direction, top)

    def lower(eta, d):
        moved = _shift(s.params, groups, s.direction, eta)
        if d == 0:
            return s.loss_fn(moved).detach()
        return _engine(s.loss_fn, moved, groups, s.direction, d)[d - 1]

    zero = torch.zeros(len(groups), dtype=DT)
    for d in range(1, top + 1):
        fd = finite_difference_check(lambda e, d=d: lower(e, d - 1), zero, v, 1e-4)
        err = contraction_error(derivatives[d - 1], v, fd)
        assert err <= FD_TOL, f"{name} order {d}: engine vs FD of order {d - 1}, rel err {err:.2e}"


# ------------------------------------------------------------------- structural identities
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_symmetry_sum_and_single_subset(case, seed):
    """D^d symmetric; Σ entries = L^{(d)}[u,…,u] (nested jvp) = the S = 1 result."""
    s = setup(case, seed)
    groups = partition.per_tensor(s.model)
    derivatives = _engine(s.loss_fn, s.params, groups, s.direction, 3)
    single = _engine(s.loss_fn, s.params, partition.single(s.model), s.direction, 3)
    for d, tensor in enumerate(derivatives, start=1):
        for perm in itertools.permutations(range(d)):
            assert torch.equal(tensor, tensor.permute(perm)), f"order {d} not exactly symmetric"
        directional = directional_derivative(s.reference_loss_fn, s.params, s.direction, d)
        scale = max(1.0, abs(directional.item()))
        assert abs(tensor.sum() - directional) <= 1e-10 * scale, (
            f"order {d}: sum {tensor.sum().item()} vs L^({d})[u..u] = {directional.item()}"
        )
        assert single[d - 1].shape == (1,) * d
        assert abs(single[d - 1].reshape(()) - directional) <= 1e-10 * scale, f"S = 1, order {d}"


def test_reference_tensors_are_symmetric(seed):
    """The raw property on the reference (which does not symmetrise): equal up to rounding."""
    s = setup(CASES_BY_NAME["layernorm"], seed)
    groups = partition.per_tensor(s.model)
    for d, tensor in enumerate(
        reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 4), start=1
    ):
        for perm in itertools.permutations(range(d)):
            assert relative_error(tensor.permute(perm), tensor) <= 1e-12, f"order {d}, {perm}"


def test_scaling_one_subset_direction_scales_entries_by_c_to_the_k(seed):
    s = setup(CASES_BY_NAME["batchnorm1d_train"], seed)
    groups = partition.per_module(s.model)
    size = len(groups)
    base = _engine(s.loss_fn, s.params, groups, s.direction, 3)
    target = int(torch.randint(0, size, (1,), generator=s.gen))
    c = float(torch.empty(()).uniform_(0.3, 3.0, generator=s.gen)) * (-1) ** target
    scaled_u = {n: (u * c if n in groups[target] else u) for n, u in s.direction.items()}
    scaled = _engine(s.loss_fn, s.params, groups, scaled_u, 3)
    for d in range(3):
        for index in itertools.product(range(size), repeat=d + 1):
            k = sum(i == target for i in index)
            expected = base[d][index] * c**k
            assert abs(scaled[d][index] - expected) <= 1e-10 * max(1.0, abs(expected)), (
                f"order {d + 1} entry {index}: k={k}, c={c}"
            )


def test_quadratic_closed_form(seed):
    """L = ½ θᵀAθ + bᵀθ: ḡ_s = (Aθ + b)·u_s, H̄_st = u_sᵀ A u_t, D^3 = D^4 = 0."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(7, 7, dtype=DT, generator=gen)
    a = a @ a.T
    b = torch.randn(7, dtype=DT, generator=gen)
    theta = {
        "x": torch.randn(4, dtype=DT, generator=gen),
        "y": torch.randn(3, dtype=DT, generator=gen),
    }
    u = {"x": torch.randn(4, dtype=DT, generator=gen), "y": torch.randn(3, dtype=DT, generator=gen)}
    flat = lambda p: torch.cat([p["x"], p["y"]])
    loss = lambda p: 0.5 * flat(p) @ a @ flat(p) + b @ flat(p)
    g, h, d3, d4 = _engine(loss, theta, [["x"], ["y"]], u, 4)
    ux = torch.cat([u["x"], torch.zeros(3, dtype=DT)])
    uy = torch.cat([torch.zeros(4, dtype=DT), u["y"]])
    grad = a @ flat(theta) + b
    torch.testing.assert_close(g, torch.stack([grad @ ux, grad @ uy]), rtol=1e-13, atol=1e-13)
    expected_h = torch.stack([torch.stack([p @ a @ q for q in (ux, uy)]) for p in (ux, uy)])
    torch.testing.assert_close(h, expected_h, rtol=1e-13, atol=1e-13)
    assert d3.shape == (2, 2, 2) and d4.shape == (2, 2, 2, 2)
    assert torch.count_nonzero(d3) == 0 and torch.count_nonzero(d4) == 0


def test_linear_loss_and_tensors_outside_the_groups_held_fixed():
    theta = {"a": torch.tensor([1.0, 2.0], dtype=DT), "b": torch.tensor([3.0], dtype=DT)}
    u = {"a": torch.tensor([1.0, -1.0], dtype=DT)}
    loss = lambda p: (p["a"] * p["b"]).sum() + p["b"].sum() ** 2
    g, h, d3 = projected_derivatives(loss, theta, [["a"]], u, order=3)
    assert g.tolist() == [0.0] and torch.count_nonzero(h) == 0 and torch.count_nonzero(d3) == 0
    u = {"a": torch.tensor([1.0, 1.0], dtype=DT)}
    g, h = projected_derivatives(loss, theta, [["a"]], u, order=2)
    assert g.tolist() == [6.0] and h.tolist() == [[0.0]]  # b (not grouped) did not move


# --------------------------------------------- the checks catch a broken engine (mutations)
def _engine_agrees_with_reference(seed, name="tanh_mlp", order=3) -> bool:
    s = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_tensor(s.model)
    got = _engine(s.loss_fn, s.params, groups, s.direction, order)
    expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, order)
    return all(relative_error(a, b) <= TOL for a, b in zip(got, expected, strict=True))


def test_checker_detects_a_missing_symmetrisation(monkeypatch, seed):
    """_assemble filling only the entries with sorted indices (the ones it computed)."""
    original = engine_module._assemble

    def sorted_entries_only(*args, **kwargs):
        full = original(*args, **kwargs)
        keep = torch.zeros_like(full, dtype=torch.bool)
        for index in itertools.combinations_with_replacement(range(full.shape[0]), full.dim()):
            keep[index] = True
        return torch.where(keep, full, torch.zeros_like(full))

    assert _engine_agrees_with_reference(seed)
    monkeypatch.setattr(engine_module, "_assemble", sorted_entries_only)
    assert not _engine_agrees_with_reference(seed)


def test_checker_detects_a_sign_error_in_the_third_order(monkeypatch, seed):
    """D^3 returned with the opposite sign (the local model uses −(1/6)D^3: an easy slip)."""
    original = engine_module._derivative_tensors

    def flipped(*args, **kwargs):
        results = list(original(*args, **kwargs))
        results[2] = -results[2]
        return results

    monkeypatch.setattr(engine_module, "_derivative_tensors", flipped)
    assert not _engine_agrees_with_reference(seed)


def test_checker_detects_a_wrong_subset_mask(monkeypatch, seed):
    """The engine moving one tensor with the wrong subset (its last name moved to subset 0)."""
    original = engine_module.validate_groups

    def wrong_mask(groups, names=None):
        groups = [list(g) for g in original(groups, names)]
        groups[0].append(groups[-1].pop()) if len(groups[-1]) > 1 else groups[0].extend(
            groups.pop()
        )
        return groups

    monkeypatch.setattr(engine_module, "validate_groups", wrong_mask)
    s = setup(CASES_BY_NAME["tanh_mlp"], seed)
    groups = partition.per_module(s.model)
    got = _engine(s.loss_fn, s.params, groups, s.direction, 2)
    expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 2)
    assert got[1].shape != expected[1].shape or relative_error(got[1], expected[1]) > 1e-3


def test_checker_detects_the_native_norm_third_derivatives(monkeypatch, seed):
    """Without the exact-operator mode, torch's layer_norm/batch_norm give wrong D^3."""
    assert _engine_agrees_with_reference(seed, "layernorm")
    monkeypatch.setattr(engine_module, "exact_higher_order", contextlib.nullcontext)
    assert not _engine_agrees_with_reference(seed, "layernorm")
    assert not _engine_agrees_with_reference(seed, "batchnorm1d_train")


# ---------------------------------------------------------------------- contract and inputs
def _tiny(seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).to(DT)
    x = torch.randn(4, 3, dtype=DT, generator=gen)
    y = torch.randint(0, 2, (4,), generator=gen)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    direction = {n: torch.randn(p.shape, dtype=DT, generator=gen) for n, p in params.items()}
    return model, functional_loss(model, F.cross_entropy, x, y), params, direction


BAD_INPUTS = {
    "unknown name": (lambda p, g, u: (p, [["nope"], *g], u), ValueError, "nope"),
    "missing direction": (
        lambda p, g, u: (p, g, {k: v for k, v in u.items() if k != "0.bias"}),
        ValueError,
        "direction has no tensor.*0.bias",
    ),
    "extra direction": (
        lambda p, g, u: (p, g, {**u, "ghost": torch.zeros(1, dtype=DT)}),
        ValueError,
        "ghost",
    ),
    "two subsets": (
        lambda p, g, u: (p, [["0.weight"], ["0.weight", "0.bias"]], u),
        ValueError,
        "'0.weight' is in two subsets",
    ),
    "empty subset": (lambda p, g, u: (p, [["0.weight"], []], u), ValueError, "subset 1 is empty"),
    "empty groups": (lambda p, g, u: (p, [], u), ValueError, "groups is empty"),
    "groups a string": (lambda p, g, u: (p, "0.weight", u), ValueError, "list of lists"),
    "shape": (
        lambda p, g, u: (p, g, {**u, "0.bias": torch.zeros(5, dtype=DT)}),
        ValueError,
        r"direction\['0.bias'\] has shape \(5,\)",
    ),
    "direction dtype": (
        lambda p, g, u: (p, g, {**u, "0.bias": u["0.bias"].float()}),
        ValueError,
        "dtype mismatch at '0.bias'",
    ),
    "params dtype": (
        lambda p, g, u: ({**p, "2.weight": p["2.weight"].float()}, g, u),
        ValueError,
        "dtype mismatch at '2.weight'",
    ),
    "integer params": (
        lambda p, g, u: (
            {n: t.long() for n, t in p.items()},
            g,
            {n: t.long() for n, t in u.items()},
        ),
        ValueError,
        "floating dtype",
    ),
    "direction not a tensor": (
        lambda p, g, u: (p, g, {**u, "0.bias": [0.0, 0.0]}),
        TypeError,
        "must be tensors",
    ),
    "params not a dict": (lambda p, g, u: (list(p.values()), g, u), TypeError, "dicts"),
}


@pytest.mark.parametrize("problem", sorted(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(problem):
    mutate, error, match = BAD_INPUTS[problem]
    model, loss_fn, params, direction = _tiny()
    p, g, u = mutate(params, partition.per_tensor(model), direction)
    with pytest.raises(error, match=match):
        projected_derivatives(loss_fn, p, g, u, order=2)


@pytest.mark.parametrize("order", [0, -1, 1.5, True, "2", None])
def test_bad_order_is_rejected(order):
    model, loss_fn, params, direction = _tiny()
    with pytest.raises((ValueError, TypeError), match="order must be an integer"):
        projected_derivatives(loss_fn, params, partition.per_tensor(model), direction, order=order)


@pytest.mark.parametrize("output", ["vector", "float", "matrix"])
def test_non_scalar_loss_is_rejected(output):
    model, _, params, direction = _tiny()
    x = torch.randn(4, 3, dtype=DT)
    make = {
        "vector": lambda p: torch.func.functional_call(model, p, (x,))[:, 0],
        "float": lambda p: 1.0,
        "matrix": lambda p: torch.func.functional_call(model, p, (x,)),
    }[output]
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
        projected_derivatives(make, params, partition.per_tensor(model), direction, order=2)


def test_order_one_and_one_element_loss_shapes(seed):
    model, loss_fn, params, direction = _tiny(seed)
    (g,) = projected_derivatives(loss_fn, params, partition.per_tensor(model), direction, order=1)
    assert g.shape == (4,)
    wrapped = lambda p: loss_fn(p).reshape(1, 1)  # one element: accepted as a scalar
    (g2,) = projected_derivatives(wrapped, params, partition.per_tensor(model), direction, order=1)
    assert torch.equal(g, g2)


def test_inputs_untouched_dtype_kept_loss_called_once_and_no_grad_leak(seed):
    model, loss_fn, params, direction = _tiny(seed)
    live = dict(model.named_parameters())  # requires_grad=True
    assert all(p.requires_grad for p in live.values())
    before = {n: p.detach().clone() for n, p in live.items()}
    u_before = {n: u.clone() for n, u in direction.items()}
    calls = []
    counted = lambda p: calls.append(1) or loss_fn(p)
    out = projected_derivatives(counted, live, partition.per_tensor(model), direction, order=3)
    assert len(calls) == 1
    for t in out:
        assert t.dtype == DT and t.device == before["0.weight"].device and not t.requires_grad
    for n, p in live.items():
        assert torch.equal(p.detach(), before[n]) and p.grad is None and p.requires_grad
        assert torch.equal(direction[n], u_before[n]) and not direction[n].requires_grad
    expected = projected_derivatives(loss_fn, params, partition.per_tensor(model), direction, 3)
    for a, b in zip(out, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("norm", ["1d", "2d"])
def test_batchnorm_buffers_left_exactly_as_found(norm, seed):
    torch.manual_seed(seed)
    if norm == "1d":
        layers = [nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)]
        x = torch.randn(5, 3, dtype=DT)
    else:
        layers = [nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(48, 2)]
        x = torch.randn(3, 2, 6, 6, dtype=DT)
    model = nn.Sequential(*layers).to(DT).train()
    y = torch.randint(0, 2, (x.shape[0],))
    model(x)  # running statistics away from their initial values
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    groups = partition.per_tensor(model)
    before = {n: b.clone() for n, b in model.named_buffers()}
    assert {n.rpartition(".")[2] for n in before} == {
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }
    calls = []

    def in_place(p):  # functional_call on the model's own buffers: updates them in place
        calls.append(1)
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    with_module = projected_derivatives(in_place, params, groups, direction, 3, module=model)
    assert len(calls) == 1
    functional = projected_derivatives(
        functional_loss(model, F.cross_entropy, x, y), params, groups, direction, 3
    )
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]) and b.dtype == before[n].dtype, f"buffer {n} changed"
    for a, b in zip(with_module, functional, strict=True):
        assert torch.equal(a, b)
    # the check can fail: without module=, the in-place loss does move the buffers
    projected_derivatives(in_place, params, groups, direction, order=1)
    assert not torch.equal(model[1].num_batches_tracked, before["1.num_batches_tracked"])
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])


@pytest.mark.parametrize(
    "size, order, diagonal, expected",
    [(8, 2, False, 9), (8, 3, True, 17), (8, 3, False, 1 + 8 + 36), (10, 4, False, 286)],
)
def test_number_of_passes(size, order, diagonal, expected):
    assert num_passes(size, order, diagonal) == expected
    assert num_passes(size, order, diagonal) == 1 + sum(
        size if (diagonal and k >= 3) else math.comb(size + k - 2, k - 1)
        for k in range(2, order + 1)
    )


def test_number_of_passes_is_what_the_engine_does(monkeypatch, seed):
    """Count the reverse passes (outermost calls of torch.autograd.grad; the engine's
    TorchFunctionMode re-dispatches each call once) of real runs against num_passes."""
    model, loss_fn, params, direction = _tiny(seed)
    groups = partition.per_tensor(model)
    original, calls, depth = torch.autograd.grad, [], [0]

    def counting(*args, **kwargs):
        calls.append(depth[0])
        depth[0] += 1
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(torch.autograd, "grad", counting)
    for order, diagonal in [(1, False), (2, False), (3, True), (3, False), (4, True), (4, False)]:
        calls.clear()
        projected_derivatives(loss_fn, params, groups, direction, order, diagonal=diagonal)
        passes = calls.count(0)
        assert passes == num_passes(len(groups), order, diagonal), (order, diagonal, passes)


# ---------------------------------------------- the engine on each smooth torch operator
def _operator_loss(op, x, c):
    def loss_fn(p):
        z = x @ p["w"].T + p["b"]  # [2, 3, 4, 6]
        return (c * op(z, p["g"])).sum()

    return loss_fn


OPERATORS = {
    "gelu": lambda z, g: F.gelu(z) * g,
    "gelu_tanh": lambda z, g: F.gelu(z, approximate="tanh") * g,
    "silu": lambda z, g: F.silu(z) * g,
    "softplus": lambda z, g: F.softplus(z, beta=1.5) * g,
    "softmax": lambda z, g: torch.softmax(z * g, -1),
    "log_softmax": lambda z, g: F.log_softmax(z * g, -1),
    "cross_entropy": lambda z, g: F.cross_entropy(
        (z * g).flatten(0, 2), torch.arange(24) % 6, reduction="none"
    ),
    "mse": lambda z, g: F.mse_loss(torch.tanh(z), g.expand_as(z), reduction="none"),
    "layer_norm": lambda z, g: F.layer_norm(z, (6,), g, g),
    "rms_norm": lambda z, g: F.rms_norm(z, (6,), g),
    "group_norm": lambda z, g: F.group_norm(z.flatten(0, 1).transpose(1, 2), 2, g, g),
    "batch_norm": lambda z, g: F.batch_norm(z.flatten(0, 2), None, None, g, g, training=True),
    "instance_norm": lambda z, g: F.instance_norm(z.flatten(0, 1).transpose(1, 2), weight=g),
    "normalize": lambda z, g: F.normalize(z * g, dim=-1),
    "avg_pool2d": lambda z, g: F.avg_pool2d(torch.tanh(z * g), 2),
    "attention": lambda z, g: F.scaled_dot_product_attention(z, z * g, torch.tanh(z)),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_engine_on_each_operator_matches_finite_differences(name, seed):
    """Orders 1–3 of a loss built on one operator (inputs and parameters both moving) against
    4-point central differences of the engine's order below. Guards the operators torch gets
    wrong natively (layer/batch/instance norm at order 3; attention has no double backward)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 5, dtype=DT, generator=gen)
    c = torch.randn(
        OPERATORS[name](torch.zeros(2, 3, 4, 6, dtype=DT), torch.ones(6, dtype=DT)).shape,
        dtype=DT,
        generator=gen,
    )
    params = {
        "w": torch.randn(6, 5, dtype=DT, generator=gen) * 0.5,
        "b": torch.randn(6, dtype=DT, generator=gen),
        "g": torch.rand(6, dtype=DT, generator=gen) + 0.5,
    }
    direction = {n: torch.randn(p.shape, dtype=DT, generator=gen) for n, p in params.items()}
    groups = [["w"], ["b"], ["g"]]
    loss_fn = _operator_loss(OPERATORS[name], x, c)
    derivatives = _engine(loss_fn, params, groups, direction, 3)
    v = torch.randn(3, dtype=DT, generator=gen)
    zero = torch.zeros(3, dtype=DT)
    for d in range(1, 4):

        def lower(eta, d=d):
            moved = _shift(params, groups, direction, eta)
            if d == 1:
                with engine_module.exact_higher_order():  # attention: no double backward
                    return loss_fn(moved).detach()
            return _engine(loss_fn, moved, groups, direction, d - 1)[d - 2]

        fd = finite_difference_check(lower, zero, v, 1e-4)
        err = contraction_error(derivatives[d - 1], v, fd)
        assert err <= FD_TOL, f"{name} order {d}: engine vs FD of order {d - 1}, rel err {err:.2e}"


# ------------------------------------------- split_linear: f(x, θ + ηu) = f(x, θ) + η f(x, u)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_split_linear_matches_reference_for_every_partition(case, seed):
    """The split route (``split_linear=True``) against the float64 reference, orders 1–3, every
    partition kind (weights of several layers in one subset included)."""
    s = setup(case, seed)
    for kind, groups in partitions_for(s.model, s.gen).items():
        got = _engine(s.loss_fn, s.params, groups, s.direction, 3, split_linear=True)
        expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 3)
        _compare(got, expected, f"split {case.name}/{kind} (S={len(groups)})")


@pytest.mark.parametrize("name", ["tanh_mlp", "conv_maxpool"])
def test_split_linear_order_four_and_diagonal(name, seed):
    s = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_tensor(s.model)
    got = _engine(s.loss_fn, s.params, groups, s.direction, 4, split_linear=True)
    expected = reference_derivatives(s.reference_loss_fn, s.params, groups, s.direction, 4)
    _compare(got, expected, f"split {name} (S={len(groups)})")
    options = {"diagonal": True, "split_linear": True}
    diagonal = _engine(s.loss_fn, s.params, groups, s.direction, 4, **options)
    for d in (2, 3):
        expected_diagonal = torch.stack([expected[d][(k,) * (d + 1)] for k in range(len(groups))])
        assert relative_error(diagonal[d], expected_diagonal) <= TOL, f"order {d + 1}"


def _spy_splits(monkeypatch) -> list[str]:
    """Record the function of every call the split route rewrites."""
    calls: list[str] = []
    original = engine_module._SplitConstantInput.split

    def spy(func, args, kwargs, theta, eta, unit):
        calls.append(func.__name__)
        return original(func, args, kwargs, theta, eta, unit)

    monkeypatch.setattr(engine_module._SplitConstantInput, "split", staticmethod(spy))
    return calls


@pytest.mark.parametrize(
    "name, rewritten", [("tanh_mlp", ["linear"]), ("conv_maxpool", ["conv2d"])]
)
def test_split_linear_rewrites_exactly_the_layers_fed_by_constants(
    monkeypatch, name, rewritten, seed
):
    """Only the first layer (its input is the data) is split; later layers, whose inputs depend
    on η, and the default route (``split_linear=False``) are left as they are."""
    calls = _spy_splits(monkeypatch)
    s = setup(CASES_BY_NAME[name], seed)
    groups = partition.per_tensor(s.model)
    _engine(s.loss_fn, s.params, groups, s.direction, 2)
    assert calls == []
    _engine(s.loss_fn, s.params, groups, s.direction, 2, split_linear=True)
    assert calls == rewritten


@pytest.mark.parametrize("form", ["positional", "keyword", "no_bias", "conv_stride_padding"])
def test_split_linear_keeps_every_argument_of_the_call(monkeypatch, form, seed):
    """Bias given positionally, by keyword or absent, and a convolution's stride/padding/groups:
    the split call returns the same derivatives as the reference (orders 1–3), and it was split.
    A second use of the weight, whose input depends on η, stays unsplit."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, 5, dtype=DT, generator=gen)
    conv = form == "conv_stride_padding"
    params = {
        "w": torch.randn((4, 2, 3, 3) if conv else (5, 5), dtype=DT, generator=gen) * 0.4,
        "b": torch.randn(4 if conv else 5, dtype=DT, generator=gen) * 0.3,
        "v": torch.randn(5, dtype=DT, generator=gen),
    }
    direction = {n: torch.randn(p.shape, dtype=DT, generator=gen) for n, p in params.items()}

    def loss_fn(p):
        if conv:
            hidden = torch.tanh(F.conv2d(x, p["w"], p["b"], 2, 1, 1, 2))  # groups=2
            return (hidden.sum((1, 2)) @ p["v"][:3]).square().mean()
        if form == "positional":
            hidden = torch.tanh(F.linear(x, p["w"], p["b"]))
        elif form == "keyword":
            hidden = torch.tanh(F.linear(x, p["w"], bias=p["b"]))
        else:
            hidden = torch.tanh(F.linear(x, p["w"])) + p["b"]
        hidden = torch.tanh(F.linear(hidden, p["w"]))  # input depends on η: not split
        return (hidden @ p["v"]).square().mean()

    calls = _spy_splits(monkeypatch)
    groups = [["w"], ["b"], ["v"]]
    got = _engine(loss_fn, params, groups, direction, 3, split_linear=True)
    assert calls == (["conv2d"] if conv else ["linear"])
    expected = reference_derivatives(loss_fn, params, groups, direction, 3)
    _compare(got, expected, f"split {form}")
