"""The paper's four models (METHOD.md §7), a generic MLP, two beyond them, and the initialisation.

| builder | architecture | activation | σ_w | S (per-tensor subsets) |
|---|---|---|---|---|
| :func:`mlp_mnist` | 784-1024-200-100-10 | tanh | 1 | 8 |
| :func:`lenet5` | conv 6@5×5, max-pool 2, conv 16@5×5, max-pool 2, fc 120-84-10 | tanh | 1 | 10 |
| :func:`vgg11_nobn` | VGG-11 convs (no BatchNorm), global average pool, fc 512→10 | ELU | √2 | 18 |
| :func:`deep_mlp` | 3072-(1024×20)-10 | ELU | √2 | 42 |

Beyond the paper (issue #12), for the embedded data:

| builder | architecture | S (per-tensor) |
|---|---|---|
| :func:`bn_resnet` | conv-BN stem (stride 2), 2 residual BN blocks, global pool, fc | 26 |
| :func:`char_transformer` | token + position embeddings, 2 pre-LN causal blocks, LN, head | 30 |

The cost studies (:mod:`bench.studies`) time these models on random inputs: :data:`STUDY_MODELS`
names each with its input shape (the deep MLP at width 256, the paper's 1024 reduced for CPU).

Initialisation (:func:`init_paper_`): every weight W of a linear or convolutional layer is drawn
as N(0, 1)·σ_w/√fan_in (fan_in = inputs of a linear layer, in_channels·k_h·k_w of a
convolution), every bias is 0. The builders initialise this way from torch's global generator,
or from ``generator`` when given. Image models take ``[N, C, H, W]``; the MLPs flatten their
input first, so they take ``[N, C, H, W]`` or ``[N, D]``. Every classifier returns logits
``[N, num_classes]``; :func:`char_transformer` maps token ids ``[B, T]`` (int64) to next-token
logits ``[B, T, V]`` (the training's cross-entropy flattens them to ``[B·T, V]``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "PAPER_SIGMA_W",
    "STUDY_MODELS",
    "BasicBlock",
    "CausalSelfAttention",
    "CharTransformer",
    "TransformerBlock",
    "bn_resnet",
    "char_transformer",
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


# --------------------------------------------------------------------------- beyond the paper
def _init_weights_(
    model: nn.Module, sigma_w: float, generator: torch.Generator | None
) -> nn.Module:
    """Initialise ``model`` in place and return it: the paper's rule for every linear/conv
    layer (:func:`init_paper_`), N(0, 1) for every embedding, γ = 1, β = 0 (PyTorch's) for the
    normalisation layers, which :func:`init_paper_` alone would reject.

    The draws come from ``generator`` (torch's global one when None) in ``model.modules()``
    order, i.e. the order the layers are defined in.
    """
    for module in model.modules():
        if isinstance(module, _INITIALISED):
            init_paper_(module, sigma_w, generator=generator)
        elif isinstance(module, nn.Embedding):
            with torch.no_grad():
                module.weight.normal_(0.0, 1.0, generator=generator)
    return model


class BasicBlock(nn.Module):
    """x → ReLU(BN(conv3×3(ReLU(BN(conv3×3(x))))) + shortcut(x)), conv biases on.

    The shortcut is the identity, or conv1×1 (stride ``stride``) → BN when the shape changes.
    Every conv keeps its bias (PyTorch's default) although a BatchNorm follows it: the loss is
    exactly constant along those biases in training mode, the case issue #12 is about.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def bn_resnet(
    in_channels: int = 1,
    *,
    num_classes: int = 10,
    widths: tuple[int, int] = (16, 32),
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A small residual CNN with BatchNorm and ReLU; input ``[N, in_channels, s, s]``.

    conv3×3 stride 2 (``widths[0]``) → BN → ReLU → BasicBlock(widths[0]) →
    BasicBlock(widths[0] → widths[1], stride 2) → global average pool → fc num_classes.
    On 1×28×28 with the default widths: feature maps 16×14×14 then 32×7×7, 19 850 parameters,
    S = 26 per-tensor subsets (every conv bias before a BN among them). Convs and the fc layer
    are initialised as the paper's (σ_w = √2 for ReLU, biases 0; from ``generator``, default
    the global one), BatchNorms as PyTorch's (γ = 1, β = 0).
    """
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths must be positive ints, got {widths!r}")
    first, second = widths
    model = nn.Sequential(
        nn.Conv2d(in_channels, first, 3, stride=2, padding=1),
        nn.BatchNorm2d(first),
        nn.ReLU(),
        BasicBlock(first, first),
        BasicBlock(first, second, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(second, num_classes),
    )
    return _init_weights_(model, PAPER_SIGMA_W["relu"], generator)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one fused q/k/v linear layer, SDPA, an output linear.

    ``[B, T, D]`` → ``[B, T, D]`` through ``F.scaled_dot_product_attention(is_causal=True)``:
    position t attends to positions ≤ t only. Plain ``nn.Linear`` layers (not
    ``nn.MultiheadAttention``'s raw parameters) so that K-FAC (ASDL) covers them.
    """

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        # [B, T, 3D] → three [B, heads, T, D/heads]
        q, k, v = (
            part.reshape(batch, length, self.heads, width // self.heads).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=-1)
        )
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then + MLP(LN(·)) with a GELU MLP D-4D-D."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """Causal character-level language model: token ids ``[B, T]`` → logits ``[B, T, V]``.

    token embedding + position embedding → ``blocks`` × :class:`TransformerBlock` → LayerNorm
    → linear head (not tied to the token embedding). ``T`` ≤ ``context``. Both embeddings are
    looked up one token per row (indices ``[B·T, 1]``, then reshaped to ``[B, T, D]``; the same
    values as a ``[B, T]`` lookup): K-FAC (ASDL) then treats every token as a sample in the
    embeddings as it does in the linear layers (their ``[B, T, D]`` inputs flattened), so an
    embedding's input factor is the diagonal of the token (position) counts.
    """

    def __init__(self, vocab_size: int, context: int, d_model: int, heads: int, blocks: int):
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*(TransformerBlock(d_model, heads) for _ in range(blocks)))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(
                f"CharTransformer takes int64 token ids [B, T], got {tokens.dtype} "
                f"{tuple(tokens.shape)}"
            )
        batch, length = tokens.shape
        if length > self.context:
            raise ValueError(f"sequence length {length} exceeds the context {self.context}")
        positions = torch.arange(length, device=tokens.device).repeat(batch)  # [B·T]
        rows = self.token(tokens.reshape(-1, 1)) + self.position(positions.reshape(-1, 1))
        hidden = rows.reshape(batch, length, -1)  # [B·T, 1, D] → [B, T, D]
        return self.head(self.ln(self.blocks(hidden)))


def char_transformer(
    vocab_size: int,
    *,
    context: int = 64,
    d_model: int = 64,
    heads: int = 4,
    blocks: int = 2,
    generator: torch.Generator | None = None,
) -> CharTransformer:
    """:class:`CharTransformer`; with the defaults and V = 103: 117 479 parameters, S = 30.

    Linear layers initialised as the paper's with σ_w = 1 (W ~ N(0, 1/fan_in), biases 0);
    embeddings N(0, 1) and LayerNorms (1, 0); drawn from ``generator`` (default: the global one).
    """
    sizes = {"vocab_size": vocab_size, "context": context, "d_model": d_model,
             "heads": heads, "blocks": blocks}  # fmt: skip
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"char_transformer: {key} must be a positive int, got {value!r}")
    model = CharTransformer(vocab_size, context, d_model, heads, blocks)
    return _init_weights_(model, 1.0, generator)


STUDY_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    # name: (builder, the shape of one input)
    "mnist_mlp": (mlp_mnist, (784,)),
    "cifar10_lenet5": (lenet5, (3, 32, 32)),
    "cifar10_deepmlp_w256": (functools.partial(deep_mlp, 256), (3072,)),
}
