"""Partitions: order, frozen parameters skipped, validation errors."""

from __future__ import annotations

import pytest
from torch import nn

from optimizers import partition


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.body = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Tanh(), nn.Linear(4, 4))
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.norm.weight.requires_grad_(False)  # frozen: skipped everywhere


@pytest.fixture
def net():
    return Net()


def test_per_tensor_in_named_parameters_order_without_frozen(net):
    expected = [n for n, p in net.named_parameters() if p.requires_grad]
    assert partition.per_tensor(net) == [[n] for n in expected]
    assert "norm.weight" not in sum(partition.per_tensor(net), [])


def test_per_module_groups_weight_and_bias(net):
    assert partition.per_module(net) == [
        ["stem.weight", "stem.bias"],
        ["body.0.weight"],
        ["body.2.weight", "body.2.bias"],
        ["norm.bias"],
        ["head.weight", "head.bias"],
    ]


def test_weights_biases_and_single(net):
    weights, biases = partition.weights_biases(net)
    assert weights == ["stem.weight", "body.0.weight", "body.2.weight", "head.weight"]
    assert biases == ["stem.bias", "body.2.bias", "norm.bias", "head.bias"]
    assert partition.single(net) == [[n for n, p in net.named_parameters() if p.requires_grad]]
    no_bias = nn.Sequential(nn.Linear(2, 2, bias=False))
    assert partition.weights_biases(no_bias) == [["0.weight"]]


@pytest.mark.parametrize("num_blocks, sizes", [(1, [5]), (2, [2, 3]), (3, [1, 2, 2]), (5, [1] * 5)])
def test_blocks_are_consecutive_layers_evenly_split(net, num_blocks, sizes):
    layers = partition.per_module(net)
    groups = partition.blocks(net, num_blocks)
    assert sum(groups, []) == sum(layers, [])
    counts = [sum(1 for layer in layers if layer[0] in g) for g in groups]
    assert counts == sizes


@pytest.mark.parametrize("bad", [0, -1, 6, 2.5, True])
def test_blocks_rejects_bad_counts(net, bad):
    with pytest.raises(ValueError, match="num_blocks"):
        partition.blocks(net, bad)


def test_from_mapping_orders_by_first_appearance_and_validates(net):
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    mapping = {n: ("late" if i % 2 else "early") for i, n in enumerate(names)}
    groups = partition.from_mapping(net, mapping)
    assert groups == [names[0::2], names[1::2]]
    with pytest.raises(ValueError, match="without a subset"):
        partition.from_mapping(net, {names[0]: 0})
    with pytest.raises(ValueError, match="does not have"):
        partition.from_mapping(net, {**mapping, "ghost": 1})


@pytest.mark.parametrize(
    "groups, match",
    [
        ([], "empty"),
        ([["a"], []], "empty"),
        ([["a"], ["a"]], "two subsets"),
        ("a", "list of lists"),
        (["ab"], "list of parameter names"),
        ([[1]], "not a parameter name"),
        ([["zzz"]], "not a trainable parameter"),
    ],
)
def test_validate_groups_errors(groups, match):
    with pytest.raises(ValueError, match=match):
        partition.validate_groups(groups, ["a", "b"])


def test_get_partition_by_name():
    assert partition.get_partition("per_tensor") is partition.per_tensor
    with pytest.raises(ValueError, match="unknown partition"):
        partition.get_partition("per_layer_typo")
