"""bench.problems: every registered problem builds its model deterministically from a seed, the
embedded ones load their data offline and give logits [batch, num_classes], the paper's four
carry the paper's budget, and the registry rejects unknown or duplicate names."""

from __future__ import annotations

import pytest
import torch

from bench import problems
from bench.data import DATASETS, load_arrays
from bench.models import mlp
from bench.problems import PROBLEMS, Problem, get_problem
from optimizers.partition import per_tensor

EMBEDDED = sorted(name for name, p in PROBLEMS.items() if DATASETS[p.dataset].raw is not None)
PAPER = {
    # name: (data set, epochs, S)
    "mnist_mlp": ("mnist", 200, 8),
    "cifar10_lenet5": ("cifar10", 200, 10),
    "cifar10_vgg11": ("cifar10", 100, 18),
    "cifar10_deepmlp": ("cifar10", 100, 42),
}


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_the_default_grid_problems_are_registered_on_embedded_data():
    assert {"mnist5k_mlp", "digits_mlp", "mnist1d_mlp"} <= set(EMBEDDED)
    for name, problem in PROBLEMS.items():
        assert problem.name == name and name.startswith(problem.dataset + "_")


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_problems_carry_the_paper_budget(name):
    dataset, epochs, subsets = PAPER[name]
    problem = get_problem(name)
    assert (problem.dataset, problem.epochs) == (dataset, epochs)
    assert (problem.batch_size, problem.curvature_batch_size) == (100, 100)
    assert problem.loss == "cross_entropy" and problem.num_classes == 10
    model = problem.make_model(0)
    assert len(per_tensor(model)) == subsets


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_every_problem_builds_with_a_forward_pass(name, single_thread):
    problem = get_problem(name)
    model = problem.make_model(1, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in model.parameters())
    with torch.no_grad():
        logits = model(torch.randn(2, *problem.input_shape, dtype=torch.float64))
    assert logits.shape == (2, problem.num_classes)


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_problems_load_offline_and_run_on_their_data(name, single_thread):
    problem = get_problem(name)
    splits = load_arrays(problem.dataset, seed=0)
    assert splits.input_shape == problem.input_shape
    model = problem.make_model(0)
    inputs = torch.as_tensor(splits.x_train[: problem.batch_size])
    with torch.no_grad():
        logits = model(inputs)
    assert logits.shape == (problem.batch_size, splits.num_classes) and torch.isfinite(logits).all()


def test_make_model_depends_on_the_seed_alone_and_leaves_the_global_rng(seed):
    problem = get_problem("digits_mlp")
    first = problem.make_model(seed)
    torch.manual_seed(seed + 17)  # the caller's RNG state must not matter
    second = problem.make_model(seed)
    other = problem.make_model(seed + 1)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    problem.make_model(seed)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
        assert a.dim() == 1 or not torch.equal(a, c)


def test_unknown_problem_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown problem 'nope'.*digits_mlp.*mnist_mlp"):
        get_problem("nope")


def test_register_problem_adds_once_and_validates(monkeypatch):
    monkeypatch.setattr(problems, "PROBLEMS", dict(PROBLEMS))  # leave the registry as it was
    extra = Problem("digits_wide", "digits", lambda: mlp(64, (256,), 10), epochs=3)
    assert problems.register_problem(extra) is extra
    assert problems.get_problem("digits_wide") is extra
    with pytest.raises(ValueError, match="already registered"):
        problems.register_problem(extra)
    assert "digits_wide" not in PROBLEMS
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        Problem("imagenet_mlp", "imagenet", lambda: mlp(4, (3,), 2), epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        Problem("digits_x", "digits", lambda: mlp(64, (3,), 10), epochs=0)
    with pytest.raises(ValueError, match="loss"):
        Problem("digits_x", "digits", lambda: mlp(64, (3,), 10), epochs=1, loss="mse")


def test_problem_metric_and_partition_default_and_are_validated():
    build = lambda: mlp(64, (3,), 10)  # noqa: E731
    plain = Problem("digits_x", "digits", build, epochs=1)
    assert (plain.metric, plain.partition) == ("accuracy", None)
    assert all(p.metric in problems.METRICS for p in PROBLEMS.values())
    lm = Problem("digits_x", "digits", build, 1, metric="perplexity", partition="per_module")
    assert (lm.metric, lm.partition) == ("perplexity", "per_module")
    with pytest.raises(ValueError, match="unknown metric 'loss'"):
        Problem("digits_x", "digits", build, epochs=1, metric="loss")
    with pytest.raises(ValueError, match="unknown partition 'per_layer'"):
        Problem("digits_x", "digits", build, epochs=1, partition="per_layer")
