"""bench.models: per-layer parameter counts of the paper's four models and of the BN-ResNet and the
character transformer (computed by hand here), the transformer's causality,
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


# --------------------------------------------------------------------------- beyond the paper
def bn(channels: int) -> list[int]:
    return [channels, channels]


def block(in_channels: int, out_channels: int) -> list[int]:
    """A BasicBlock's tensors: conv, BN, conv, BN[, shortcut conv1×1, BN]."""
    sizes = conv(out_channels, in_channels, 3) + bn(out_channels)
    sizes += conv(out_channels, out_channels, 3) + bn(out_channels)
    if in_channels != out_channels:
        sizes += conv(out_channels, in_channels, 1) + bn(out_channels)
    return sizes


def transformer_sizes(vocab: int, context: int, width: int, blocks: int) -> list[int]:
    one = bn(width) + linear(width, 3 * width) + linear(width, width) + bn(width)  # LNs as BNs
    one += linear(width, 4 * width) + linear(4 * width, width)
    return [vocab * width, context * width] + one * blocks + bn(width) + linear(width, vocab)


def test_bn_resnet_layout_counts_and_conv_biases(single_thread):
    model = models.bn_resnet(1)
    sizes = conv(16, 1, 3) + bn(16) + block(16, 16) + block(16, 32) + linear(32, 10)
    assert [p.numel() for p in model.parameters()] == sizes and sum(sizes) == 19_850
    assert len(per_tensor(model)) == 26 == len(sizes)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and all(c.bias is not None for c in convs)  # PyTorch's default: on
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6 and all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in norms)
    assert all(torch.count_nonzero(n.bias) == 0 for n in norms)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    other = models.bn_resnet(3, num_classes=4, widths=(4, 8))
    assert other(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="widths"):
        models.bn_resnet(1, widths=(16, 0))


def test_bn_resnet_initialisation_is_the_papers_for_convs_and_fc():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        model = models.bn_resnet(1, widths=(64, 128))  # wide enough for the statistics
    weight_checks(model[4].conv2.weight, math.sqrt(2), f"HOBENCH_SEED={BUILD_SEED}")
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert torch.count_nonzero(module.bias) == 0


def test_the_residual_sum_is_used(single_thread, seed):
    """With the second block's residual branch silenced (bn2's γ = β = 0), its output is
    ReLU(shortcut(x)): the skip path really is added."""
    torch.manual_seed(seed)
    model = models.bn_resnet(1).double()
    block2 = model[4]
    with torch.no_grad():
        block2.bn2.weight.zero_()
    x = torch.randn(4, 16, 14, 14, dtype=torch.float64)
    torch.testing.assert_close(block2(x), torch.relu(block2.shortcut(x)), rtol=0, atol=0)
    block1 = model[3]
    with torch.no_grad():
        block1.bn2.weight.zero_()
    torch.testing.assert_close(block1(x), torch.relu(x), rtol=0, atol=0)  # identity shortcut


def test_char_transformer_layout_counts_and_shapes(single_thread, seed):
    torch.manual_seed(seed)
    model = models.char_transformer(103)
    sizes = transformer_sizes(103, 64, 64, 2)
    assert [p.numel() for p in model.parameters()] == sizes and sum(sizes) == 117_479
    assert len(per_tensor(model)) == 30
    tokens = torch.randint(0, 103, (3, 64))
    assert model(tokens).shape == (3, 64, 103)
    assert model(tokens[:, :10]).shape == (3, 10, 103)  # shorter than the context
    small = models.char_transformer(11, context=8, d_model=16, heads=2, blocks=1)
    assert [p.numel() for p in small.parameters()] == transformer_sizes(11, 8, 16, 1)
    with pytest.raises(ValueError, match="exceeds the context 8"):
        small(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="int64 token ids"):
        small(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="not a multiple of heads"):
        models.char_transformer(11, d_model=10, heads=3)
    with pytest.raises(ValueError, match="blocks"):
        models.char_transformer(11, blocks=0)


def test_char_transformer_uses_sdpa_pre_layernorm_and_a_gelu_mlp(monkeypatch, single_thread):
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("is_causal"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = models.char_transformer(7, context=5, d_model=8, heads=2, blocks=2)
    model(torch.zeros(2, 5, dtype=torch.long))
    assert calls == [True, True]
    block = model.blocks[0]
    assert isinstance(block.ln1, nn.LayerNorm) and isinstance(block.mlp[1], nn.GELU)


def test_char_transformer_is_causal(single_thread, seed):
    """Changing token t leaves the logits at positions < t exactly as they were, and changes
    those at t and after; in float64, for several positions t."""
    generator = torch.Generator().manual_seed(seed)
    model = models.char_transformer(13, context=12, d_model=16, heads=4, generator=generator)
    model = model.double()
    tokens = torch.randint(0, 13, (2, 12), generator=generator)
    with torch.no_grad():
        before = model(tokens)
        for t in (0, 5, 11):
            changed = tokens.clone()
            changed[:, t] = (changed[:, t] + 1 + t) % 13
            after = model(changed)
            torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-13)
            assert (after[:, t:] - before[:, t:]).abs().amax(dim=-1).min() > 1e-6


def test_causal_attention_jacobian_is_lower_triangular(single_thread, seed):
    """∂out_t/∂x_s = 0 for s > t and ≠ 0 for s ≤ t (autograd, float64)."""
    torch.manual_seed(seed)
    attention = models.CausalSelfAttention(6, 2).double()
    x = torch.randn(1, 5, 6, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(attention, x)[0, :, :, 0]  # [T, D, T, D]
    norms = jacobian.abs().sum(dim=(1, 3))  # [t, s]
    assert torch.equal(norms.triu(1), torch.zeros_like(norms))
    assert (norms.diagonal() > 0).all() and (norms.tril() > 0).sum() == 15


def test_new_builders_with_a_generator_ignore_the_global_rng(seed):
    def both(build):
        torch.manual_seed(seed + 1)
        first = build(generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed + 2)
        second = build(generator=torch.Generator().manual_seed(seed))
        return first, second

    for build in (
        models.bn_resnet,
        lambda **kw: models.char_transformer(9, context=6, d_model=8, **kw),
    ):
        first, second = both(build)
        for a, b in zip(first.parameters(), second.parameters(), strict=True):
            assert torch.equal(a, b)
