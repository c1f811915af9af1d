"""Operators whose torch higher derivatives are wrong or missing, rewritten in elementary ops.

In torch 2.13 the *third* derivatives of ``layer_norm``, ``batch_norm`` with batch statistics
and ``instance_norm`` are wrong (off by 15–100 % against central finite differences of the
second derivative: their double-backward formulas are not differentiated correctly), and the
CPU kernel of ``scaled_dot_product_attention`` has no double backward at all. Inside
:class:`exact_higher_order`, calls to these functions are replaced by the same mathematics
written with elementary operators (mean, subtraction, ``rsqrt``, ``softmax``, matmul) whose
derivatives of every order are exact. Forward values agree with the fused kernels to
rounding; running statistics are updated exactly as torch does.

The projected-derivative engine evaluates the loss inside this mode. Operators that are
verified exact to order 3 against finite differences (tests/test_derivatives.py and the
operator sweep in tests/test_exact_ops.py) are left alone: linear, conv, pooling,
tanh/ELU/GELU/SiLU/softplus and other pointwise activations, softmax/log-softmax,
cross-entropy, MSE, group_norm, rms_norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["exact_higher_order"]


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    dims = tuple(range(-len(normalized_shape), 0))
    centred = input - input.mean(dims, keepdim=True)
    variance = (centred * centred).mean(dims, keepdim=True)
    out = centred * torch.rsqrt(variance + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _channel_shape(input: Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (input.dim() - 2)


def _affine(out: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    if weight is not None:
        out = out * weight.reshape(_channel_shape(out))
    if bias is not None:
        out = out + bias.reshape(_channel_shape(out))
    return out


def _batch_norm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
):
    if not training and running_mean is not None and running_var is not None:
        # eval mode: an affine map of the input, exact as written
        shape = _channel_shape(input)
        out = (input - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
        return _affine(out, weight, bias)
    dims = [0] + list(range(2, input.dim()))
    count = input.numel() // input.size(1)
    if training and count <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {input.size()}"
        )
    mean = input.mean(dims, keepdim=True)
    centred = input - mean
    variance = (centred * centred).mean(dims, keepdim=True)
    if training and running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean.detach().reshape(-1))
            unbiased = variance.detach().reshape(-1) * (count / (count - 1))
            running_var.mul_(1 - momentum).add_(momentum * unbiased)
    return _affine(centred * torch.rsqrt(variance + eps), weight, bias)


def _instance_norm(
    input,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    if not use_input_stats:
        return _batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    dims = tuple(range(2, input.dim()))
    mean = input.mean(dims, keepdim=True)
    centred = input - mean
    variance = (centred * centred).mean(dims, keepdim=True)
    if running_mean is not None and running_var is not None:
        count = math.prod(input.shape[2:])
        with torch.no_grad():
            batch_mean = mean.detach().reshape(input.size(0), -1).mean(0)
            unbiased = variance.detach().reshape(input.size(0), -1) * (count / max(count - 1, 1))
            running_mean.mul_(1 - momentum).add_(momentum * batch_mean)
            running_var.mul_(1 - momentum).add_(momentum * unbiased.mean(0))
    return _affine(centred * torch.rsqrt(variance + eps), weight, bias)


def _scaled_dot_product_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
):
    if dropout_p != 0.0:
        raise ValueError(
            "scaled_dot_product_attention with dropout_p > 0 makes the loss random; "
            "evaluate curvature with the model in eval mode (dropout off)"
        )
    if enable_gqa:
        repeat = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = query @ key.transpose(-2, -1) * scale
    length, source = query.size(-2), key.size(-2)
    if is_causal:
        keep = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.softmax(scores, dim=-1) @ value


_REPLACEMENTS = {
    F.layer_norm: _layer_norm,
    F.batch_norm: _batch_norm,
    F.instance_norm: _instance_norm,
    F.scaled_dot_product_attention: _scaled_dot_product_attention,
}


class exact_higher_order(TorchFunctionMode):
    """Context manager: inside it, the operators listed in this module use exact decompositions.

    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> with exact_higher_order():
    ...     y = F.layer_norm(x, (3,))
    >>> torch.allclose(y, F.layer_norm(x, (3,)))
    True
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        replacement = _REPLACEMENTS.get(func)
        if replacement is not None:
            return replacement(*args, **kwargs)
        return func(*args, **kwargs)
