"""Partitions of a model's parameters into S subsets T_1..T_S (METHOD.md §1).

Every function returns ``list[list[str]]``: one list of parameter names per subset, in the
order of ``model.named_parameters()``, skipping frozen parameters (``requires_grad=False``).
The result is validated by :func:`validate_groups`: no empty subset, no name twice, every
name a trainable parameter.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> per_tensor(net)
    [['0.weight'], ['0.bias'], ['2.weight'], ['2.bias']]
    >>> per_module(net)
    [['0.weight', '0.bias'], ['2.weight', '2.bias']]
    >>> weights_biases(net)
    [['0.weight', '2.weight'], ['0.bias', '2.bias']]
    >>> blocks(net, 2)
    [['0.weight', '0.bias'], ['2.weight', '2.bias']]
    >>> single(net)
    [['0.weight', '0.bias', '2.weight', '2.bias']]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from torch import nn

__all__ = [
    "PARTITIONS",
    "blocks",
    "from_mapping",
    "get_partition",
    "per_module",
    "per_tensor",
    "single",
    "trainable_names",
    "validate_groups",
    "weights_biases",
]


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters of ``model``, in ``named_parameters()`` order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def validate_groups(
    groups: Sequence[Sequence[str]], names: Iterable[str] | None = None
) -> list[list[str]]:
    """Check a partition and return it as ``list[list[str]]``.

    Raises ``ValueError`` for an empty partition, an empty subset, a name in two subsets, a
    non-string name, or (when ``names`` is given) a name that is not among ``names``.
    """
    if isinstance(groups, str | bytes) or not isinstance(groups, Sequence):
        raise ValueError(f"groups must be a list of lists of parameter names, got {groups!r}")
    if len(groups) == 0:
        raise ValueError("groups is empty: a partition needs at least one subset (S >= 1)")
    known = None if names is None else set(names)
    seen: dict[str, int] = {}
    out: list[list[str]] = []
    for s, group in enumerate(groups):
        if isinstance(group, str | bytes) or not isinstance(group, Sequence):
            raise ValueError(f"subset {s} must be a list of parameter names, got {group!r}")
        if len(group) == 0:
            raise ValueError(f"subset {s} is empty: every subset needs at least one parameter")
        for name in group:
            if not isinstance(name, str):
                raise ValueError(f"subset {s} holds {name!r}, which is not a parameter name")
            if name in seen:
                raise ValueError(f"parameter {name!r} is in two subsets ({seen[name]} and {s})")
            if known is not None and name not in known:
                raise ValueError(f"subset {s} names {name!r}, which is not a trainable parameter")
            seen[name] = s
        out.append(list(group))
    return out


def per_tensor(model: nn.Module) -> list[list[str]]:
    """One subset per parameter tensor (the paper's default: a layer's weight and bias are two)."""
    return validate_groups([[name] for name in trainable_names(model)], trainable_names(model))


def per_module(model: nn.Module) -> list[list[str]]:
    """One subset per module owning parameters directly (a layer's weight and bias together)."""
    names = trainable_names(model)
    order: dict[str, list[str]] = {}
    for name in names:
        owner = name.rpartition(".")[0]
        order.setdefault(owner, []).append(name)
    return validate_groups(list(order.values()), names)


def weights_biases(model: nn.Module) -> list[list[str]]:
    """Two subsets: every bias (names ending in ``bias``) and every other parameter.

    The weights come first. A model without biases gives a single subset.
    """
    names = trainable_names(model)
    biases = [n for n in names if n.rpartition(".")[2] == "bias"]
    weights = [n for n in names if n.rpartition(".")[2] != "bias"]
    return validate_groups([g for g in (weights, biases) if g], names)


def blocks(model: nn.Module, num_blocks: int) -> list[list[str]]:
    """``num_blocks`` subsets of consecutive layers (modules), as even in size as possible.

    Layers are the modules of :func:`per_module`; a layer's tensors never straddle two blocks.
    """
    layers = per_module(model)
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}")
    if num_blocks > len(layers):
        raise ValueError(
            f"num_blocks={num_blocks} exceeds the number of layers with parameters ({len(layers)})"
        )
    out: list[list[str]] = []
    for b in range(num_blocks):
        lo = b * len(layers) // num_blocks
        hi = (b + 1) * len(layers) // num_blocks
        out.append([name for layer in layers[lo:hi] for name in layer])
    return validate_groups(out, trainable_names(model))


def single(model: nn.Module) -> list[list[str]]:
    """A single subset holding every trainable parameter (S = 1: the Cauchy step)."""
    names = trainable_names(model)
    return validate_groups([names], names)


def from_mapping(model: nn.Module, mapping: Mapping[str, object]) -> list[list[str]]:
    """Subsets from a user mapping ``parameter name -> subset label``.

    Subsets are ordered by the first appearance of their label in ``named_parameters()``.
    Every trainable parameter must be mapped; frozen ones may be left out (they are skipped).
    """
    names = trainable_names(model)
    unknown = sorted(set(mapping) - {n for n, _ in model.named_parameters()})
    if unknown:
        raise ValueError(f"mapping names parameters the model does not have: {unknown}")
    missing = [n for n in names if n not in mapping]
    if missing:
        raise ValueError(f"mapping leaves trainable parameters without a subset: {missing}")
    order: dict[object, list[str]] = {}
    for name in names:
        order.setdefault(mapping[name], []).append(name)
    return validate_groups(list(order.values()), names)


PARTITIONS: dict[str, Callable[..., list[list[str]]]] = {
    "per_tensor": per_tensor,
    "per_module": per_module,
    "weights_biases": weights_biases,
    "blocks": blocks,
    "single": single,
}


def get_partition(name: str) -> Callable[..., list[list[str]]]:
    """The partition function registered under ``name`` (see ``PARTITIONS``)."""
    try:
        return PARTITIONS[name]
    except KeyError:
        raise ValueError(f"unknown partition {name!r}; known: {sorted(PARTITIONS)}") from None
