"""The exact decompositions of optimizers.exact_ops: same values as torch's fused kernels, same
running-statistics updates, and third derivatives that match finite differences (float64)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from reference import finite_difference_check
from torch import nn

from optimizers.exact_ops import exact_higher_order

DT = torch.float64


def _seed() -> int:
    return int(os.environ.get("HOBENCH_SEED", int.from_bytes(os.urandom(4), "little")))


def _third_derivative(f, x, w, t0, *, exact):
    """d³/dt³ of sum(f(x + t w)³) at t0 by three reverse passes."""
    t = torch.tensor(t0, dtype=DT, requires_grad=True)
    with exact_higher_order() if exact else torch.enable_grad():
        y = (f(x + t * w) ** 3).sum()
        for k in range(3):
            (y,) = torch.autograd.grad(y, t, create_graph=k < 2)
    return y


def _second_derivative(f, x, w, t0):
    t = torch.tensor(t0, dtype=DT, requires_grad=True)
    y = (f(x + t * w) ** 3).sum()
    (d1,) = torch.autograd.grad(y, t, create_graph=True)
    (d2,) = torch.autograd.grad(d1, t)
    return d2


def _finite_difference_third(f, x, w, t0, h=1e-3):
    """Central differences of the second derivative (tests/reference.py, Richardson, O(h⁶))."""
    return finite_difference_check(lambda t: _second_derivative(f, x, w, t), t0, 1.0, h)


OPERATORS = {
    "layer_norm": lambda z: F.layer_norm(z, (8,)),
    "layer_norm_affine": lambda z: F.layer_norm(
        z, (6, 8), torch.linspace(0.5, 2, 48, dtype=DT).reshape(6, 8), torch.ones(6, 8, dtype=DT)
    ),
    "batch_norm_train": lambda z: F.batch_norm(z, None, None, training=True),
    "batch_norm_affine": lambda z: F.batch_norm(
        z, None, None, torch.linspace(0.5, 2, 6, dtype=DT), torch.ones(6, dtype=DT), True
    ),
    "batch_norm_eval": lambda z: F.batch_norm(
        z, torch.zeros(6, dtype=DT), torch.full((6,), 2.0, dtype=DT), training=False
    ),
    "instance_norm": lambda z: F.instance_norm(z),
    "attention": lambda z: F.scaled_dot_product_attention(z[:, :2], z[:, 2:4], z[:, 4:]),
    "attention_causal": lambda z: F.scaled_dot_product_attention(
        z[:, :2], z[:, 2:4], z[:, 4:], is_causal=True
    ),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_third_derivative_matches_finite_differences(name):
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, 8, dtype=DT, generator=gen)
    w = torch.randn(4, 6, 8, dtype=DT, generator=gen)
    f = OPERATORS[name]
    exact = _third_derivative(f, x, w, 0.2, exact=True)
    reference = _finite_difference_third(f, x, w, 0.2)
    rel = (exact - reference).abs() / reference.abs().clamp_min(1e-8)
    assert rel < 1e-6, f"{name}: d3 {exact.item()} vs FD {reference.item()} (HOBENCH_SEED={seed})"


def test_torch_layer_norm_third_derivative_is_wrong_without_the_mode():
    """Why the mode exists: if torch fixes this, the mode can be retired (this test then fails)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 8, dtype=DT, generator=gen)
    w = torch.randn(4, 6, 8, dtype=DT, generator=gen)
    f = OPERATORS["layer_norm"]
    native = _third_derivative(f, x, w, 0.2, exact=False)
    reference = _finite_difference_third(f, x, w, 0.2)
    assert (native - reference).abs() / reference.abs() > 1e-3


@pytest.mark.parametrize(
    "module",
    [
        lambda: nn.LayerNorm(5),
        lambda: nn.BatchNorm1d(5),
        lambda: nn.BatchNorm1d(5, momentum=None),
        lambda: nn.InstanceNorm1d(5, affine=True, track_running_stats=True),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_values_and_running_statistics_match_torch(module, training):
    seed = _seed()
    torch.manual_seed(seed)
    native = module().to(DT)
    with torch.no_grad():
        for p in native.parameters():
            p.uniform_(0.5, 1.5)
    exact = module().to(DT)
    exact.load_state_dict(native.state_dict())
    native.train(training)
    exact.train(training)
    x = torch.randn(6, 5, 4, dtype=DT) if not isinstance(native, nn.LayerNorm) else None
    if x is None:
        x = torch.randn(6, 4, 5, dtype=DT)
    for _ in range(3):  # several updates of the running statistics
        expected = native(x)
        with exact_higher_order():
            got = exact(x)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")
    for (name, a), (_, b) in zip(native.named_buffers(), exact.named_buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=f"{name}, seed {seed}")


def test_attention_values_match_torch_with_masks():
    gen = torch.Generator().manual_seed(_seed())
    q, k, v = (torch.randn(2, 3, 4, 5, dtype=DT, generator=gen) for _ in range(3))
    additive = torch.randn(4, 4, dtype=DT, generator=gen)
    boolean = torch.rand(4, 4, generator=gen) > 0.3
    boolean[:, 0] = True  # no fully masked row
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": additive}, {"attn_mask": boolean}):
        expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
        with exact_higher_order():
            got = F.scaled_dot_product_attention(q, k, v, **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_attention_with_dropout_is_refused():
    q = torch.randn(1, 2, 3, dtype=DT)
    with exact_higher_order(), pytest.raises(ValueError, match="dropout"):
        F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)


def test_engine_works_inside_no_grad():
    """projected_derivatives called under torch.no_grad() must not silently return zeros."""
    from optimizers import projected_derivatives

    theta = {"w": torch.tensor([1.0, -2.0], dtype=DT)}
    u = {"w": torch.tensor([1.0, 1.0], dtype=DT)}
    loss = lambda p: (p["w"] ** 3).sum()
    expected = projected_derivatives(loss, theta, [["w"]], u, order=3)
    with torch.no_grad():
        got = projected_derivatives(loss, theta, [["w"]], u, order=3)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    assert expected[0].item() == 3.0 * (1.0 + 4.0)
