"""The paper's four models (METHOD.md §7), a generic MLP, and the paper's initialisation.

| builder | architecture | activation | σ_w | S (per-tensor subsets) |
|---|---|---|---|---|
| :func:`mlp_mnist` | 784-1024-200-100-10 | tanh | 1 | 8 |
| :func:`lenet5` | conv 6@5×5, max-pool 2, conv 16@5×5, max-pool 2, fc 120-84-10 | tanh | 1 | 10 |
| :func:`vgg11_nobn` | VGG-11 convs (no BatchNorm), global average pool, fc 512→10 | ELU | √2 | 18 |
| :func:`deep_mlp` | 3072-(1024×20)-10 | ELU | √2 | 42 |

The cost studies (:mod:`bench.studies`) time these models on random inputs: :data:`STUDY_MODELS`
names each with its input shape (the deep MLP at width 256, the paper's 1024 reduced for CPU).

Initialisation (:func:`init_paper_`): every weight W of a linear or convolutional layer is drawn
as N(0, 1)·σ_w/√fan_in (fan_in = inputs of a linear layer, in_channels·k_h·k_w of a
convolution), every bias is 0. The builders initialise this way from torch's global generator,
or from ``generator`` when given. Image models take ``[N, C, H, W]``; the MLPs flatten their
input first, so they take ``[N, C, H, W]`` or ``[N, D]``. Every model returns logits ``[N, 10]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "PAPER_SIGMA_W",
    "STUDY_MODELS",
    "deep_mlp",
    "init_paper_",
    "lenet5",
    "mlp",
    "mlp_mnist",
    "vgg11_nobn",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "elu": nn.ELU, "relu": nn.ReLU}
PAPER_SIGMA_W = {"tanh": 1.0, "elu": math.sqrt(2.0), "relu": math.sqrt(2.0)}
VGG11_CHANNELS = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool")
_INITIALISED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def init_paper_(
    model: nn.Module, sigma_w: float, *, generator: torch.Generator | None = None
) -> nn.Module:
    """Initialise ``model`` in place: W ~ N(0, 1)·σ_w/√fan_in, b = 0; return it.

    Covers ``nn.Linear`` and ``nn.Conv{1,2,3}d``; any other module holding parameters of its
    own raises ValueError (its initialisation would be undefined).
    """
    if not sigma_w > 0:
        raise ValueError(f"sigma_w must be positive, got {sigma_w!r}")
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if not isinstance(module, _INITIALISED):
            kind = type(module).__name__
            raise ValueError(f"init_paper_: module {name!r} ({kind}) is not linear or conv")
        weight = module.weight
        fan_in = weight[0].numel()  # in_features, or in_channels·kernel size
        with torch.no_grad():
            weight.normal_(0.0, sigma_w / math.sqrt(fan_in), generator=generator)
            if module.bias is not None:
                module.bias.zero_()
    return model


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def mlp(
    input_dim: int,
    hidden: tuple[int, ...],
    num_classes: int,
    activation: str = "tanh",
    *,
    sigma_w: float | None = None,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """Flatten → input_dim-hidden[0]-…-hidden[-1]-num_classes, ``activation`` between layers.

    ``sigma_w`` defaults to the paper's for the activation (1 for tanh, √2 for ELU/ReLU).
    S = 2·(len(hidden) + 1) per-tensor subsets.
    """
    widths = (input_dim, *hidden, num_classes)
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"layer widths must be positive ints, got {widths}")
    act = _activation(activation)
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(widths) - 2:
            layers.append(act())
    sigma_w = PAPER_SIGMA_W[activation] if sigma_w is None else sigma_w
    return init_paper_(nn.Sequential(*layers), sigma_w, generator=generator)


def mlp_mnist(*, generator: torch.Generator | None = None) -> nn.Sequential:
    """The paper's MNIST MLP 784-1024-200-100-10, tanh, σ_w = 1 (S = 8)."""
    return mlp(784, (1024, 200, 100), 10, "tanh", generator=generator)


def deep_mlp(
    width: int = 1024,
    depth: int = 20,
    *,
    input_dim: int = 3072,
    num_classes: int = 10,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """The paper's deep CIFAR-10 MLP 3072-(width×depth)-10, ELU, σ_w = √2 (S = 2·(depth+1) = 42)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    return mlp(input_dim, (width,) * depth, num_classes, "elu", generator=generator)


def lenet5(
    in_channels: int = 3,
    *,
    input_size: int = 32,
    num_classes: int = 10,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """LeNet-5, tanh, max-pool, σ_w = 1 (S = 10); input ``[N, in_channels, s, s]``.

    conv 6@5×5 → tanh → pool 2 → conv 16@5×5 → tanh → pool 2 → fc 16·5·5→120 → tanh → fc 84 →
    tanh → fc num_classes. An input smaller than 32 (MNIST's 28) is zero-padded by the first
    convolution to 32, as in the original LeNet-5, so the feature map is 16×5×5 for s ≤ 32.
    """
    if input_size < 1 or (input_size < 32 and (32 - input_size) % 2):
        raise ValueError(f"input_size must be ≥ 32 or 32 − 2p, got {input_size}")
    padding = max(0, (32 - input_size) // 2)
    side = ((input_size + 2 * padding - 4) // 2 - 4) // 2  # after conv, pool, conv, pool
    model = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=padding),  # [N, 6, s+2p-4, ...]
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.Tanh(),
        nn.MaxPool2d(2),  # [N, 16, side, side]
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.Tanh(),
        nn.Linear(120, 84),
        nn.Tanh(),
        nn.Linear(84, num_classes),
    )
    return init_paper_(model, PAPER_SIGMA_W["tanh"], generator=generator)


def vgg11_nobn(
    in_channels: int = 3, *, num_classes: int = 10, generator: torch.Generator | None = None
) -> nn.Sequential:
    """VGG-11 without BatchNorm, ELU, σ_w = √2 (S = 18); input ``[N, in_channels, 32, 32]``.

    Eight 3×3 convolutions (padding 1) with channels 64, M, 128, M, 256, 256, M, 512, 512, M,
    512, 512, M (M = max-pool 2), each followed by ELU; then global average pooling to
    ``[N, 512]`` and one linear layer 512 → num_classes.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG11_CHANNELS:
        if item == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ELU()]
            channels = item
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return init_paper_(nn.Sequential(*layers), PAPER_SIGMA_W["elu"], generator=generator)


STUDY_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    # name: (builder, the shape of one input)
    "mnist_mlp": (mlp_mnist, (784,)),
    "cifar10_lenet5": (lenet5, (3, 32, 32)),
    "cifar10_deepmlp_w256": (functools.partial(deep_mlp, 256), (3072,)),
}
