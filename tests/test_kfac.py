"""K-FAC through ASDL (asdfghjkl 0.1a5) on torch 2.13: factors, preconditioning, schedule, training.

ASDL is alpha software used through two workarounds (optimizers/baselines.py): a no-op NVTX on
CPU builds and silenced legacy-hook warnings. These tests check that what it computes is still
K-FAC: the Kronecker factors of each layer against dense float64 references, the preconditioned
gradient against the damped-inverse formula, the Monte-Carlo Fisher against the exact one, the
update schedule, and that training a small conv net and an MLP lowers the loss.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optimizers.baselines import _import_asdl, _quiet_asdl
from optimizers.registry import make


def _mlp(seed: int, din=5, hidden=6, dout=4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(din, hidden), nn.Tanh(), nn.Linear(hidden, dout)).double()


def _data(seed: int, n: int, din=5, dout=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, din, generator=g, dtype=torch.float64), torch.randint(
        0, dout, (n,), generator=g
    )


def _exact_factors(model: nn.Sequential, x: torch.Tensor):
    """Dense float64 K-FAC factors of the exact Fisher of a Linear-tanh-Linear net.

    A_l = (1/N) Σ_i a_i a_iᵀ (layer input, no bias column: ASDL preconditions the bias by
    B_l only); B_l = (1/N) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i with J_i = ∂z_i/∂s_l (s_l the
    layer's output, z the logits): the exact Fisher's expectation over y ~ p(·|x_i).
    """
    first, last = model[0], model[2]
    with torch.no_grad():
        s1 = first(x)
        h = torch.tanh(s1)
        p = F.softmax(last(h), dim=1)
    n = x.shape[0]
    A1, A2 = x.T @ x / n, h.T @ h / n
    B1 = torch.zeros(s1.shape[1], s1.shape[1], dtype=x.dtype)
    B2 = torch.zeros(p.shape[1], p.shape[1], dtype=x.dtype)
    for i in range(n):
        H = torch.diag(p[i]) - torch.outer(p[i], p[i])  # [C, C]
        J = last.weight * (1 - h[i] ** 2)  # ∂z/∂s1 [C, hidden]
        B2 += H / n
        B1 += J.T @ H @ J / n
    return {"0": (A1, B1), "2": (A2, B2)}


def _exact_maker(model, n, damping):
    asdl = _import_asdl()
    config = asdl.PreconditioningConfig(data_size=n, damping=damping, ema_decay=1.0)
    with _quiet_asdl():
        return asdl.KfacGradientMaker(model, config, fisher_type="fisher_exact")


def _run_maker(maker, model, x, y):
    model.zero_grad()
    outputs = maker.setup_model_call(model, x)
    maker.setup_loss_call(F.cross_entropy, outputs, y)
    with _quiet_asdl():
        return maker.forward_and_backward()


def test_factors_match_dense_exact_fisher_reference(seed):
    model = _mlp(seed)
    x, y = _data(seed + 1, 9)
    _run_maker(_exact_maker(model, 9, 1e-3), model, x, y)
    for name, (A, B) in _exact_factors(model, x).items():
        kron = getattr(model, name).fisher.kron
        torch.testing.assert_close(kron.A, A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(kron.B, B, rtol=1e-10, atol=1e-12)


def test_preconditioned_gradient_is_damped_kronecker_inverse(seed):
    """grad_W ← (B + √δ/π I)⁻¹ grad_W (A + π√δ I)⁻¹, grad_b ← (B + √δ/π I)⁻¹ grad_b,
    π = sqrt((tr A / dim A) / (tr B / dim B)) (factored Tikhonov damping)."""
    damping = 0.1
    model = _mlp(seed)
    x, y = _data(seed + 1, 9)
    reference = _mlp(seed)
    F.cross_entropy(reference(x), y).backward()
    _run_maker(_exact_maker(model, 9, damping), model, x, y)
    for name, (A, B) in _exact_factors(model, x).items():
        pi = torch.sqrt((A.trace() / A.shape[0]) / (B.trace() / B.shape[0]))
        A_inv = torch.linalg.inv(A + pi * damping**0.5 * torch.eye(A.shape[0], dtype=A.dtype))
        B_inv = torch.linalg.inv(B + damping**0.5 / pi * torch.eye(B.shape[0], dtype=B.dtype))
        layer, ref = getattr(model, name), getattr(reference, name)
        torch.testing.assert_close(layer.weight.grad, B_inv @ ref.weight.grad @ A_inv)
        torch.testing.assert_close(layer.bias.grad, B_inv @ ref.bias.grad)


def test_monte_carlo_fisher_factor_estimates_the_exact_one(seed):
    """The registry's kfac samples one target per example (MC Fisher): with N = 4000 its B
    matches the exact B to sampling error (relative Frobenius error ~ 1/√N ≈ 0.02)."""
    model = _mlp(seed)
    x, y = _data(seed + 1, 4000)
    opt = make("kfac", model, {"lr": 0.0, "momentum": 0.0, "seed": seed})
    opt.step((x, y))
    A_exact, B_exact = _exact_factors(model, x)["2"]
    B_mc = model[2].fisher.kron.B
    error = torch.linalg.norm(B_mc - B_exact) / torch.linalg.norm(B_exact)
    assert error < 0.15, f"MC Fisher factor off by {error:.3f} (relative)"
    torch.testing.assert_close(model[2].fisher.kron.A, A_exact)  # A does not depend on y


def test_first_estimate_is_taken_whole_then_averaged(seed):
    """Step 0 stores the batch factors themselves (not ρ times them); step T blends
    A ← (1−ρ) A + ρ Â; between curvature steps the factors do not move."""
    model = _mlp(seed)
    rho = 0.25
    opt = make(
        "kfac",
        model,
        {"lr": 0.0, "statistics_decay": rho, "curvature_update_every": 2, "seed": seed},
    )
    batches = [_data(seed + k, 8) for k in range(3)]
    opt.step(batches[0])
    A0 = batches[0][0].T @ batches[0][0] / 8
    torch.testing.assert_close(model[0].fisher.kron.A, A0)
    opt.step(batches[1])  # step 1: no curvature update
    torch.testing.assert_close(model[0].fisher.kron.A, A0)
    opt.step(batches[2])  # step 2: running average
    A2 = batches[2][0].T @ batches[2][0] / 8
    torch.testing.assert_close(model[0].fisher.kron.A, (1 - rho) * A0 + rho * A2)


def test_inverse_is_refreshed_only_every_inverse_update_every_steps(seed):
    model = _mlp(seed)
    opt = make(
        "kfac",
        model,
        {"lr": 0.01, "curvature_update_every": 1, "inverse_update_every": 3, "seed": seed},
    )
    inverses = []
    for k in range(7):
        opt.step(_data(seed + k, 8))
        inverses.append(model[2].fisher.kron.A_inv.clone())
    changed = [not torch.equal(inverses[k], inverses[k - 1]) for k in range(1, 7)]
    assert changed == [False, False, True, False, False, True]


def _digits(n: int, dtype):
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images[:n] / 16.0, dtype=dtype).reshape(n, 1, 8, 8)
    return x, torch.tensor(labels[:n], dtype=torch.long)


class _ConvNet(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(6 * 4 * 4, 10),
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kfac_trains_a_small_conv_net_on_digits(seed, dtype, single_thread):
    torch.manual_seed(seed)
    model = _ConvNet().to(dtype)
    x, y = _digits(400, dtype)
    opt = make("kfac", model, {"lr": 0.03, "curvature_update_every": 5, "inverse_update_every": 10})
    start = _full_loss(model, x, y)
    rng = np.random.default_rng(seed)
    for _ in range(40):
        index = torch.as_tensor(rng.choice(400, 50, replace=False))
        loss = opt.step((x[index], y[index]))
        assert torch.isfinite(loss)
    end = _full_loss(model, x, y)
    assert end < 0.3 * start, f"full-batch loss {start:.3f} -> {end:.3f}"
    assert model[0].fisher.kron.A.shape == (9, 9)  # conv: A over 3x3 input patches
    assert model[4].fisher.kron.B.shape == (10, 10)


def test_kfac_trains_an_mlp_and_beats_its_own_start(seed, single_thread):
    model = _mlp(seed, din=64, hidden=32, dout=10)
    x, y = _digits(400, torch.float64)
    x = x.reshape(400, 64)
    opt = make("kfac", model, {"lr": 0.05, "curvature_update_every": 5, "inverse_update_every": 10})
    start = _full_loss(model, x, y)
    for step in range(40):
        batch = slice(50 * (step % 8), 50 * (step % 8 + 1))
        opt.step((x[batch], y[batch]))
    end = _full_loss(model, x, y)
    assert end < 0.2 * start, f"full-batch loss {start:.3f} -> {end:.3f}"


def test_resumed_kfac_restores_the_factors_and_the_step_counter(seed):
    model = _mlp(seed)
    opt = make("kfac", model, {"curvature_update_every": 2, "inverse_update_every": 4})
    for k in range(5):
        opt.step(_data(seed + k, 8))
    state = opt.state_dict()
    fresh = make("kfac", _mlp(seed), {"curvature_update_every": 2, "inverse_update_every": 4})
    fresh.load_state_dict(state)
    assert fresh.grad_maker.state["step"] == 5
    for name in ("0", "2"):
        saved, loaded = getattr(model, name).fisher.kron, getattr(fresh.model, name).fisher.kron
        for field in ("A", "B", "A_inv", "B_inv"):
            assert torch.equal(getattr(saved, field), getattr(loaded, field))


def test_kfac_rejects_bad_settings_and_unsupported_criteria():
    model = _mlp(0)
    with pytest.raises(ValueError, match="damping"):
        make("kfac", model, {"damping": 0.0})
    with pytest.raises(ValueError, match="inverse_update_every"):
        make("kfac", model, {"inverse_update_every": 0})
    with pytest.raises(ValueError, match="criteria"):
        make("kfac", model, criterion=F.nll_loss)


def _full_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


# ----------------------------------------------------------------------------- coverage
class _Mixed(nn.Module):
    """Modules ASDL preconditions (Embedding, LayerNorm, Linear) beside ones it does not (a
    bare parameter of a module with children, Conv1d, GroupNorm, PReLU)."""

    def __init__(self, vocabulary=7, width=4, classes=5):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.scale = nn.Parameter(torch.ones(width))
        self.conv = nn.Conv1d(width, width, 3, padding=1)
        self.group_norm = nn.GroupNorm(2, width)
        self.layer_norm = nn.LayerNorm(width)
        self.prelu = nn.PReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        h = self.embedding(tokens) * self.scale  # [B, T, width]
        h = self.group_norm(self.conv(h.transpose(1, 2))).transpose(1, 2)
        return self.head(self.prelu(self.layer_norm(h)).mean(dim=1))


class _ConvBatchNorm(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
            nn.Linear(4 * 8 * 8, 10),
        )  # fmt: skip


def _kfac(model, seed):
    """K-FAC at lr 0 without momentum (a step leaves the preconditioned gradient in .grad);
    ASDL warns about each module class it does not support."""
    hyperparameters = {"lr": 0.0, "momentum": 0.0, "weight_decay": 0.0, "seed": seed}
    unsupported = isinstance(model, _Mixed)
    with pytest.warns(UserWarning, match="does not support") if unsupported else _no_warning():
        return make("kfac", model, hyperparameters)


_no_warning = contextlib.nullcontext


def test_coverage_names_the_preconditioned_parameters_and_the_plain_ones(seed):
    torch.manual_seed(seed)
    coverage = _kfac(_Mixed(), seed).coverage
    assert coverage.kronecker == ("embedding.weight", "head.weight", "head.bias")
    assert coverage.unit_wise == ("layer_norm.weight", "layer_norm.bias")
    assert coverage.plain == (
        "scale", "conv.weight", "conv.bias", "group_norm.weight", "group_norm.bias",
        "prelu.weight",
    )  # fmt: skip
    assert coverage.preconditioned == (
        "embedding.weight", "layer_norm.weight", "layer_norm.bias", "head.weight", "head.bias",
    )  # fmt: skip
    assert coverage.module_types["scale"] == "_Mixed"
    assert coverage.sizes["embedding.weight"] == 28 and coverage.sizes["prelu.weight"] == 1
    assert coverage.types_of(coverage.plain) == ["_Mixed", "Conv1d", "GroupNorm", "PReLU"]
    conv_bn = _kfac(_ConvBatchNorm(), seed).coverage
    assert conv_bn.kronecker == ("0.weight", "0.bias", "4.weight", "4.bias")
    assert conv_bn.unit_wise == ("1.weight", "1.bias") and conv_bn.plain == ()
    assert _kfac(_mlp(seed).float(), seed).coverage.plain == ()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("model_class", [_Mixed, _ConvBatchNorm])
def test_coverage_agrees_with_what_the_step_does_to_each_gradient(seed, model_class, dtype):
    """After one step (lr 0, no momentum), the gradient of a parameter listed as plain is the
    autograd gradient of the batch loss, unchanged; every preconditioned one differs from it."""
    torch.manual_seed(seed)
    model = model_class().to(dtype)
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    if model_class is _Mixed:
        x = torch.randint(0, 7, (6, 5), generator=g)
    else:
        x = torch.randn(6, 1, 8, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 5, (6,), generator=g)
    F.cross_entropy(reference(x), y).backward()
    optimizer = _kfac(model, seed)
    optimizer.step((x, y))
    expected = dict(reference.named_parameters())
    coverage = optimizer.coverage
    for name, parameter in model.named_parameters():
        plain = expected[name].grad
        if name in coverage.plain:
            torch.testing.assert_close(parameter.grad, plain, msg=name)
        else:
            change = torch.linalg.norm(parameter.grad - plain) / torch.linalg.norm(plain)
            assert name in coverage.preconditioned and change > 1e-2, (name, float(change))


def test_reading_coverage_changes_no_step(seed):
    """Two optimizers on one start, one asked for its coverage between steps: same weights."""
    torch.manual_seed(seed)
    first = _ConvBatchNorm()
    second = copy.deepcopy(first)
    optimizers = [make("kfac", m, {"lr": 0.05, "seed": seed}) for m in (first, second)]
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(3):
        batch = (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
        assert optimizers[0].coverage.plain == ()
        for optimizer in optimizers:
            optimizer.step(batch)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
