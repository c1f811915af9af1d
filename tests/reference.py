"""Independent slow references and a zoo of small models for the derivative tests.

The reference shares nothing with :mod:`optimizers.derivatives` or :mod:`optimizers.exact_ops`:

* the loss is re-implemented from elementary operators (:func:`reference_loss`: matmul, conv,
  tanh, exp, erf, logsumexp, mean, rsqrt, amax), so torch's fused norm kernels, whose third
  derivatives are wrong in torch 2.13, are never differentiated;
* φ(η) = L(θ + Σ_s η_s u_s) is built explicitly (:func:`phi`) and differentiated with
  ``torch.autograd.functional`` (jacobian / hessian, nested jacobians for orders 3–4);
* every order of this reference is in turn confirmed by central finite differences of the order
  below (:func:`finite_difference_check`, used by tests/test_derivatives.py), so no
  higher-order autograd formula is trusted unchecked.

API (also meant for the benchmark helpers): :func:`fresh_seed`, :func:`reference_loss`,
:func:`phi`, :func:`reference_derivatives`, :func:`directional_derivative`,
:func:`finite_difference_check`, :func:`relative_error`, the model zoo :data:`CASES` /
:data:`CASES_BY_NAME`, :func:`setup` and :func:`partitions_for`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.functional import hessian, jacobian

from optimizers import partition

DT = torch.float64
LossFn = Callable[[dict[str, Tensor]], Tensor]

__all__ = [
    "CASES",
    "CASES_BY_NAME",
    "DT",
    "SEQUENCE_CASES",
    "SEQUENCE_CASES_BY_NAME",
    "Case",
    "CausalSelfAttention",
    "Residual",
    "TokenModel",
    "TransformerBlock",
    "directional_derivative",
    "contraction_error",
    "finite_difference_check",
    "fresh_seed",
    "partitions_for",
    "phi",
    "reference_derivatives",
    "reference_loss",
    "relative_error",
    "setup",
    "token_cross_entropy",
]


def fresh_seed() -> int:
    """A new seed every run (os.urandom), or ``HOBENCH_SEED`` to replay a failure."""
    return int(os.environ.get("HOBENCH_SEED", int.from_bytes(os.urandom(4), "little")))


def relative_error(a: Tensor, b: Tensor) -> float:
    """Normwise relative error ‖a − b‖ / ‖b‖ (absolute when b = 0)."""
    scale = b.norm().item()
    return ((a - b).norm() / (scale if scale > 0 else 1.0)).item()


# ------------------------------------------------------------ the loss from elementary operators
class Residual(nn.Module):
    """x + f(x) with f = Linear → Tanh → Linear: a residual connection."""

    def __init__(self, width: int):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.inner(x)


def split_heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """[B, T, 3d] → q, k, v of shape [B, heads, T, d/heads]."""
    batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    parts = qkv.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    return parts[0], parts[1], parts[2]


def merge_heads(y: Tensor) -> Tensor:
    """[B, heads, T, d/heads] → [B, T, d]."""
    return y.transpose(1, 2).flatten(2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = split_heads(self.qkv(x), self.heads)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then x + mlp(ln2(x)) with a GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TokenModel(nn.Module):
    """Token + position embeddings [B, T] → [B, T, d], then ``body``, a final LayerNorm (if
    ``norm``) and a linear head to ``outputs``: per token (a language model, [B, T, outputs])
    or, with ``pool``, on the flattened sequence ([B, outputs])."""

    def __init__(self, vocab, context, width, body: nn.Module, outputs, norm=True, pool=False):
        super().__init__()
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.body = body
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.pool = pool
        self.head = nn.Linear(width * context if pool else width, outputs)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.norm(self.body(self.token(tokens) + self.position(positions)))
        return self.head(x.flatten(1) if self.pool else x)


def _embedding(tokens: Tensor, weight: Tensor) -> Tensor:
    return F.one_hot(tokens, weight.shape[0]).to(weight.dtype) @ weight


def _causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ/√d + M) v with M = −∞ above the diagonal, softmax as exp(s − logsumexp s)."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    length = q.shape[-2]
    above = torch.ones(length, length, dtype=torch.bool).triu(1)
    scores = scores + torch.zeros(length, length, dtype=q.dtype).masked_fill(above, -math.inf)
    return torch.exp(scores - torch.logsumexp(scores, dim=-1, keepdim=True)) @ v


def _forward_token_model(module: nn.Module, p: dict[str, Tensor], prefix: str, x: Tensor):
    get = lambda name: p.get(prefix + name)
    if isinstance(module, TokenModel):
        positions = torch.arange(x.shape[1])
        h = _embedding(x, get("token.weight")) + _embedding(positions, get("position.weight"))
        h = _forward(
            module.norm, p, prefix + "norm.", _forward(module.body, p, prefix + "body.", h)
        )
        return _forward(module.head, p, prefix + "head.", h.flatten(1) if module.pool else h)
    if isinstance(module, TransformerBlock):
        h = x + _forward(
            module.attn, p, prefix + "attn.", _forward(module.ln1, p, prefix + "ln1.", x)
        )
        return h + _forward(
            module.mlp, p, prefix + "mlp.", _forward(module.ln2, p, prefix + "ln2.", h)
        )
    if isinstance(module, CausalSelfAttention):
        q, k, v = split_heads(_forward(module.qkv, p, prefix + "qkv.", x), module.heads)
        return _forward(module.proj, p, prefix + "proj.", merge_heads(_causal_attention(q, k, v)))
    return None


def _normalise(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    centred = x - x.mean(dims, keepdim=True)
    return centred * torch.rsqrt((centred * centred).mean(dims, keepdim=True) + eps)


def _pool(x: Tensor, size: int, reduce: Callable[..., Tensor]) -> Tensor:
    n, c, height, width = x.shape
    h, w = height // size, width // size
    x = x[:, :, : h * size, : w * size].reshape(n, c, h, size, w, size)
    return reduce(x, dim=(3, 5))


def _forward(module: nn.Module, p: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    """Output of ``module`` with parameters ``p`` (names prefixed by ``prefix``)."""
    get = lambda name: p.get(prefix + name)
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            x = _forward(child, p, f"{prefix}{name}.", x)
        return x
    if isinstance(module, Residual):
        return x + _forward(module.inner, p, prefix + "inner.", x)
    token_model = _forward_token_model(module, p, prefix, x)
    if token_model is not None:
        return token_model
    if isinstance(module, nn.Identity):
        return x
    if isinstance(module, nn.Linear):
        out = x @ get("weight").T
        return out if get("bias") is None else out + get("bias")
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, get("weight"), get("bias"), module.stride, module.padding)
    if isinstance(module, nn.Tanh):
        return torch.tanh(x)
    if isinstance(module, nn.ELU):
        return torch.where(x > 0, x, module.alpha * torch.expm1(torch.clamp(x, max=0)))
    if isinstance(module, nn.Softplus):
        return torch.logaddexp(x, torch.zeros_like(x))
    if isinstance(module, nn.GELU):
        return 0.5 * x * (1 + torch.erf(x / 2**0.5))
    if isinstance(module, nn.MaxPool2d):
        return _pool(x, module.kernel_size, torch.amax)
    if isinstance(module, nn.AvgPool2d):
        return _pool(x, module.kernel_size, torch.mean)
    if isinstance(module, nn.Flatten):
        return x.flatten(1)
    if isinstance(module, nn.LayerNorm):
        dims = tuple(range(-len(module.normalized_shape), 0))
        return _normalise(x, dims, module.eps) * get("weight") + get("bias")
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if module.training:
            out = _normalise(x, (0, *range(2, x.dim())), module.eps)
        else:
            mean = module.running_mean.reshape(shape)
            out = (x - mean) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)
        return out * get("weight").reshape(shape) + get("bias").reshape(shape)
    raise NotImplementedError(f"reference_loss has no elementary form of {type(module).__name__}")


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    picked = logits.gather(1, targets[:, None])[:, 0]
    return (torch.logsumexp(logits, dim=1) - picked).mean()


def _mean_squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    return ((outputs - targets) ** 2).mean()


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy of a language model: logits [B, T, V], targets [B, T]."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return _cross_entropy(logits.flatten(0, 1), targets.flatten())


_CRITERIA = {
    F.cross_entropy: _cross_entropy,
    F.mse_loss: _mean_squared_error,
    token_cross_entropy: _token_cross_entropy,
}


def reference_loss(model: nn.Module, criterion, inputs: tuple[Tensor, ...], targets) -> LossFn:
    """``loss_fn(params)``: the loss of ``model`` rewritten in elementary operators.

    Same mathematics as ``criterion(model(*inputs), targets)`` (BatchNorm in training mode uses
    batch statistics; running statistics are never read or written in training mode).
    ``criterion`` is ``F.cross_entropy`` or ``F.mse_loss``.
    """
    loss = _CRITERIA[criterion]
    (x,) = inputs
    return lambda params: loss(_forward(model, params, "", x), targets)


# ---------------------------------------------------------------------- derivatives of φ
def phi(loss_fn: LossFn, params, groups, direction) -> Callable[[Tensor], Tensor]:
    """η ↦ φ(η) = L(θ + Σ_s η_s u_s), η of shape [S]; built without the engine."""

    def function(eta: Tensor) -> Tensor:
        moved = dict(params)
        for s, group in enumerate(groups):
            for name in group:
                moved[name] = params[name] + eta[s] * direction[name]
        return loss_fn(moved)

    return function


def reference_derivatives(
    loss_fn: LossFn, params, groups, direction, order: int, at: Tensor | None = None
) -> list[Tensor]:
    """(D^1, …, D^order) of φ at η = ``at`` (default 0) by ``torch.autograd.functional``.

    D^1 = jacobian(φ) [S], D^2 = hessian(φ) [S, S], D^3 = jacobian(hessian) [S, S, S],
    D^4 = jacobian(jacobian(hessian)) [S]*4, each level batched over its S^k outputs by vmap
    (``vectorize=True``). Cost grows like S^order: small S only.
    """
    if not 1 <= order <= 4:
        raise ValueError(f"reference_derivatives supports orders 1..4, got {order}")
    f = phi(loss_fn, params, groups, direction)
    dtype = next(iter(params.values())).dtype
    eta = torch.zeros(len(groups), dtype=dtype) if at is None else at
    second = lambda e: hessian(f, e, create_graph=True, vectorize=True)
    third = lambda e: jacobian(second, e, create_graph=True, vectorize=True)
    out = [jacobian(f, eta, vectorize=True), hessian(f, eta, vectorize=True)]
    if order >= 3:
        out.append(jacobian(second, eta, vectorize=True))
    if order >= 4:
        out.append(jacobian(third, eta, vectorize=True))
    return [t.detach() for t in out[:order]]


def finite_difference_check(
    derivative: Callable[[Tensor], Tensor], point: Tensor, step: Tensor, h: float
) -> Tensor:
    """d/dt derivative(point + t·step) at t = 0: the 4-point central stencil (error O(h⁴)) at h
    and h/2, Richardson-extrapolated (error O(h⁶)), so that operators with large higher
    derivatives (e.g. normalisations over few elements) stay far below the tolerance."""
    at = lambda t: derivative(point + t * step)

    def stencil(k: float) -> Tensor:
        return (-at(2 * k) + 8 * at(k) - 8 * at(-k) + at(-2 * k)) / (12 * k)

    return (16 * stencil(h / 2) - stencil(h)) / 15


def contraction_error(tensor: Tensor, v: Tensor, fd: Tensor) -> float:
    """‖T·v − fd‖ / ‖|T|·|v|‖ for T·v = T contracted with v on its last index.

    Scaled by the contraction of the absolute values, not by ‖T·v‖: when the terms of T·v
    cancel (a sum of large terms of both signs that is close to 0) the error of fd is relative
    to the terms, not to their small sum.
    """
    last = tensor.dim() - 1
    contracted = torch.tensordot(tensor, v, dims=([last], [0]))
    scale = torch.tensordot(tensor.abs(), v.abs(), dims=([last], [0])).norm().item()
    return ((contracted - fd).norm() / (scale if scale > 0 else 1.0)).item()


def directional_derivative(loss_fn: LossFn, params, direction, order: int) -> Tensor:
    """L^{(order)}(θ)[u, …, u] by nested forward mode (torch.func.jvp): a third route."""

    def along(t: Tensor) -> Tensor:
        return loss_fn(
            {n: p + t * direction[n] if n in direction else p for n, p in params.items()}
        )

    f = along
    for _ in range(order):
        f = (lambda g: lambda t: torch.func.jvp(g, (t,), (torch.ones_like(t),))[1])(f)
    return f(torch.zeros((), dtype=next(iter(params.values())).dtype)).detach()


# ------------------------------------------------------------------------------ model zoo
@dataclass(frozen=True)
class Case:
    """A test case: ``build(gen) -> (model, inputs, targets)`` and the criterion."""

    name: str
    build: Callable[[torch.Generator], tuple[nn.Module, tuple[Tensor, ...], Tensor]]
    criterion: Callable[[Tensor, Tensor], Tensor]
    smooth: bool  # C^∞ everywhere: finite differences are reliable at any point


def _randomise(model: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7 + (0.5 if p.dim() == 1 else 0.0))
    return model.to(DT)


def _classify(layers: list[nn.Module], shape, classes: int, batch: int = 4):
    def build(gen: torch.Generator):
        model = _randomise(nn.Sequential(*layers), gen).train()
        x = torch.randn(batch, *shape, dtype=DT, generator=gen)
        return model, (x,), torch.randint(0, classes, (batch,), generator=gen)

    return build


def _regress(layers: list[nn.Module], shape, outputs: int, batch: int = 4):
    def build(gen: torch.Generator):
        model = _randomise(nn.Sequential(*layers), gen).train()
        x = torch.randn(batch, *shape, dtype=DT, generator=gen)
        return model, (x,), torch.randn(batch, outputs, dtype=DT, generator=gen)

    return build


# Builders create fresh modules on every call (lambdas), so cases never share state.
CASES = [
    Case(
        "tanh_mlp",
        lambda g: _classify(
            [nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)], (5,), 3
        )(g),
        F.cross_entropy,
        True,
    ),
    Case(
        "elu_mlp_mse",
        lambda g: _regress([nn.Linear(4, 6), nn.ELU(), nn.Linear(6, 2)], (4,), 2)(g),
        F.mse_loss,
        False,
    ),
    Case(
        "conv_maxpool",
        lambda g: _classify(
            [nn.Conv2d(2, 3, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)],
            (2, 6, 6),
            3,
            batch=3,
        )(g),
        F.cross_entropy,
        False,
    ),
    Case(
        "layernorm",
        lambda g: _classify(
            [nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)], (5,), 3
        )(g),
        F.cross_entropy,
        True,
    ),
    Case(
        "batchnorm1d_train",
        lambda g: _classify(
            [nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)], (5,), 3
        )(g),
        F.cross_entropy,
        True,
    ),
    Case(
        "conv_batchnorm2d_gelu_avgpool",
        lambda g: _classify(
            [
                nn.Conv2d(2, 3, 3, padding=1),
                nn.BatchNorm2d(3),
                nn.GELU(),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(27, 3),
            ],
            (2, 6, 6),
            3,
            batch=3,
        )(g),
        F.cross_entropy,
        True,
    ),
    Case(
        "residual_softplus_mse",
        lambda g: _regress([nn.Linear(3, 4), nn.Softplus(), Residual(4), nn.Linear(4, 2)], (3,), 2)(
            g
        ),
        F.mse_loss,
        True,
    ),
]
CASES_BY_NAME = {case.name: case for case in CASES}


def _sequences(make: Callable[[], nn.Module], batch, context, vocab, classes=None, features=None):
    """Builder of a sequence case: token ids [batch, context] in 0..vocab−1 (or, with
    ``features``, real inputs [batch, context, features]); targets: ``classes`` labels [batch],
    or next tokens [batch, context] when ``classes`` is None. Weights N(0, 1)/√fan_in, vectors
    (biases, norm scales) 1-D around 0.5 as in :func:`_randomise` (so no subset is flat)."""

    def build(gen: torch.Generator):
        model = make()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
        model = model.to(DT).train()
        if features is None:
            x = torch.randint(0, vocab, (batch, context), generator=gen)
        else:
            x = torch.randn(batch, context, features, dtype=DT, generator=gen)
        if classes is None:
            return model, (x,), torch.randint(0, vocab, (batch, context), generator=gen)
        return model, (x,), torch.randint(0, classes, (batch,), generator=gen)

    return build


def _lm(width: int, context: int, heads: int, vocab: int = 11) -> Callable[[], nn.Module]:
    blocks = lambda: nn.Sequential(*(TransformerBlock(width, heads) for _ in range(2)))
    return lambda: TokenModel(vocab, context, width, blocks(), vocab)


# Sequence models (embeddings, causal attention, a whole tiny transformer LM). Kept apart from
# CASES: the LM has S = 30 tensors, too many for the order-4 and per-tensor sweeps over CASES.
SEQUENCE_CASES = [
    Case(
        "embedding_tanh",
        _sequences(lambda: TokenModel(11, 5, 6, nn.Tanh(), 3, norm=False, pool=True), 4, 5, 11, 3),
        F.cross_entropy,
        True,
    ),
    Case(
        "causal_attention",
        _sequences(
            lambda: nn.Sequential(
                nn.Linear(4, 8),
                CausalSelfAttention(8, 2),
                nn.Tanh(),
                nn.Flatten(),
                nn.Linear(8 * 5, 3),
            ),  # fmt: skip
            4,
            5,
            11,
            classes=3,
            features=4,
        ),  # fmt: skip
        F.cross_entropy,
        True,
    ),
    Case("transformer_lm_d8", _sequences(_lm(8, 6, 2), 3, 6, 11), token_cross_entropy, True),
    Case("transformer_lm_d12", _sequences(_lm(12, 5, 3), 2, 5, 11), token_cross_entropy, True),
    Case("transformer_lm_d16", _sequences(_lm(16, 8, 4), 2, 8, 11), token_cross_entropy, True),
]
SEQUENCE_CASES_BY_NAME = {case.name: case for case in SEQUENCE_CASES}


def partitions_for(model: nn.Module, gen: torch.Generator) -> dict[str, list[list[str]]]:
    """Every partition kind on ``model``, including a random user mapping into ≤ 3 subsets."""
    names = partition.trainable_names(model)
    labels = torch.randint(0, 3, (len(names),), generator=gen).tolist()
    return {
        "per_tensor": partition.per_tensor(model),
        "per_module": partition.per_module(model),
        "single": partition.single(model),
        "weights_biases": partition.weights_biases(model),
        "blocks2": partition.blocks(model, 2),
        "mapping": partition.from_mapping(model, dict(zip(names, labels, strict=True))),
    }


@dataclass
class Setup:
    """A case instantiated at a seed: θ, u, the engine-side loss and the reference loss."""

    model: nn.Module
    inputs: tuple[Tensor, ...]
    targets: Tensor
    loss_fn: LossFn  # the real modules (torch kernels), via functional_call
    reference_loss_fn: LossFn  # the same loss in elementary operators
    params: dict[str, Tensor]
    direction: dict[str, Tensor]
    gen: torch.Generator


def setup(case: Case, seed: int) -> Setup:
    """Instantiate ``case`` at ``seed``; the engine-side loss is ``functional_loss``."""
    from optimizers.derivatives import functional_loss

    gen = torch.Generator().manual_seed(seed)
    model, inputs, targets = case.build(gen)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    direction = {n: torch.randn(p.shape, dtype=DT, generator=gen) for n, p in params.items()}
    return Setup(
        model,
        inputs,
        targets,
        functional_loss(model, case.criterion, inputs, targets),
        reference_loss(model, case.criterion, inputs, targets),
        params,
        direction,
        gen,
    )
