"""The reparameterized twin (METHOD.md §6) on every kind of layer of the default grid, float64.

Models: LeNet-5 (Conv2d, Linear), the BatchNorm ResNet (BatchNorm2d in training mode, conv biases
before it, residual sums), the char transformer (Embedding, LayerNorm, causal SDPA attention,
GELU) and a module holding bare ``nn.Parameter``s whose parent also reads a child's weight. For
each, with random maps a_s ∈ [1/10, 10], b ~ N(0, 0.1²) and fresh random inputs: the twin is the
same function with the chain-rule gradient ∇_θ̃ = a ∇_θ; the projected derivatives obey the §6
laws; ``partitioned_newton`` trained on the twin follows the model to rounding while SGD drifts;
K-FAC (ASDL) sees the same layers and the same curvature factors in the twin.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import models
from bench.problems import Problem
from bench.studies.invariance import (
    deviation,
    draw_maps,
    map_groups,
    mapped_parameters,
    reparameterize,
    scaling_laws,
    study,
)
from bench.training.runs import LOSSES

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: threads only cost
DT = torch.float64
VOCAB, CONTEXT = 7, 6


class BareParameters(nn.Module):
    """Bare parameters (a position table, a gain) and a child layer whose weight the parent
    reads directly as well: x [N, 4, 3] → logits [N, 5]."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(4, 3))
        self.gain = nn.Parameter(torch.rand(3) + 0.5)
        self.head = nn.Linear(3, 5)

    def forward(self, x):
        hidden = torch.tanh(x + self.pos) * self.gain  # [N, 4, 3]
        return self.head(hidden).mean(1) + F.linear(hidden.mean(1), self.head.weight)


CASES = {
    # name: (builder, inputs(batch, generator), labels(batch, generator), partition)
    "lenet5": (
        lambda: models.lenet5(1, input_size=28),
        lambda n, gen: torch.randn(n, 1, 28, 28, generator=gen, dtype=DT),
        lambda n, gen: torch.randint(0, 10, (n,), generator=gen),
        None,
    ),
    "bn_resnet": (
        lambda: models.bn_resnet(1, widths=(4, 8)),
        lambda n, gen: torch.randn(n, 1, 8, 8, generator=gen, dtype=DT),
        lambda n, gen: torch.randint(0, 10, (n,), generator=gen),
        None,
    ),
    "char_transformer": (
        lambda: models.char_transformer(VOCAB, context=CONTEXT, d_model=8, heads=2, blocks=2),
        lambda n, gen: torch.randint(0, VOCAB, (n, CONTEXT), generator=gen),
        lambda n, gen: torch.randint(0, VOCAB, (n, CONTEXT), generator=gen),
        "per_module",  # the problem's partition (bench.problems)
    ),
    "bare_parameters": (
        BareParameters,
        lambda n, gen: torch.randn(n, 4, 3, generator=gen, dtype=DT),
        lambda n, gen: torch.randint(0, 5, (n,), generator=gen),
        None,
    ),
}
CRITERION = LOSSES["cross_entropy"]  # flattens a language model's [B, T, V] logits


def _build(case: str, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CASES[case][0]().to(DT)


def _pair(case: str, seed: int, partition: str | None = None):
    model, twin = _build(case, seed), _build(case, seed)
    groups = map_groups(model, partition)
    scales, shifts = draw_maps(model, seed + 1, 10.0, 0.1, groups)
    reparameterize(twin, scales, shifts)
    return model, twin, scales, groups


def _batch(case: str, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return CASES[case][1](n, gen), CASES[case][2](n, gen)


@pytest.mark.parametrize("case", list(CASES))
def test_twin_is_the_same_function_with_the_chain_rule_gradient(case, seed):
    model, twin, scales, _ = _pair(case, seed % 10_000)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert [type(m) for m in twin.modules()] == [type(m) for m in model.modules()]
    x, y = _batch(case, 3, seed)
    out, out_twin = model(x), twin(x)
    scale = out.abs().max().item()
    torch.testing.assert_close(out_twin, out, rtol=1e-12, atol=1e-12 * scale)
    CRITERION(out, y).backward()
    CRITERION(out_twin, y).backward()
    tilde = dict(twin.named_parameters())
    # a flat tensor's gradient (a conv bias before a BatchNorm) is rounding noise: absolute
    # tolerance from the largest gradient of the model
    size = max((scales[n] * p.grad).abs().max().item() for n, p in model.named_parameters())
    for name, p in model.named_parameters():  # ∂L/∂θ̃ = a ∂L/∂θ
        expected = scales[name] * p.grad
        torch.testing.assert_close(tilde[name].grad, expected, rtol=1e-10, atol=1e-13 * size)
        torch.testing.assert_close(
            mapped_parameters(twin)[name], p.detach(), rtol=1e-12, atol=1e-13
        )
    assert deviation(model, twin) < 1e-14
    assert any(abs(a - 1) > 0.5 for a in scales.values())


@pytest.mark.parametrize("case", list(CASES))
def test_projected_derivatives_obey_the_scaling_laws(case, seed):
    """ḡ̃ = a²ḡ, H̄̃ = a_s²a_t²H̄, d̃ = a²d, η̃ = η/a² with u = the gradient, over the partition
    the maps are constant on; the flat subsets (conv biases before a BatchNorm) are the same."""
    partition = CASES[case][3]
    model, twin, scales, groups = _pair(case, seed % 10_000, partition)
    batch = _batch(case, 4, seed)
    laws = scaling_laws(model, twin, scales, batch, criterion=CRITERION, groups=groups)
    for law in ("g", "H", "d"):
        assert laws[law] < 1e-12, (law, laws, seed)
    assert laws["eta"] is not None and laws["eta"] < 1e-9, (laws, seed)
    assert laws["flat"] == laws["flat_twin"], (laws, seed)
    if case == "bn_resnet":  # every conv bias sits before a BatchNorm
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        assert laws["flat"] == [f"{n}.bias" for n in convs]
    else:
        assert laws["flat"] == []


def _problem(case: str) -> Problem:
    """A throw-away Problem (never registered) around the case's builder."""
    metric = "perplexity" if case == "char_transformer" else "accuracy"
    dataset = "pytopics" if case == "char_transformer" else "digits"  # metadata only here
    return Problem(f"test_{case}", dataset, CASES[case][0], 1, metric=metric)


# Rounding level of ours' deviation after six steps, measured over 30 run seeds per case. On the
# BN-ResNet it is heavy-tailed: 1e-15 to 5e-12 but 2.6e-10 at seed 219 (its loss 9.1e-11),
# rounding amplified by the steps; SGD's deviation was never below 0.95 there, 9 orders above.
# LeNet-5 at most 3.2e-13, the transformer 8.6e-13 (SGD at least 1.1 and 0.36).
ROUNDING = {case: 1e-11 for case in CASES} | {"bn_resnet": 1e-8}


@pytest.mark.parametrize("case", list(CASES))
def test_partitioned_newton_follows_on_the_twin_and_sgd_drifts(case, seed):
    """Six steps, three curvature estimates (update every 2), the stage's criterion; two seeds
    (model, maps and data)."""
    partition = CASES[case][3]
    hp = {"update_every": 2, "warmup": 1, "average": 2}
    if partition is not None:
        hp["partition"] = partition
    for run_seed in (seed % 1000, seed % 1000 + 1):
        x, y = _batch(case, 32, run_seed)
        splits = types.SimpleNamespace(x_train=x.numpy(), y_train=y.numpy().astype(np.int64))
        result = study(
            _problem(case), splits, {"partitioned_newton": hp, "sgd": {"lr": 0.1}},
            steps=6, batch_size=4, seed=run_seed, dtype=DT, scale_range=10.0, shift_std=0.1,
            min_movement=1e-3, partition=partition,
        )  # fmt: skip
        deviations = result["max_relative_deviation"]
        assert result["moved"]["partitioned_newton"] > 1e-3, (result["moved"], run_seed)
        assert deviations["partitioned_newton"] < ROUNDING[case], (deviations, run_seed)
        assert result["max_loss_deviation"]["partitioned_newton"] < ROUNDING[case], run_seed
        assert deviations["sgd"] > 1e-4, (result["moved"], run_seed)
        assert result["map_partition"] == (partition or "per_tensor")


@pytest.mark.parametrize("case", ["bn_resnet", "bare_parameters"])
def test_kfac_sees_the_same_layers_and_kronecker_factors_in_the_twin(case, seed):
    """ASDL's Kronecker factors of a Linear/Conv2d layer are functions of the layer's inputs and
    output gradients, the same in the twin (the twin differs by the gradient it preconditions,
    a ∇_θ L). Its unit-wise BatchNorm factors restore the normalised input as (out − β)/γ in
    a backward hook, outside any forward, where γ, β read as θ̃: those differ."""
    from optimizers.registry import make

    model, twin, _, _ = _pair(case, seed % 10_000)
    batch = _batch(case, 4, seed)
    states = []
    for net in (model, twin):
        torch.manual_seed(seed % 1000)
        optimizer = make("kfac", net, {}, criterion=CRITERION)
        optimizer.step(batch)
        states.append(optimizer.state_dict()["curvature"])
    assert set(states[1]) == set(states[0])  # the same layers, BatchNorms included
    if case == "bn_resnet":
        assert "1/unit.data" in states[0]
    kron = [key for key in states[0] if "/kron." in key]
    assert {"head/kron.A", "head/kron.B"} <= set(kron) or case == "bn_resnet", sorted(kron)
    assert len(kron) >= 4
    for key in kron:
        value = states[0][key]
        torch.testing.assert_close(states[1][key], value, rtol=1e-9, atol=1e-12 * value.abs().max())


def test_draw_maps_is_constant_on_each_subset_and_per_tensor_by_default(seed):
    model = _build("char_transformer", seed % 10_000)
    groups = map_groups(model, "per_module")
    scales, shifts = draw_maps(model, seed, 10.0, 0.1, groups)
    for group in groups:
        assert len({scales[name] for name in group}) == 1, group
    assert len(set(scales.values())) == len(groups)
    tensor_scales, tensor_shifts = draw_maps(model, seed, 10.0, 0.1)
    again, _ = draw_maps(model, seed, 10.0, 0.1, map_groups(model, None))
    assert again == tensor_scales  # the per-tensor draws, in named_parameters order
    for name, shift in shifts.items():
        torch.testing.assert_close(tensor_shifts[name], shift, rtol=0, atol=0)


def test_tied_and_unmapped_parameters_are_refused():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)).to(DT)
    model[1].weight = model[0].weight  # tied
    scales, shifts = draw_maps(model, 0, 10.0, 0.1)
    with pytest.raises(ValueError, match="tied"):
        reparameterize(model, scales, shifts)
    model = nn.Sequential(nn.Linear(3, 5)).to(DT)
    scales, shifts = draw_maps(model, 0, 10.0, 0.1)
    del scales["0.bias"]
    with pytest.raises(ValueError, match="0.bias"):
        reparameterize(model, scales, shifts)


def test_a_twin_is_not_reparameterized_twice():
    model = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5)).to(DT)
    scales, shifts = draw_maps(model, 0, 10.0, 0.1)
    reparameterize(model, scales, shifts)
    with pytest.raises(ValueError, match="already a twin"):
        reparameterize(model, scales, shifts)
