"""Partitions: order, frozen parameters skipped, validation errors."""

from __future__ import annotations

import pytest
import torch
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


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _all_partitions(model):
    names = _trainable(model)
    return {
        "per_tensor": partition.per_tensor(model),
        "per_module": partition.per_module(model),
        "weights_biases": partition.weights_biases(model),
        "blocks2": partition.blocks(model, 2),
        "single": partition.single(model),
        "mapping": partition.from_mapping(model, {n: len(n) % 3 for n in names}),
    }


@pytest.mark.parametrize("frozen", [False, True])
def test_every_partition_covers_each_trainable_tensor_exactly_once(net, frozen):
    if frozen:
        net.body[2].weight.requires_grad_(False)
    names = _trainable(net)
    for kind, groups in _all_partitions(net).items():
        flat = [n for g in groups for n in g]
        assert sorted(flat) == sorted(names), kind
        assert len(flat) == len(set(flat)), kind
        assert all(groups), kind
        assert "norm.weight" not in flat, kind
        if frozen:
            assert "body.2.weight" not in flat, kind
        if kind not in ("weights_biases", "mapping"):  # these keep named_parameters() order
            assert flat == names, kind
        assert partition.validate_groups(groups, names) == groups


def test_registry_names_every_partition_function(net):
    assert set(partition.PARTITIONS) == {
        "per_tensor",
        "per_module",
        "weights_biases",
        "blocks",
        "single",
    }
    for name, function in partition.PARTITIONS.items():
        assert partition.get_partition(name) is function
        groups = function(net, 2) if name == "blocks" else function(net)
        assert sorted(n for g in groups for n in g) == sorted(_trainable(net))


def test_model_without_biases():
    model = nn.Sequential(
        nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 4, bias=False), nn.Linear(4, 2, False)
    )
    assert partition.per_tensor(model) == partition.per_module(model)
    assert partition.per_module(model) == [["0.weight"], ["2.weight"], ["3.weight"]]
    assert partition.weights_biases(model) == [["0.weight", "2.weight", "3.weight"]]
    assert partition.blocks(model, 2) == [["0.weight"], ["2.weight", "3.weight"]]
    assert partition.single(model) == [["0.weight", "2.weight", "3.weight"]]


def test_deeply_nested_modules_and_parameters_owned_directly():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(2))
            self.inner = nn.Sequential(nn.Sequential(nn.Linear(2, 2)))

        def forward(self, x):
            return self.inner(x) * self.gain

    model = nn.Sequential(Scale(), nn.Linear(2, 1))
    assert [n for n, _ in model.named_parameters()] == [
        "0.gain",
        "0.inner.0.0.weight",
        "0.inner.0.0.bias",
        "1.weight",
        "1.bias",
    ]
    assert partition.per_module(model) == [
        ["0.gain"],
        ["0.inner.0.0.weight", "0.inner.0.0.bias"],
        ["1.weight", "1.bias"],
    ]
    assert partition.weights_biases(model) == [
        ["0.gain", "0.inner.0.0.weight", "1.weight"],
        ["0.inner.0.0.bias", "1.bias"],
    ]
    assert partition.blocks(model, 2) == [
        ["0.gain"],
        ["0.inner.0.0.weight", "0.inner.0.0.bias", "1.weight", "1.bias"],
    ]


def test_shared_parameters_appear_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    assert partition.per_tensor(model) == [["0.weight"], ["0.bias"]]
    assert partition.per_module(model) == [["0.weight", "0.bias"]]


def test_frozen_parameters_may_be_mapped_or_left_out(net):
    names = _trainable(net)
    with_frozen = partition.from_mapping(net, {**{n: "a" for n in names}, "norm.weight": "b"})
    assert with_frozen == [names]  # the frozen tensor is skipped, its label gives no subset
    assert partition.from_mapping(net, {n: "a" for n in names}) == [names]


def test_model_without_trainable_parameters_is_rejected():
    model = nn.Linear(2, 2).requires_grad_(False)
    for function in (partition.per_tensor, partition.per_module, partition.single):
        with pytest.raises(ValueError, match="empty"):
            function(model)
    with pytest.raises(ValueError, match="empty"):
        partition.blocks(model, 1)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_blocks_sizes_differ_by_at_most_one(count):
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(7)])
    groups = partition.blocks(model, count)
    sizes = [len(g) // 2 for g in groups]
    assert len(groups) == count and sum(sizes) == 7
    assert max(sizes) - min(sizes) <= 1
    assert [n for g in groups for n in g] == _trainable(model)


def test_validate_groups_accepts_tuples_and_returns_lists():
    assert partition.validate_groups((("a",), ("b", "c"))) == [["a"], ["b", "c"]]
    assert partition.validate_groups([["a", "b"]], names=["a", "b", "c"]) == [["a", "b"]]
