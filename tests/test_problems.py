"""bench.problems: every registered problem builds its model deterministically from a seed, the
embedded ones load their data offline and give logits [batch, num_classes] (a language model's
[batch, T, V]), the paper's four carry the paper's budget, every optimizer of params.yaml runs on
the new problems (BN-ResNet, char transformer), and the registry rejects unknown or duplicate
names."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from bench import problems
from bench.data import DATASETS, load_arrays
from bench.models import mlp
from bench.problems import PROBLEMS, Problem, get_problem
from optimizers.partition import per_tensor

EMBEDDED = sorted(name for name, p in PROBLEMS.items() if DATASETS[p.dataset].raw is not None)
LANGUAGE_MODELS = {n for n, p in PROBLEMS.items() if DATASETS[p.dataset].task == "language_model"}
NEW = ("mnist5k_bnresnet", "pytopics_chartransformer")  # issue #12
ROOT = Path(__file__).resolve().parents[1]
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


def inputs_for(problem: Problem, count: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random inputs of the problem's shape: images/features, or token ids for a language model."""
    if problem.name in LANGUAGE_MODELS:
        return torch.randint(0, problem.num_classes, (count, *problem.input_shape))
    return torch.randn(count, *problem.input_shape, dtype=dtype)


def output_shape(problem: Problem, count: int) -> tuple[int, ...]:
    if problem.name in LANGUAGE_MODELS:
        return (count, *problem.input_shape, problem.num_classes)  # [B, T, V]
    return (count, problem.num_classes)


def test_the_default_grid_problems_are_registered_on_embedded_data():
    assert {"mnist5k_mlp", "digits_mlp", "mnist1d_mlp", "mnist5k_lenet5", *NEW} <= set(EMBEDDED)
    for name, problem in PROBLEMS.items():
        assert problem.name == name and name.startswith(problem.dataset + "_"), problem


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
        logits = model(inputs_for(problem, 2, torch.float64))
    assert logits.shape == output_shape(problem, 2) and logits.dtype == torch.float64


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_problems_load_offline_and_run_on_their_data(name, single_thread):
    problem = get_problem(name)
    splits = load_arrays(problem.dataset, seed=0)
    assert splits.input_shape == problem.input_shape
    model = problem.make_model(0)
    inputs = torch.as_tensor(splits.x_train[: problem.batch_size])
    with torch.no_grad():
        logits = model(inputs)
    assert logits.shape == output_shape(problem, problem.batch_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["digits_mlp", *NEW])
def test_make_model_depends_on_the_seed_alone_and_leaves_the_global_rng(name, seed):
    problem = get_problem(name)
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


def test_the_new_problems_budgets_metric_and_partition():
    resnet, lm = get_problem("mnist5k_bnresnet"), get_problem("pytopics_chartransformer")
    assert (resnet.metric, resnet.partition, resnet.input_shape) == ("accuracy", None, (1, 28, 28))
    assert (lm.metric, lm.partition) == ("perplexity", "per_module")
    assert (lm.input_shape, lm.num_classes) == ((64,), 103)
    hub = get_problem("tiny_shakespeare_chartransformer")
    assert (hub.metric, hub.num_classes, hub.dataset) == ("perplexity", 65, "tiny_shakespeare")
    for name in ("mnist_mlp", "mnist5k_lenet5", "digits_mlp", "mnist1d_mlp", "mnist5k_mlp"):
        assert (get_problem(name).metric, get_problem(name).partition) == ("accuracy", None)


def default_grid_optimizers() -> list[str]:
    """The registry optimizers of params.yaml's ``optimizers`` section."""
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["optimizers"]
    return [name for name, entry in section.items() if "register" not in (entry or {})]


@pytest.fixture(scope="module")
def first_rows():
    """The first 16 training examples of each new problem's data set."""
    rows = {}
    for name in NEW:
        splits = load_arrays(get_problem(name).dataset, seed=0)
        x, y = splits.x_train[:16], splits.y_train[:16]
        rows[name] = (torch.as_tensor(x), torch.as_tensor(y))
    return rows


@pytest.mark.parametrize("optimizer", default_grid_optimizers())
@pytest.mark.parametrize("name", NEW)
def test_every_default_optimizer_runs_on_the_new_problems(
    name, optimizer, first_rows, seed, single_thread
):
    """A few steps on one batch of real data (the problem's partition where the optimizer takes
    one): the losses and weights stay finite, and SGD and Adam lower the batch's loss."""
    from bench.training.runs import problem_criterion, problem_hyperparameters
    from optimizers.registry import make

    problem = get_problem(name)
    criterion = problem_criterion(problem)
    model = problem.make_model(seed)
    torch.manual_seed(seed)
    hyperparameters = problem_hyperparameters(problem, optimizer, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASDL's deprecation warnings
        trainer = make(optimizer, model, hyperparameters, criterion=criterion)
        batch = first_rows[name]
        with torch.no_grad():
            before = float(criterion(model(batch[0]), batch[1]))
        losses = [float(trainer.step(batch, batch)) for _ in range(4)]
        with torch.no_grad():
            after = float(criterion(model(batch[0]), batch[1]))
    assert all(math.isfinite(v) for v in [*losses, after]), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if optimizer in ("sgd", "adam"):
        assert after < before, (before, after)


def test_kfac_reports_the_mean_token_loss_on_a_language_model(first_rows, seed, single_thread):
    from bench.training.runs import problem_criterion
    from optimizers.registry import make

    problem = get_problem("pytopics_chartransformer")
    criterion = problem_criterion(problem)
    model = problem.make_model(seed)
    batch = first_rows[problem.name]
    with torch.no_grad():
        expected = float(criterion(model(batch[0]), batch[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make("kfac", model, {}, criterion=criterion)
        reported = float(trainer.step(batch, batch))  # step 0 updates the curvature
    assert math.isclose(reported, expected, rel_tol=1e-5), (reported, expected)


@pytest.mark.parametrize("name", NEW)
def test_kfac_covers_every_module_with_parameters(name, first_rows, single_thread):
    """ASDL has a factor for every module that owns parameters (Conv2d, BatchNorm2d, Linear,
    LayerNorm, Embedding); the embeddings' input factors are per token: diagonal, ∝ counts."""
    from bench.training.runs import problem_criterion
    from optimizers.registry import make

    problem = get_problem(name)
    model = problem.make_model(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make("kfac", model, {}, criterion=problem_criterion(problem))
        trainer.step(first_rows[name])
    covered = {n.replace("/", ".") for n, _ in trainer.grad_maker.named_modules_for_curvature}
    owners = {n for n, m in model.named_modules() if list(m.parameters(recurse=False))}
    assert covered == owners
    if name not in LANGUAGE_MODELS:
        return
    attr = trainer.grad_maker.fisher_maker.config.fisher_attr
    tokens = first_rows[name][0]
    for module, counts in (
        (model.token, torch.bincount(tokens.flatten(), minlength=problem.num_classes)),
        (model.position, torch.full((tokens.shape[1],), len(tokens))),
    ):
        factor = getattr(module, attr).kron.A
        diagonal = torch.diagonal(factor)
        torch.testing.assert_close(factor, torch.diag(diagonal), rtol=0, atol=0)
        torch.testing.assert_close(diagonal / diagonal.max(), counts / counts.max())
