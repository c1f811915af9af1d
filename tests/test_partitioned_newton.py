"""PartitionedNewton (METHOD.md §4–§6): known methods, invariance, safety, state, a smoke training.

Numbers are compared in float64 against closed forms (Newton's and Cauchy's steps on a quadratic)
or against ``reference.reference_derivatives`` (torch.autograd.functional) fed to the solver.
Every test takes the ``seed`` fixture (fresh; replay with HOBENCH_SEED=<seed>).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from reference import reference_derivatives, relative_error
from torch import nn

from optimizers.derivatives import functional_loss
from optimizers.partition import per_tensor, single
from optimizers.partitioned_newton import GLOBAL, STATUS_CODES, PartitionedNewton
from optimizers.proposals import adam_direction, momentum_direction
from optimizers.subspace import OK_STATUSES, SolverStatus, subspace_step

pytestmark = pytest.mark.usefixtures("single_thread")
DT = torch.float64


# ------------------------------------------------------------------ problems
class Coordinates(nn.Module):
    """θ ∈ R^P stored as P scalar parameters ``x.0 … x.{P-1}`` (one subset each per_tensor)."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.x = nn.ParameterList([nn.Parameter(v.clone()) for v in values])

    def vector(self) -> torch.Tensor:
        return torch.stack(list(self.x))


def quadratic(A: torch.Tensor, b: torch.Tensor):
    """L(θ) = ½ θᵀAθ − bᵀθ as a function of the named scalars of :class:`Coordinates`."""

    def loss(params):
        theta = torch.stack([params[f"x.{i}"] for i in range(len(b))])
        return 0.5 * theta @ A @ theta - b @ theta

    return loss


def closure_for(model, optimizer, loss_fn):
    def closure():
        optimizer.zero_grad()
        loss = loss_fn(dict(model.named_parameters()))
        loss.backward()
        return loss

    return closure


def spd(gen, size):
    M = torch.randn(size, size, generator=gen, dtype=DT)
    return M @ M.T + size * torch.eye(size, dtype=DT)


def mlp(gen, sizes=(4, 5, 3)):
    model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(), nn.Linear(sizes[1], sizes[2]))
    model = model.to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT))
    return model


def batches(gen, count, size=12, features=4, classes=3):
    return [
        (
            torch.randn(size, features, generator=gen, dtype=DT),
            torch.randint(0, classes, (size,), generator=gen),
        )
        for _ in range(count)
    ]


def train(model, optimizer, data, curvature_data, steps, start=0):
    """Steps start … start + steps − 1 of ``optimizer`` on cycled batches; returns the losses."""
    losses = []
    for t in range(start, start + steps):
        x, y = data[t % len(data)]

        def closure(x=x, y=y):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if isinstance(optimizer, PartitionedNewton):
            x2, y2 = curvature_data[t % len(curvature_data)]
            curvature = functional_loss(model, F.cross_entropy, x2, y2)
            losses.append(float(optimizer.step(closure, curvature).detach()))
        else:
            losses.append(float(optimizer.step(closure).detach()))
    return losses


# ------------------------------------------------------------------ known methods
def quadratic_step(gen, size, matrix, **options):
    """One step on L = ½θᵀAθ − bᵀθ (A = ``matrix(gen, size)``, b, θ0 random) with u = g, λ1 = 1,
    λ_int = 0, no warm-up, one subset per coordinate unless ``options`` say otherwise:
    (A, b, θ0, g = ∇L(θ0), θ1, the optimizer)."""
    A, b = matrix(gen, size), torch.randn(size, generator=gen, dtype=DT)
    theta0 = torch.randn(size, generator=gen, dtype=DT)
    model = Coordinates(theta0)
    loss = quadratic(A, b)
    optimizer = PartitionedNewton.from_model(
        model, lr=1.0, lambda_int=0.0, proposal="gradient", update_every=1, warmup=0,
        average=1, **options,
    )  # fmt: skip
    optimizer.step(closure_for(model, optimizer, loss), loss)
    return A, b, theta0, A @ theta0 - b, model.vector().detach(), optimizer


@pytest.mark.parametrize("remove_negative", [False, True])
def test_newton_step_single_coordinates(seed, remove_negative):
    """u = g, one subset per coordinate, λ1 = 1, λ_int = 0: η = H̄⁻¹ḡ is Newton's step, so one
    step lands on θ* = A⁻¹b; with clipping, θ1 = θ0 − max(η, 0) ∘ g, η_s = (θ0 − θ*)_s / g_s."""
    gen = torch.Generator().manual_seed(seed)
    A, b, theta0, gradient, theta1, optimizer = quadratic_step(
        gen, 6, spd, remove_negative=remove_negative
    )
    minimiser = torch.linalg.solve(A, b)
    eta = (theta0 - minimiser) / gradient
    expected = theta0 - (eta.clamp(min=0) if remove_negative else eta) * gradient
    assert relative_error(theta1, expected) <= 1e-10
    if not remove_negative:
        assert relative_error(theta1, minimiser) <= 1e-10
    record = optimizer.last_diagnostics
    assert record["event"] == "solved" and record["status"] == "newton"
    used = eta.clamp(min=0) if remove_negative else eta
    assert relative_error(torch.tensor(record["eta"], dtype=DT), used) <= 1e-10


def test_cauchy_step_single_subset(seed):
    """S = 1, λ_int = 0, u = g: η = gᵀg / gᵀAg, Cauchy's exact steepest-descent step."""
    gen = torch.Generator().manual_seed(seed)
    A, _, theta0, g, theta1, _ = quadratic_step(gen, 5, spd, partition=single)
    expected = theta0 - (g @ g) / (g @ A @ g) * g
    assert relative_error(theta1, expected) <= 1e-12


def indefinite_matrix(gen, size):
    """Q Diag(±10^U(-0.5, 0.5)) Qᵀ with at least one negative eigenvalue."""
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=DT))
    signs = torch.where(torch.rand(size, generator=gen, dtype=DT) < 0.5, -1.0, 1.0)
    signs[0] = -1.0
    magnitudes = 10.0 ** (torch.rand(size, generator=gen, dtype=DT) - 0.5)
    return (q * (signs * magnitudes)) @ q.T


def saddle_free_newton_step(A, g):
    """δ = E⁻¹|E⁻¹AE⁻¹|⁻¹E⁻¹g, E = |Diag(A)|^{1/2}, |·| by torch.linalg.eigh: the saddle-free
    Newton step in Jacobi-equilibrated coordinates, written out independently of the solver."""
    e = A.diagonal().abs().sqrt()
    values, vectors = torch.linalg.eigh(A / torch.outer(e, e))
    modulus = (vectors * values.abs()) @ vectors.T
    return torch.linalg.solve(modulus, g / e) / e


@pytest.mark.parametrize("remove_negative", [False, True])
@pytest.mark.parametrize("indefinite", ["solve", "saddle_free"])
def test_order2_step_on_an_indefinite_quadratic(seed, indefinite, remove_negative):
    """L = ½θᵀAθ − bᵀθ, A indefinite; u = g, one subset per coordinate, λ1 = 1, λ_int = 0.
    "solve": θ1 = θ0 − η∘g lands on the stationary point A⁻¹b (a saddle) without the clip;
    "saddle_free": θ0 − η∘g = θ0 − δ, δ the saddle-free Newton step; with the clip, the
    subsets whose η_s < 0 do not move (θ1 = θ0 − max(η, 0)∘g)."""
    gen = torch.Generator().manual_seed(seed)
    A, b, theta0, gradient, theta1, optimizer = quadratic_step(
        gen, 5, indefinite_matrix, remove_negative=remove_negative, indefinite=indefinite
    )
    if indefinite == "solve":
        step = theta0 - torch.linalg.solve(A, b)
    else:
        step = saddle_free_newton_step(A, gradient)
    eta = step / gradient
    used = eta.clamp(min=0) if remove_negative else eta
    assert relative_error(theta1, theta0 - used * gradient) <= 1e-10
    record = optimizer.last_diagnostics
    status = "newton_indefinite" if indefinite == "solve" else "saddle_free"
    assert record["event"] == "solved" and record["status"] == status
    assert record["solver_status"] == STATUS_CODES[status]
    assert relative_error(torch.tensor(record["eta"], dtype=DT), used) <= 1e-10
    assert optimizer.usable_solves == 1 and optimizer.failed_solves == 0


def test_concave_quadratic_solve_stays_and_saddle_free_descends():
    """L = −½‖θ‖², u = g = −θ: ḡ_s = g_s², H̄_ss = −g_s². "solve" gives η = −1 (towards the
    maximum θ = 0), clipped to 0: no move; "saddle_free" gives η = 1: θ1 = θ0 − g = 2θ0."""
    theta0 = torch.tensor([1.0, -2.0], dtype=DT)
    loss = quadratic(-torch.eye(2, dtype=DT), torch.zeros(2, dtype=DT))
    for indefinite, expected in (("solve", theta0), ("saddle_free", 2 * theta0)):
        model = Coordinates(theta0)
        optimizer = PartitionedNewton.from_model(
            model, lr=1.0, lambda_int=0.0, proposal="gradient", update_every=1, warmup=0,
            indefinite=indefinite,
        )  # fmt: skip
        optimizer.step(closure_for(model, optimizer, loss), loss)
        assert torch.allclose(model.vector().detach(), expected, rtol=1e-15, atol=0), indefinite
        assert optimizer.usable_solves == 1


def test_flat_subset_takes_no_step():
    """A subset the loss does not depend on (H̄_ss = 0 and its row zero) keeps its value."""
    model = Coordinates(torch.tensor([1.0, -2.0, 0.5], dtype=DT))
    A = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, -1.0]], dtype=DT)
    b = torch.tensor([0.0, 0.0, 1.0], dtype=DT)
    loss = quadratic(A, b)  # ∂L/∂x1 = 0: x1 is flat
    for indefinite in ("solve", "saddle_free"):
        optimizer = PartitionedNewton.from_model(
            model, lambda_int=0.0, proposal="gradient", update_every=1, warmup=0,
            remove_negative=False, indefinite=indefinite,
        )  # fmt: skip
        for _ in range(3):
            optimizer.step(closure_for(model, optimizer, loss), loss)
        assert model.x[1].item() == -2.0
        assert optimizer.status_counts == {"flat_subset": 3}


@pytest.mark.parametrize("curvature", ["full", "diagonal"])
@pytest.mark.parametrize("lambda_int", [0.0, 1.0])
def test_step_equals_reference_solve_of_averaged_estimates(seed, curvature, lambda_int):
    """Warm-up then one solved step: η = subspace_step(mean ḡ, mean H̄ (or its diagonal),
    |mean D^3|^(1/3), λ_int) from two estimates computed by torch.autograd.functional, and
    θ1 = θ0 − λ1 η ∘ u (clipping off). d is taken after averaging the signed D^3. With λ_int = 0
    the model is linear (softmax regression: convex, so H̄ ≻ 0 and Newton's step exists)."""
    gen = torch.Generator().manual_seed(seed)
    model = mlp(gen)
    if lambda_int == 0:
        model = nn.Sequential(nn.Linear(4, 3)).to(DT)
    data, curvature_data = batches(gen, 2), batches(gen, 2)
    lr = 0.7
    optimizer = PartitionedNewton.from_model(
        model, lr=lr, lambda_int=lambda_int, proposal="gradient", update_every=1, warmup=1,
        average=2, remove_negative=False, curvature=curvature,
    )  # fmt: skip
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = per_tensor(model)
    estimates, directions = [], None
    for t in range(2):  # both estimates at θ0: the warm-up step does not move
        x, y = data[t]
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        directions = dict(zip(theta0, grads, strict=True))
        x2, y2 = curvature_data[t]
        loss_fn = functional_loss(model, F.cross_entropy, x2, y2)
        estimates.append(reference_derivatives(loss_fn, theta0, groups, directions, order=3))
    g = (estimates[0][0] + estimates[1][0]) / 2
    H = (estimates[0][1] + estimates[1][1]) / 2
    third = (_diag3(estimates[0][2]) + _diag3(estimates[1][2])) / 2  # signed, then averaged
    if curvature == "diagonal":
        H = torch.diag(torch.diagonal(H))
    d = third.abs().pow(1 / 3) if lambda_int > 0 else None
    solution = subspace_step(g, H, d, lambda_int)
    assert solution.ok, solution.status
    train(model, optimizer, data, curvature_data, 2)
    for s, (name, param) in enumerate(model.named_parameters()):
        expected = theta0[name] - lr * solution.eta[s] * directions[name]
        assert relative_error(param.detach(), expected) <= 1e-9, name
    records = optimizer.diagnostics
    assert [r["event"] for r in records] == ["warmup", "solved"]


def _diag3(D3: torch.Tensor) -> torch.Tensor:
    return torch.stack([D3[s, s, s] for s in range(D3.shape[0])])


# ------------------------------------------------------------------ invariance (METHOD.md §6)
class Reparameterised(nn.Module):
    """θ_s = a_s θ̃_s + b_s for every tensor of ``base``; the parameters are θ̃ (``0_weight``…)."""

    def __init__(self, base: nn.Module, scales: dict, shifts: dict):
        super().__init__()
        object.__setattr__(self, "base", base)  # not a submodule: its parameters are not ours
        self.scales, self.shifts = scales, shifts
        self.tilde = nn.ParameterDict(
            {
                n.replace(".", "_"): nn.Parameter((p.detach() - shifts[n]) / scales[n])
                for n, p in base.named_parameters()
            }
        )

    def mapped(self) -> dict:
        return {
            n: self.scales[n] * self.tilde[n.replace(".", "_")] + self.shifts[n]
            for n in self.scales
        }

    def forward(self, x):
        return torch.func.functional_call(self.base, self.mapped(), (x,))


def _softmax_regression(gen):
    model = nn.Sequential(nn.Linear(4, 3)).to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT))
    return model


def _pair(seed, convex=False):
    """A model and its reparameterised copy. ``convex``: softmax regression (H̄ ≻ 0, so the
    order-2 step always exists) instead of the tanh MLP."""
    gen = torch.Generator().manual_seed(seed)
    base = mlp(gen) if not convex else _softmax_regression(gen)
    scales = {
        n: float(10 ** (2 * torch.rand((), generator=gen, dtype=DT) - 1))
        for n, _ in base.named_parameters()
    }
    shifts = {n: torch.randn(p.shape, generator=gen, dtype=DT) for n, p in base.named_parameters()}
    wrapped = Reparameterised(copy.deepcopy(base), scales, shifts)
    return base, wrapped, batches(gen, 3), batches(gen, 3)


def _deviation(base, wrapped) -> float:
    mapped = wrapped.mapped()
    return max(relative_error(p.detach(), mapped[n].detach()) for n, p in base.named_parameters())


INVARIANT = {"lr": 0.1, "update_every": 2, "warmup": 1, "average": 2}


# The order-2 steps on the tanh MLP (H̄ indefinite at most recomputations): λ1 = 0.01, 12 steps
# and the gradient proposal. Undamped, they take steps of η_s up to ~10⁴, which blow the net up or
# saturate its softmax on some seeds; rounding errors then grow like the steps do and a twin
# drifts for that reason alone (measured over 200 seeds, λ1 = 0.1 and 12 steps: 0.5-1.5% of the
# seeds above 1e-9, max 1.5e-6, every status equal), and once the softmax saturates the output
# layer's ḡ_s, H̄_s· are rounding noise that an exact-zero test does not catch. At λ1 = 0.01 with
# 12 steps: max deviation 1.0e-11 (solve) and 3.4e-10 (saddle_free) over 1300 seeds, with a step
# on an indefinite H̄ in 97% of them.
ORDER2_INVARIANT = {"lr": 0.01, "proposal": "gradient", "lambda_int": 0.0}


@pytest.mark.parametrize(
    ("options", "steps", "convex"),
    [
        ({"lambda_int": 0.0, "proposal": "gradient"}, 24, True),
        ({"lambda_int": 0.0, "proposal": "momentum"}, 24, True),
        ({"lambda_int": 1.0, "proposal": "gradient"}, 24, False),
        ({"lambda_int": 1.0, "proposal": "momentum"}, 24, False),
        ({**ORDER2_INVARIANT, "indefinite": "solve"}, 12, False),
        ({**ORDER2_INVARIANT, "indefinite": "saddle_free"}, 12, False),
    ],
)
def test_invariance_to_per_subset_affine_maps(seed, options, steps, convex):
    base, wrapped, data, curvature_data = _pair(seed, convex=convex)
    start = {n: p.detach().clone() for n, p in base.named_parameters()}
    assert _deviation(base, wrapped) <= 1e-12
    options = {**INVARIANT, **options}
    ours = PartitionedNewton.from_model(base, **options)
    theirs = PartitionedNewton.from_model(wrapped, **options)
    for t in range(steps):
        train(base, ours, data, curvature_data, 1, start=t)
        train(wrapped, theirs, data, curvature_data, 1, start=t)
        assert _deviation(base, wrapped) <= 1e-9, f"step {t}"
    moved = max(relative_error(p.detach(), start[n]) for n, p in base.named_parameters())
    assert moved > 1e-3, "the weights barely moved: the test would not see a difference"
    assert ours.status_counts == theirs.status_counts


@pytest.mark.parametrize("method", ["sgd", "cauchy"])
def test_sgd_and_cauchy_step_are_not_invariant(seed, method):
    base, wrapped, data, curvature_data = _pair(seed)

    def make(model):
        if method == "sgd":
            return torch.optim.SGD(model.parameters(), lr=0.1)
        return PartitionedNewton.from_model(
            model, partition=single, proposal="gradient", lambda_int=0.0, **INVARIANT
        )

    train(base, make(base), data, curvature_data, 24)
    train(wrapped, make(wrapped), data, curvature_data, 24)
    assert _deviation(base, wrapped) > 1e-3


# ------------------------------------------------------------------ hyperparameters, errors
BAD = [
    ("lr", -0.1), ("lr", math.nan), ("lambda_int", -1.0), ("update_every", 0),
    ("update_every", 2.5), ("average", 0), ("warmup", -1), ("proposal", "lbfgs"),
    ("momentum", 1.0), ("dampening", -0.5), ("betas", (0.9, 1.5)), ("betas", 0.9),
    ("eps", 0.0), ("remove_negative", "yes"), ("curvature", "block"), ("indefinite", "cubic"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_hyperparameters_raise_value_error_naming_the_value(name, value):
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=name) as error:
        PartitionedNewton.from_model(model, **{name: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_groups_need_names_and_curvature_loss_is_required_at_recomputations():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="names"):
        PartitionedNewton([{"params": list(model.parameters())}])
    optimizer = PartitionedNewton.from_model(model, update_every=3)
    x, y = torch.randn(4, 2), torch.randn(4, 1)
    loss_fn = lambda params: F.mse_loss(torch.func.functional_call(model, params, (x,)), y)
    closure = closure_for(model, optimizer, loss_fn)
    schedule = []
    for _ in range(7):
        schedule.append(optimizer.needs_curvature)
        if optimizer.needs_curvature:
            with pytest.raises(ValueError, match="curvature_loss"):
                optimizer.step(closure)
        optimizer.step(closure, loss_fn if optimizer.needs_curvature else None)
    assert schedule == [True, False, False, True, False, False, True]
    with pytest.raises(ValueError, match="closure"):
        optimizer.step(None)


# ------------------------------------------------------------------ safety
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_non_finite_loss_or_gradient_leaves_weights_and_buffers_unchanged(seed, what, mask,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.setattr(PartitionedNewton, "_always_mask", mask)
    gen = torch.Generator().manual_seed(seed)
    model = mlp(gen)
    data, curvature_data = batches(gen, 2), batches(gen, 2)
    optimizer = PartitionedNewton.from_model(model, update_every=3, warmup=0, average=1)
    train(model, optimizer, data, curvature_data, 4)  # η exists, buffers filled
    assert optimizer.state[GLOBAL]["eta"] is not None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in
               model.named_parameters()}  # fmt: skip
    x, y = data[0]

    def bad_closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if what == "gradient":
            model[0].weight.grad[0, 0] = math.inf
            return loss
        return loss * math.nan

    for _ in range(3):  # the third is a recomputation: its estimate is skipped too
        optimizer.step(bad_closure, functional_loss(model, F.cross_entropy, *curvature_data[0]))
    glob = optimizer.state[GLOBAL]
    assert float(glob["skipped_steps"]) == 3
    assert glob["skipped_estimates"] == 1
    assert optimizer.last_diagnostics["event"] == "non_finite_gradient"
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
        assert torch.equal(optimizer.state[p]["momentum_buffer"], buffers[n]), n
    train(model, optimizer, data, curvature_data, 1)  # and it goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_masked_path_equals_host_path(seed, monkeypatch):
    """The accelerator path (no flag read, updates masked) gives the CPU path's trajectory."""
    results = []
    for mask in (False, True):
        monkeypatch.setattr(PartitionedNewton, "_always_mask", mask)
        gen = torch.Generator().manual_seed(seed)
        model = mlp(gen)
        data, curvature_data = batches(gen, 2), batches(gen, 2)
        optimizer = PartitionedNewton.from_model(model, update_every=2, warmup=1, average=2,
                                                 proposal="adam")  # fmt: skip
        train(model, optimizer, data, curvature_data, 9)
        results.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert relative_error(results[1], results[0]) <= 1e-12


@pytest.mark.parametrize("mask", [False, True])
def test_step_beyond_the_parameter_range_diverges_without_crashing(mask, monkeypatch):
    """λ1 η_s beyond float32's range (an undamped order-2 step can get there): the weights of
    that subset become ±inf, the others move as usual, on both the host and the masked path."""
    monkeypatch.setattr(PartitionedNewton, "_always_mask", mask)
    model = Coordinates(torch.tensor([1.0, -2.0]))  # float32
    loss = quadratic(torch.eye(2), torch.zeros(2))
    optimizer = PartitionedNewton.from_model(
        model, lr=1.0, lambda_int=0.0, proposal="gradient", update_every=100, warmup=0
    )
    optimizer.step(closure_for(model, optimizer, loss), loss)  # η = (1, 1): lands on 0
    optimizer.state[GLOBAL]["eta"] = torch.tensor([1e300, 0.5], dtype=DT)
    model.x[0].data.fill_(1.0)
    model.x[1].data.fill_(-2.0)
    optimizer.step(closure_for(model, optimizer, loss), None)
    assert model.x[0].item() == -math.inf and model.x[1].item() == -1.0


def test_non_finite_curvature_and_failed_solve_keep_the_previous_eta(seed):
    gen = torch.Generator().manual_seed(seed)
    size = 4
    A, b = spd(gen, size), torch.randn(size, generator=gen, dtype=DT)
    model = Coordinates(torch.randn(size, generator=gen, dtype=DT))
    loss = quadratic(A, b)
    optimizer = PartitionedNewton.from_model(
        model, lr=0.5, lambda_int=0.0, update_every=1, warmup=0, average=1, indefinite="skip"
    )
    closure = closure_for(model, optimizer, loss)
    optimizer.step(closure, loss)
    eta = optimizer.state[GLOBAL]["eta"].clone()
    optimizer.step(closure, lambda params: loss(params) * math.nan)
    assert torch.equal(optimizer.state[GLOBAL]["eta"], eta)
    assert optimizer.skipped_estimates == 1
    assert optimizer.last_diagnostics["event"] == "non_finite_curvature"
    optimizer.step(closure, lambda params: -loss(params))  # H̄ ≺ 0: "skip" gives no step
    assert torch.equal(optimizer.state[GLOBAL]["eta"], eta)
    assert optimizer.failed_solves == 1
    assert optimizer.status_counts["not_positive_definite"] == 1
    assert optimizer.last_diagnostics["event"] == "failed"


def test_nan_curvature_loss_with_finite_derivatives_is_skipped(seed):
    """An empty curvature batch: the mean is 0/0 = NaN but every derivative is 0 (finite); the
    estimate must not enter the averaging window (it would shrink ḡ, H̄ and D^3 silently)."""
    gen = torch.Generator().manual_seed(seed)
    model = mlp(gen)
    data, curvature_data = batches(gen, 1), batches(gen, 1)
    optimizer = PartitionedNewton.from_model(model, update_every=1, warmup=0, average=3)
    train(model, optimizer, data, curvature_data, 2)
    window = {k: v.clone() for k, v in optimizer.state[GLOBAL]["window"].items()}
    x, y = curvature_data[0]
    empty = functional_loss(model, F.cross_entropy, x[:0], y[:0])
    assert math.isnan(float(empty({n: p.detach() for n, p in model.named_parameters()})))
    closure = closure_for(model, optimizer, functional_loss(model, F.cross_entropy, *data[0]))
    optimizer.step(closure, empty)
    assert optimizer.skipped_estimates == 1
    assert optimizer.last_diagnostics["event"] == "non_finite_curvature"
    for key, value in optimizer.state[GLOBAL]["window"].items():
        assert torch.equal(value, window[key]), key


def test_no_step_before_a_solved_eta():
    model = Coordinates(torch.tensor([1.0, -2.0], dtype=DT))
    loss = quadratic(-torch.eye(2, dtype=DT), torch.zeros(2, dtype=DT))  # concave: no solve
    optimizer = PartitionedNewton.from_model(
        model, lambda_int=0.0, update_every=1, warmup=0, indefinite="skip"
    )
    for _ in range(3):
        optimizer.step(closure_for(model, optimizer, loss), loss)
    assert torch.equal(model.vector().detach(), torch.tensor([1.0, -2.0], dtype=DT))
    assert optimizer.failed_solves == 3 and optimizer.usable_solves == 0


def test_counters_are_read_only_views_of_the_state(seed):
    """status_counts, usable_solves, failed_solves, skipped_estimates: what diagnostics read."""
    gen = torch.Generator().manual_seed(seed)
    model = mlp(gen)
    data, curvature_data = batches(gen, 6), batches(gen, 6)
    optimizer = PartitionedNewton.from_model(model, update_every=1, warmup=1)
    train(model, optimizer, data, curvature_data, 6)
    glob = optimizer.state[GLOBAL]
    counts = optimizer.status_counts
    assert counts == glob["status_counts"] and sum(counts.values()) == 5
    optimizer.status_counts["newton"] = 99  # a copy: the optimizer's counts do not change
    assert optimizer.status_counts == counts
    usable = sum(n for status, n in counts.items() if SolverStatus(status) in OK_STATUSES)
    assert optimizer.usable_solves == usable
    assert optimizer.usable_solves + optimizer.failed_solves == 5
    assert optimizer.skipped_estimates == glob["skipped_estimates"] == 0
    for name in ("status_counts", "usable_solves", "failed_solves", "skipped_estimates"):
        with pytest.raises(AttributeError):
            setattr(optimizer, name, 0)


# ------------------------------------------------------------------ state
@pytest.mark.parametrize("proposal", ["momentum", "adam", "gradient"])
def test_state_dict_round_trip_is_bitwise(seed, proposal):
    options = {"update_every": 3, "warmup": 1, "average": 2, "proposal": proposal}

    def fresh():
        gen = torch.Generator().manual_seed(seed)
        model = mlp(gen)
        optimizer = PartitionedNewton.from_model(model, **options)
        return model, optimizer, batches(gen, 4), batches(gen, 3)

    model, optimizer, data, curvature_data = fresh()
    train(model, optimizer, data, curvature_data, 17)
    expected = [p.detach().clone() for p in model.parameters()]

    model, optimizer, data, curvature_data = fresh()
    train(model, optimizer, data, curvature_data, 8)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only: the state is plain data
    model, optimizer, data, curvature_data = fresh()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    assert optimizer.state[GLOBAL]["step"] == 8
    train(model, optimizer, data, curvature_data, 9, start=8)
    for got, want in zip(model.parameters(), expected, strict=True):
        assert torch.equal(got.detach(), want)


def test_status_codes_of_existing_statuses_do_not_move():
    """Recorded ``solver_status`` codes stay comparable across versions: new statuses append."""
    assert STATUS_CODES == {
        "newton": 0, "not_positive_definite": 1, "cubic_positive_definite": 2,
        "cubic_indefinite": 3, "cubic_singular_d": 4, "hard_case": 5, "unbounded": 6,
        "non_finite": 7, "newton_indefinite": 8, "saddle_free": 9, "order2_singular": 10,
        "flat_subset": 11,
    }  # fmt: skip


def test_state_dict_saved_before_the_indefinite_option_loads_as_it_ran():
    """No "indefinite" in the saved options: λ_int = 0 ran "skip" then (refused by a "solve"
    optimizer, loaded by a "skip" one); λ_int > 0 never used it (loads into any)."""
    model = nn.Linear(2, 1)
    cases = [(1.0, ("solve", "saddle_free"), ()), (0.0, ("skip",), ("solve",))]
    for lambda_int, loads, refuses in cases:
        saved = PartitionedNewton.from_model(model, lambda_int=lambda_int).state_dict()
        del saved["options"]["indefinite"]
        for indefinite in loads + refuses:
            other = PartitionedNewton.from_model(
                model, lambda_int=lambda_int, indefinite=indefinite
            )
            if indefinite in loads:
                other.load_state_dict(saved)
                continue
            with pytest.raises(ValueError, match="indefinite"):
                other.load_state_dict(saved)


def test_load_state_dict_rejects_other_subsets():
    model = nn.Linear(2, 1)
    saved = PartitionedNewton.from_model(model).state_dict()
    other = PartitionedNewton.from_model(model, partition=[["bias"], ["weight"]])
    with pytest.raises(ValueError, match="subsets"):
        other.load_state_dict(saved)


def test_learning_rate_is_per_group_and_scales_the_step(seed):
    """Halving a group's lr (what ReduceLROnPlateau does to λ1) halves that subset's step."""
    steps = []
    for factor in (1.0, 0.5):
        gen = torch.Generator().manual_seed(seed)
        model = mlp(gen)
        data, curvature_data = batches(gen, 1), batches(gen, 1)
        optimizer = PartitionedNewton.from_model(model, update_every=5, warmup=0, average=1)
        train(model, optimizer, data, curvature_data, 1)
        before = [p.detach().clone() for p in model.parameters()]
        for group in optimizer.param_groups:
            group["lr"] *= factor
        train(model, optimizer, data, curvature_data, 1)
        steps.append([p.detach() - q for p, q in zip(model.parameters(), before, strict=True)])
    for full, half in zip(*steps, strict=True):
        assert relative_error(half, 0.5 * full) <= 1e-12


# ------------------------------------------------------------------ direction rules
def test_adam_direction_is_torch_adam_step_over_lr(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 2), (4,)]
    params = [torch.randn(s, generator=gen, dtype=DT) for s in shapes]
    copies = [p.clone().requires_grad_() for p in params]
    adam = torch.optim.Adam(copies, lr=1e-3, betas=(0.8, 0.99), eps=1e-6)
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    count = torch.zeros((), dtype=DT)
    for _ in range(4):
        grads = [torch.randn(s, generator=gen, dtype=DT) for s in shapes]
        before = [c.detach().clone() for c in copies]
        for c, g in zip(copies, grads, strict=True):
            c.grad = g.clone()
        adam.step()
        u = adam_direction(grads, exp_avgs, exp_avg_sqs, count, (0.8, 0.99), 1e-6)
        for c, b, direction in zip(copies, before, u, strict=True):
            assert relative_error((b - c.detach()) / 1e-3, direction) <= 1e-10


def test_momentum_direction_recursion_and_skip(seed):
    gen = torch.Generator().manual_seed(seed)
    grads = [[torch.randn(3, generator=gen, dtype=DT)] for _ in range(3)]
    buffers = [torch.zeros(3, dtype=DT)]
    expected = torch.zeros(3, dtype=DT)
    for g in grads:
        expected = 0.9 * expected + 0.75 * g[0]
        u = momentum_direction(g, buffers, 0.9, 0.25)
    assert relative_error(u[0], expected) <= 1e-15
    kept = buffers[0].clone()
    momentum_direction([torch.zeros(3, dtype=DT)], buffers, 0.9, 0.25, torch.zeros((), dtype=DT))
    assert torch.equal(buffers[0], kept)


# ------------------------------------------------------------------ smoke training
def test_training_on_digits_beats_sgd_at_equal_steps():
    """Smoke test (not correctness): 60 steps of a tanh MLP on sklearn's digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    y = torch.tensor(digits.target)
    data = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 1500, 100)]
    curvature_data = [(x[1500 + i : 1600 + i], y[1500 + i : 1600 + i]) for i in (0, 100)]
    losses = {}
    for name in ("sgd", "ours"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        optimizer = (
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            if name == "sgd"
            else PartitionedNewton.from_model(model, lr=0.3, update_every=5, warmup=1)
        )
        train(model, optimizer, data, curvature_data, 60)
        with torch.no_grad():
            losses[name] = F.cross_entropy(model(x[:1500]), y[:1500]).item()
    assert losses["ours"] < losses["sgd"], losses


def test_paper_mlp_trains_on_embedded_mnist(seed):
    """Smoke test: the paper's MLP 784-1024-200-100-10 (tanh, paper init) on the 5 000 embedded
    MNIST images, 80 steps of batch 100 with curvature on separate batches, cuts the training
    loss below a quarter of its initial value (measured: 5-7% over seeds 0-2). It does not
    assert "below SGD's": tuned SGD goes lower at equal steps on this model. `python -m
    bench.studies.smoke_study` (results/smoke_study.json, README "Against tuned SGD at equal
    steps"):
    best SGD of 6 learning rates 0.073, best of ours over 16 configurations 0.090 at 80 steps.
    The digits test above is where ours beats SGD."""
    from bench.data import load_arrays
    from bench.models import mlp_mnist

    splits = load_arrays("mnist5k", seed=0)
    x = torch.as_tensor(splits.x_train).flatten(1)
    y = torch.as_tensor(splits.y_train)
    data = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 3000, 100)]
    curvature_data = [(x[3000 + i : 3100 + i], y[3000 + i : 3100 + i]) for i in (0, 100, 200)]
    torch.manual_seed(seed)
    model = mlp_mnist()
    optimizer = PartitionedNewton.from_model(model, lr=0.3, update_every=5, warmup=1)
    with torch.no_grad():
        initial = F.cross_entropy(model(x[:3000]), y[:3000]).item()
    losses = train(model, optimizer, data, curvature_data, 80)
    with torch.no_grad():
        final = F.cross_entropy(model(x[:3000]), y[:3000]).item()
    assert all(math.isfinite(value) for value in losses)
    assert final < 0.25 * initial, (initial, final)
    counts = optimizer.status_counts
    assert sum(counts.values()) >= 10 and optimizer.state["partitioned_newton"]["eta"] is not None
