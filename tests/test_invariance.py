"""The invariance stage: the twin is the same function, ours stays at rounding level, SGD drifts.

On every kind of layer the default grid trains (tests/test_invariance_models.py: LeNet-5, the
BatchNorm ResNet, the char transformer, a module holding bare parameters); here the MLP of the
stage and the stage itself."""

from __future__ import annotations

import json

import torch
from torch import nn

from bench.data import load_arrays
from bench.problems import get_problem
from bench.studies.invariance import (
    deviation,
    draw_maps,
    invariance_cell,
    mapped_parameters,
    reparameterize,
    study,
)

DT = torch.float64


def test_twin_computes_the_same_function_with_the_same_names(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).to(DT)
    twin = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).to(DT)
    twin.load_state_dict(model.state_dict())
    scales, shifts = draw_maps(model, seed, 10.0, 0.1)
    reparameterize(twin, scales, shifts)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert type(twin[0]) is nn.Conv2d and type(twin[3]) is nn.Linear  # K-FAC still sees them
    x = torch.randn(5, 1, 4, 4, dtype=DT)
    torch.testing.assert_close(twin(x), model(x), rtol=1e-12, atol=1e-12)
    for name, p in model.named_parameters():
        torch.testing.assert_close(
            mapped_parameters(twin)[name], p.detach(), rtol=1e-12, atol=1e-13
        )
    assert deviation(model, twin) < 1e-14
    assert any(abs(a - 1) > 0.5 for a in scales.values())


def test_ours_stays_at_rounding_level_and_sgd_drifts(seed):
    problem = get_problem("digits_mlp")
    splits = load_arrays("digits", seed=0)
    hp = {"update_every": 2, "warmup": 1, "average": 2}
    result = study(
        problem, splits, {"partitioned_newton": hp, "sgd": {}},
        steps=10, batch_size=32, seed=seed % 1000, dtype=DT, scale_range=10.0, shift_std=0.1,
        min_movement=1e-3,
    )  # fmt: skip
    assert result["moved"]["partitioned_newton"] > 1e-3, f"seed {seed}"
    assert result["max_relative_deviation"]["partitioned_newton"] < 1e-10, f"seed {seed}"
    assert result["max_relative_deviation"]["sgd"] > 1e-4, f"seed {seed}"
    for law in ("g", "H", "d"):
        assert result["scaling_laws"][law] < 1e-12, (law, result["scaling_laws"], seed)


def test_order2_entries_stay_at_rounding_level(seed):
    """The λ_int = 0 entries step on the indefinite H̄ of the digits MLP ("solve", the paper's,
    and "saddle_free") in scale-covariant variables: the twin follows to rounding.

    Undamped, these steps reach η_s ~ 10⁴-10⁵ when H̄ is near-singular, and a run whose weights
    blow up amplifies its rounding errors with every step (λ1 = 0.1: up to 1.4e-6 over 300
    seeds). Hence λ1 = 0.01 and, for a run whose weights grew more than tenfold, a bound of 1e-6.
    Measured over seeds 0-999: saddle_free max 9.6e-11; order2 max 3.9e-10, except the two runs
    that grew ×42 and ×514 (4.2e-9, 2.2e-8); every run moved by more than 0.024."""
    problem = get_problem("digits_mlp")
    splits = load_arrays("digits", seed=0)
    hp = {"update_every": 2, "warmup": 1, "average": 2, "lr": 0.01}
    names = ("partitioned_newton_order2", "partitioned_newton_saddle_free")
    result = study(
        problem, splits, {name: hp for name in names},
        steps=10, batch_size=32, seed=seed % 1000, dtype=DT, scale_range=10.0, shift_std=0.1,
        min_movement=1e-3,
    )  # fmt: skip
    for name in names:
        moved = result["moved"][name]
        assert moved > 1e-3, (name, seed)
        bound = 1e-9 if moved <= 10.0 else 1e-6
        assert result["max_relative_deviation"][name] < bound, (name, moved, seed)


def test_stage_writes_its_record(tmp_path, monkeypatch):
    from test_stages import tiny_params

    from bench.config import parse_pipeline_config
    from bench.prepare import prepare

    monkeypatch.chdir(tmp_path)
    config = parse_pipeline_config(tiny_params(tmp_path))
    prepare(config, results=tmp_path / "results")
    path = invariance_cell(config, "digits_mlp", tmp_path / "results")
    record = json.loads(path.read_text())
    assert path == tmp_path / "results/tiny/invariance/digits_mlp.json"
    assert set(record["max_relative_deviation"]) == {"sgd", "partitioned_newton"}
    assert record["steps"] == 8 and record["dtype"] == "float64"
    assert record["expected_invariant"] == ["partitioned_newton"]
    assert "git_commit" in record["provenance"]  # None here: tmp_path is not a git checkout
