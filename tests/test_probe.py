"""LearningRateProbe (METHOD.md §3) on quadratics whose answer is known in closed form (float64).

Every test takes the ``seed`` fixture (fresh; replay with HOBENCH_SEED=<seed>).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optimizers.derivatives import functional_loss
from optimizers.probe import LearningRateProbe

pytestmark = pytest.mark.usefixtures("single_thread")
DT = torch.float64
SIZES = (3, 1, 4)


class Blocks(nn.Module):
    """θ = (θ_1, …, θ_S) as vectors of sizes ``SIZES`` (one subset each, per_tensor)."""

    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.theta = nn.ParameterList(
            [nn.Parameter(torch.randn(n, generator=gen, dtype=DT)) for n in SIZES]
        )


def flat(params: dict) -> torch.Tensor:
    return torch.cat([params[f"theta.{s}"] for s in range(len(SIZES))])


def sgd_with_probe(model, loss_fn, lr, steps, every=1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    probe = LearningRateProbe(model, every=every)
    thetas = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(dict(model.named_parameters())).backward()
        thetas.append(flat(dict(model.named_parameters())).detach().clone())
        probe.before_step()
        optimizer.step()
        probe.after_step(loss_fn)
    return probe, thetas


def test_decoupled_quadratic_gives_one_over_lr_times_curvature(seed):
    """L = ½ Σ_s a_s ‖θ_s‖², SGD with lr: u_s = lr a_s θ_s, so ḡ_s = lr a_s² ‖θ_s‖²,
    H̄_ss = lr² a_s³ ‖θ_s‖², H̄ diagonal and η*_s = ḡ_s / H̄_ss = 1 / (lr a_s)."""
    gen = torch.Generator().manual_seed(seed)
    a = 10 ** (2 * torch.rand(len(SIZES), generator=gen, dtype=DT) - 1)
    model, lr = Blocks(gen), 0.05
    loss = lambda p: 0.5 * sum(a[s] * p[f"theta.{s}"].square().sum() for s in range(len(SIZES)))
    probe, thetas = sgd_with_probe(model, loss, lr, steps=3)
    assert len(probe.records) == 3 * len(SIZES)
    for record in probe.records:
        s = int(record["subset"].split(".")[1])
        theta_s = thetas[record["step"]].split(SIZES)[s]
        norm2 = theta_s.square().sum().item()
        assert record["status"] == "newton"
        assert math.isclose(record["eta"], 1 / (lr * a[s].item()), rel_tol=1e-10)
        assert math.isclose(record["ratio"], 1 / (lr * a[s].item()), rel_tol=1e-10)
        assert math.isclose(record["g"], lr * a[s].item() ** 2 * norm2, rel_tol=1e-10)
        assert math.isclose(record["h"], lr**2 * a[s].item() ** 3 * norm2, rel_tol=1e-10)


def test_coupled_quadratic_matches_numpy_solve(seed):
    """L = ½ θᵀAθ − bᵀθ, SGD: u = lr (Aθ − b); ḡ_s = g_sᵀu_s, H̄_st = U_sᵀ A U_t (U_s = u on
    block s, 0 elsewhere), η* = np.linalg.solve(H̄, ḡ); the ratio is ḡ_s / H̄_ss."""
    gen = torch.Generator().manual_seed(seed)
    size = sum(SIZES)
    M = torch.randn(size, size, generator=gen, dtype=DT)
    A = (M @ M.T + size * torch.eye(size, dtype=DT)).numpy()
    b = torch.randn(size, generator=gen, dtype=DT).numpy()
    model, lr = Blocks(gen), 0.01
    At, bt = torch.from_numpy(A), torch.from_numpy(b)
    loss = lambda p: 0.5 * flat(p) @ At @ flat(p) - bt @ flat(p)
    probe, thetas = sgd_with_probe(model, loss, lr, steps=2)
    ends = np.cumsum((0, *SIZES))
    for step, theta in enumerate(thetas):
        g = A @ theta.numpy() - b
        U = np.zeros((size, len(SIZES)))
        for s in range(len(SIZES)):
            U[ends[s] : ends[s + 1], s] = lr * g[ends[s] : ends[s + 1]]
        g_bar, H_bar = U.T @ g, U.T @ A @ U
        expected = np.linalg.solve(H_bar, g_bar)
        records = [r for r in probe.records if r["step"] == step]
        got = np.array([r["eta"] for r in records])
        assert np.linalg.norm(got - expected) <= 1e-9 * np.linalg.norm(expected)
        ratios = np.array([r["ratio"] for r in records])
        assert np.allclose(ratios, g_bar / np.diag(H_bar), rtol=1e-10, atol=0)
        assert [r["subset"] for r in records] == ["theta.0", "theta.1", "theta.2"]


def test_schedule_and_tidy_records(seed):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    x = torch.randn(8, 3, generator=gen, dtype=DT)
    y = torch.randint(0, 2, (8,), generator=gen)
    probe_loss = functional_loss(model, F.cross_entropy, x, y)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = LearningRateProbe(model, probe_loss, every=3, partition="per_module")
    for _ in range(7):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        probe.before_step()
        optimizer.step()
        probe.after_step()
    assert sorted({r["step"] for r in probe.records}) == [0, 3, 6]
    assert {r["subset"] for r in probe.records} == {"0.weight+0.bias", "2.weight+2.bias"}
    pandas = pytest.importorskip("pandas")
    table = pandas.DataFrame(probe.records)
    assert list(table.columns) == ["step", "subset", "eta", "ratio", "g", "h", "status"]
    assert len(table) == 6


def test_subset_that_did_not_move_is_left_out_of_the_solve(seed):
    """A frozen subset (u_s = 0: H̄ singular, the loss constant along u_s) is flat: η*_s = NaN
    for it, status ``flat_subset``, and the others get their step (L = ½‖θ‖², SGD with
    lr 0.1: η*_s = 1/lr = 10)."""
    gen = torch.Generator().manual_seed(seed)
    model = Blocks(gen)
    optimizer = torch.optim.SGD([model.theta[0], model.theta[2]], lr=0.1)
    loss = lambda p: 0.5 * flat(p).square().sum()
    probe = LearningRateProbe(model)
    optimizer.zero_grad()
    loss(dict(model.named_parameters())).backward()
    probe.before_step()
    optimizer.step()
    records = probe.after_step(loss)
    assert records[1]["h"] == 0 and math.isnan(records[1]["ratio"])
    assert math.isnan(records[1]["eta"]) and {r["status"] for r in records} == {"flat_subset"}
    for s in (0, 2):
        assert math.isclose(records[s]["eta"], 10.0, rel_tol=1e-12)


def test_subset_with_indefinite_curvature_gives_nan_and_a_status(seed):
    """H̄ not ≻ 0 (a concave direction, nothing flat): η is NaN, the status says why."""
    gen = torch.Generator().manual_seed(seed)
    model = Blocks(gen)
    signs = torch.tensor([1.0] * SIZES[0] + [-1.0] * SIZES[1] + [1.0] * SIZES[2], dtype=DT)
    loss = lambda p: 0.5 * (signs * flat(p).square()).sum()
    probe, _ = sgd_with_probe(model, loss, 0.1, steps=1)
    assert all(math.isnan(r["eta"]) for r in probe.records)
    assert {r["status"] for r in probe.records} == {"not_positive_definite"}


@pytest.mark.parametrize(("name", "value"), [("every", 0), ("every", 1.5), ("probe_loss", 3)])
def test_bad_arguments(name, value):
    with pytest.raises(ValueError, match=name):
        LearningRateProbe(nn.Linear(2, 1), **{name: value})
    probe = LearningRateProbe(nn.Linear(2, 1))
    probe.before_step()
    with pytest.raises(ValueError, match="probe_loss"):
        probe.after_step()
