"""bench.models: per-layer parameter counts of the paper's four models (computed by hand here),
their number S of per-tensor subsets, output shapes, and the paper's initialisation statistics
W ~ N(0, 1)·σ_w/√fan_in, b = 0."""

from __future__ import annotations

import math

import pytest
import torch
from reference import fresh_seed
from torch import nn

from bench import models
from optimizers.partition import per_tensor


def conv(out_channels: int, in_channels: int, kernel: int) -> list[int]:
    return [out_channels * in_channels * kernel * kernel, out_channels]


def linear(fan_in: int, fan_out: int) -> list[int]:
    return [fan_in * fan_out, fan_out]


PAPER = {
    # name: (builder, input [C, H, W], per-tensor sizes in named_parameters() order, S)
    "mlp_mnist": (
        models.mlp_mnist,
        (1, 28, 28),
        linear(784, 1024) + linear(1024, 200) + linear(200, 100) + linear(100, 10),
        8,
    ),
    "lenet5": (
        models.lenet5,
        (3, 32, 32),
        conv(6, 3, 5) + conv(16, 6, 5) + linear(16 * 5 * 5, 120) + linear(120, 84) + linear(84, 10),
        10,
    ),  # fmt: skip
    "vgg11_nobn": (
        models.vgg11_nobn,
        (3, 32, 32),
        conv(64, 3, 3)
        + conv(128, 64, 3)
        + conv(256, 128, 3)
        + conv(256, 256, 3)
        + conv(512, 256, 3)
        + conv(512, 512, 3)
        + conv(512, 512, 3)
        + conv(512, 512, 3)
        + linear(512, 10),
        18,
    ),  # fmt: skip
    "deep_mlp": (
        models.deep_mlp,
        (3, 32, 32),
        linear(3072, 1024) + linear(1024, 1024) * 19 + linear(1024, 10),
        42,
    ),
}


BUILD_SEED = fresh_seed()  # replay with HOBENCH_SEED=<seed>


@pytest.fixture(scope="module")
def built() -> dict[str, nn.Module]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        return {name: entry[0]() for name, entry in PAPER.items()}


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_model_parameter_counts_and_subsets(built, name):
    _, _, sizes, subsets = PAPER[name]
    model = built[name]
    assert [p.numel() for p in model.parameters()] == sizes
    assert len(per_tensor(model)) == subsets == len(sizes)


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_model_output_shape(built, name, single_thread):
    _, input_shape, _, _ = PAPER[name]
    with torch.no_grad():
        logits = built[name](torch.randn(2, *input_shape))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_lenet5_on_28x28_is_padded_to_the_32x32_architecture(single_thread):
    model = models.lenet5(1, input_size=28)
    sizes = [p.numel() for p in model.parameters()]
    assert sizes == conv(6, 1, 5) + conv(16, 6, 5) + linear(400, 120) + linear(120, 84) + linear(
        84, 10
    )
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="input_size"):
        models.lenet5(1, input_size=27)


def weight_checks(weight: torch.Tensor, sigma_w: float, context: str = "") -> None:
    """Empirical std within 2 % of σ_w/√fan_in, mean ≈ 0, and Gaussian mass within ±1 std."""
    target = sigma_w / math.sqrt(weight[0].numel())
    values = weight.detach().double().flatten()
    n = values.numel()
    assert abs(values.std().item() / target - 1) < 0.02, (values.std().item(), target, context)
    assert abs(values.mean().item()) < 5 * target / math.sqrt(n), context
    inside = (values.abs() < target).double().mean().item()  # 0.6827 for a normal, 0.577 uniform
    assert abs(inside - math.erf(1 / math.sqrt(2))) < 5 * math.sqrt(0.25 / n), context


@pytest.mark.parametrize(
    ("name", "index", "sigma_w"),
    [
        ("mlp_mnist", 0, 1.0),  # 784 × 1024
        ("lenet5", 4, 1.0),  # fc 400 × 120
        ("vgg11_nobn", 14, math.sqrt(2)),  # conv 512 × 512 × 3 × 3
        ("deep_mlp", 10, math.sqrt(2)),  # 1024 × 1024
    ],
)
def test_paper_initialisation_statistics(built, name, index, sigma_w):
    parameters = list(built[name].parameters())
    weight = parameters[index]
    assert weight.dim() >= 2
    weight_checks(weight, sigma_w, f"built with HOBENCH_SEED={BUILD_SEED}")
    for parameter in parameters[1::2]:
        assert parameter.dim() == 1 and torch.count_nonzero(parameter) == 0  # biases exactly 0


def test_init_paper_with_a_generator_is_reproducible(seed):
    first = models.mlp(50, (40,), 3, "elu", generator=torch.Generator().manual_seed(seed))
    second = models.mlp(50, (40,), 3, "elu", generator=torch.Generator().manual_seed(seed))
    other = models.mlp(50, (40,), 3, "elu", generator=torch.Generator().manual_seed(seed + 1))
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
        assert a.dim() == 1 or not torch.equal(a, c)


def test_generic_mlp_layout_and_default_sigma(seed):
    generator = torch.Generator().manual_seed(seed)
    model = models.mlp(300, (400, 20), 7, "tanh", generator=generator)
    assert [p.numel() for p in model.parameters()] == linear(300, 400) + linear(400, 20) + linear(
        20, 7
    )
    assert [type(m) for m in model] == [
        nn.Flatten,
        nn.Linear,
        nn.Tanh,
        nn.Linear,
        nn.Tanh,
        nn.Linear,
    ]
    weight_checks(model[1].weight, 1.0)
    elu = models.mlp(300, (400,), 7, "elu", generator=generator)
    weight_checks(elu[1].weight, math.sqrt(2))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="activation 'sigmoid'"):
        models.mlp(4, (3,), 2, "sigmoid")
    with pytest.raises(ValueError, match="widths"):
        models.mlp(4, (0,), 2)
    with pytest.raises(ValueError, match="sigma_w"):
        models.init_paper_(nn.Linear(2, 2), 0.0)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        models.init_paper_(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), 1.0)
    with pytest.raises(ValueError, match="depth"):
        models.deep_mlp(depth=0)


@pytest.mark.parametrize("name", list(models.STUDY_MODELS))
def test_study_models_take_their_input_shape(name, single_thread):
    build, shape = models.STUDY_MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        model = build()
    expected = {"mnist_mlp": 8, "cifar10_lenet5": 10, "cifar10_deepmlp_w256": 42}[name]
    assert len(per_tensor(model)) == expected
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 10)
