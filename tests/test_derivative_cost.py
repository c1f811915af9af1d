"""The cost study's references and bookkeeping (bench.studies.derivative_cost), on tiny models.

Both reverse-pass references are checked against the independent float64 reference of
tests/reference.py (torch.autograd.functional on φ(η) written from elementary operators); the
restricted one is checked to make exactly the restricted passes it claims.
"""

from __future__ import annotations

import json
import random
import statistics

import pytest
import torch
import torch.nn.functional as F
from reference import DT, reference_derivatives, reference_loss, relative_error
from torch import nn

from bench.studies import derivative_cost as dc
from optimizers import partition

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = "tiny_tanh_mlp"


def _tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 10))


def _tiny_conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 10)
    )  # fmt: skip


def _problem(build, shape, seed: int, batch: int = 5):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build().to(DT)
    x = torch.randn(batch, *shape, dtype=DT, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    direction = {
        n: torch.randn(p.shape, dtype=DT, generator=gen) for n, p in model.named_parameters()
    }
    return model, x, y, direction


def _partitions(model: nn.Module, seed: int) -> dict[str, list[list[str]]]:
    shuffled = partition.per_tensor(model)
    random.Random(seed).shuffle(shuffled)
    return {
        "per_tensor": partition.per_tensor(model),
        "per_tensor_shuffled": shuffled,  # rows t ≥ s then reach earlier layers too
        "per_module": partition.per_module(model),
    }


@pytest.mark.parametrize("reference", ["restricted", "unrestricted"])
@pytest.mark.parametrize("build, shape", [(_tiny_mlp, (6,)), (_tiny_conv, (2, 6, 6))])
def test_references_match_the_independent_float64_reference(reference, build, shape, seed):
    model, x, y, direction = _problem(build, shape, seed)
    params = {n: p.detach() for n, p in model.named_parameters()}
    loss_fn = reference_loss(model, F.cross_entropy, (x,), y)
    for kind, groups in _partitions(model, seed).items():
        got = dc.REFERENCES[reference](model, x, y, groups, direction, 3)
        g, h, d3 = reference_derivatives(loss_fn, params, groups, direction, 3)
        expected = (g, h, torch.stack([d3[s, s, s] for s in range(len(groups))]))
        for order, (a, b) in enumerate(zip(got, expected, strict=True), start=1):
            error = relative_error(a, b)
            assert error <= 1e-10, f"{reference}/{kind} order {order}: {error:.2e}"
        lower = dc.REFERENCES[reference](model, x, y, groups, direction, 2)
        assert len(lower) == 2 and torch.equal(lower[1], got[1])
        if reference == "restricted":  # assembled from its rows t ≥ s: exactly symmetric
            assert torch.equal(lower[1], lower[1].T)


def test_restricted_passes_reach_only_the_subsets_they_need(monkeypatch, seed):
    """Row s: the parameters of subsets t ≥ s; D^3_sss: subset s alone (unrestricted: all)."""
    model, x, y, direction = _problem(_tiny_mlp, (6,), seed)
    groups = partition.per_tensor(model)
    size = {id(p): n for n, p in model.named_parameters()}
    reached: list[list[str]] = []
    grad = torch.autograd.grad

    def recording(outputs, inputs, *args, **kwargs):
        reached.append([size[id(p)] for p in inputs])
        return grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recording)
    dc.restricted_reverse_reference(model, x, y, groups, direction, 3)
    names = [g[0] for g in groups]
    expected = [names]  # the backward with a graph
    for s in range(len(groups)):
        expected += [names[s:], [names[s]]]
    assert reached == expected
    reached.clear()
    dc.nested_reverse_reference(model, x, y, groups, direction, 3)
    assert reached == [names] * (1 + 2 * len(groups))


def test_bad_order_is_rejected():
    model, x, y, direction = _problem(_tiny_mlp, (6,), 0)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3, got 4"):
        dc.restricted_reverse_reference(model, x, y, partition.per_tensor(model), direction, 4)


@pytest.fixture
def tiny_problem(monkeypatch):
    monkeypatch.setitem(dc.MODELS, TINY, (_tiny_mlp, (6,)))
    return TINY


def test_agreement_check_names_the_reference_that_disagrees(monkeypatch, tiny_problem):
    assert dc.check_same_numbers(tiny_problem) <= dc.TOLERANCE
    engine = dc.projected_derivatives

    def off(*args, **kwargs):  # the engine's H̄ off by 1e-9 (relative)
        out = engine(*args, **kwargs)
        return (out[0], out[1] * (1 + 1e-9)) + out[2:]

    monkeypatch.setattr(dc, "projected_derivatives", off)
    with pytest.raises(AssertionError, match="the restricted reference differ by 1e-09"):
        dc.check_same_numbers(tiny_problem)


def test_paired_ratios_pair_the_rounds_both_took_part_in():
    assert dc.paired_ratios([2.0, 6.0, 3.0], [1.0, 2.0, 1.0]) == [2.0, 3.0, 3.0]
    assert dc.paired_ratios([8.0], [2.0, 4.0, 4.0]) == [4.0]  # budget-limited: first round


def test_measure_reports_both_references_and_renders_them(tiny_problem):
    rows = dc.measure([tiny_problem], rounds=2, threads=1, with_memory=False, budget_seconds=60)
    by_variant = {r["variant"]: r for r in rows}
    assert list(by_variant) == list(dc.ORDER_OF)
    for name, row in by_variant.items():
        assert row["reference"] == dc.REFERENCE_OF[name]
        assert row["reference"].startswith("restricted_")
        assert row["unrestricted_reference"].startswith("unrestricted_")
        low, high = row["vs_reference_range"]
        assert 0 < low <= high
        assert row["max_relative_difference_float64"] <= dc.TOLERANCE
    assert by_variant["restricted_order2"]["vs_reference"] == 1.0
    assert by_variant["unrestricted_order3_diag"]["vs_unrestricted"] == 1.0
    row = by_variant["restricted_order3_diag"]
    other = by_variant["unrestricted_order3_diag"]["samples_seconds"]
    paired = [a / b for a, b in zip(row["samples_seconds"], other, strict=True)]
    assert row["vs_unrestricted"] == statistics.median(paired)
    assert row["vs_unrestricted_range"] == [min(paired), max(paired)]
    assert row["rounds"] == len(row["samples_seconds"]) == 2
    assert by_variant["engine_order3_full"]["reference"] == "restricted_order3_diag"
    table = dc.markdown_table(rows)
    assert "× restricted reference" in table and "× unrestricted reference" in table
    assert len(table.splitlines()) == 2 + len(rows)


def test_a_result_stored_with_one_reference_keeps_its_table():
    row = {
        "problem": "p", "subsets": 2, "variant": "engine_order2", "seconds": 0.5,
        "gradients": 5.0, "reference": "reference_order2", "vs_reference": 0.5,
        "peak_memory_mb": None,
    }  # fmt: skip
    table = dc.markdown_table([row])
    assert "| × reference | reference |" in table
    assert "| p | 2 | engine_order2 | 500.0 | 5.00 | 0.50 | reference_order2 | – |" in table


def test_the_quick_command_writes_a_result_with_provenance(tmp_path, tiny_problem, capsys):
    out = tmp_path / "cost.json"
    assert dc.main(["--quick", "--problems", tiny_problem, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {r["variant"] for r in result["rows"]} == set(dc.ORDER_OF)
    assert result["provenance"]["threads"] == 1 and result["settings"]["quick"] is True
    assert dc.readme_block(result).startswith("| problem | S | variant |")
    capsys.readouterr()
