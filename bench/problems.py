"""Benchmark problems: data set + model + loss + budget, named ``<dataset>_<model>``.

The paper's four (METHOD.md §7; full data sets, batch 100, curvature batch B' = 100):

| problem | data | model | epochs |
|---|---|---|---|
| ``mnist_mlp`` | MNIST 54k/6k/10k | MLP 784-1024-200-100-10, tanh | 200 |
| ``cifar10_lenet5`` | CIFAR-10 45k/5k/10k | LeNet-5, tanh | 200 |
| ``cifar10_vgg11`` | CIFAR-10 | VGG-11 without BatchNorm, ELU | 100 |
| ``cifar10_deepmlp`` | CIFAR-10 | MLP 3072-(1024×20)-10, ELU | 100 |

CPU-sized problems on the embedded data sets (the default grid, offline): ``mnist5k_mlp``
(784-128-64-10 tanh), ``mnist5k_lenet5`` (LeNet-5 on 28×28, padded), ``digits_mlp``
(64-64-32-10 tanh), ``mnist1d_mlp`` (40-128-64-10 ELU); and ``fashion_mnist_mlp`` (the
paper's MNIST MLP on Fashion-MNIST, full data).

Beyond MLPs (issue #12): ``mnist5k_bnresnet`` (a residual CNN with BatchNorm, conv biases on,
:func:`bench.models.bn_resnet`) and ``pytopics_chartransformer`` (a causal character-level
transformer, :func:`bench.models.char_transformer`, on CPython's ``pydoc_data.topics``; metric
perplexity, per-module partition), with ``tiny_shakespeare_chartransformer`` its hub
counterpart for the paper profile. A language model's inputs are token ids ``[B, T]`` (int64),
its targets the next tokens ``[B, T]``, its logits ``[B, T, V]``: :attr:`Problem.input_shape` is
``(T,)`` and :attr:`Problem.num_classes` the vocabulary size V. Their budgets (4 epochs,
batch 32; the transformer's 1 024 training windows are set by its data set's spec) keep one SGD
run with its evaluations under ~15 s on one CPU thread.

Adding a problem — the one place to do it::

    from bench.models import mlp
    from bench.problems import Problem, register_problem

    register_problem(Problem(
        name="digits_wide",                         # <dataset>_<model>
        dataset="digits",                           # a key of bench.data.DATASETS
        build_model=lambda: mlp(64, (256,), 10),    # initialised from torch's global generator
        epochs=20,
    ))

A new data set is first added to :data:`bench.data.DATASETS` with
:func:`bench.data.register_dataset`. ``build_model`` must draw its random numbers from torch's
global generator only: :meth:`Problem.make_model` seeds it (in a forked RNG state, so the
caller's stream is untouched), which makes the model a function of the seed alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench import models
from bench.data import DATASETS
from optimizers.partition import PARTITIONS

__all__ = ["LOSSES", "METRICS", "PROBLEMS", "Problem", "get_problem", "register_problem"]

LOSSES = ("cross_entropy",)
METRICS = ("accuracy", "perplexity")  # a problem's quality metric (the run records' contract)


@dataclass(frozen=True)
class Problem:
    """One benchmark problem; its budget is the default of the train stage (params may override).

    ``batch_size``: B of the training minibatches; ``curvature_batch_size``: B' of the batches on
    which the curvature (H̄, D^3) is estimated; ``epochs``: the training budget.

    ``metric``: the problem's quality metric, one of :data:`METRICS`: ``"accuracy"`` (a
    classifier's logits [B, C] against labels [B]) or ``"perplexity"`` (a language model's
    logits [B, T, V] against next tokens [B, T]: exp of the mean per-token cross-entropy).
    ``partition``: the problem's default partition for our optimizers (a name their
    ``partition`` argument accepts, e.g. ``"per_module"``), or None for the optimizer's own.
    """

    name: str
    dataset: str
    build_model: Callable[[], nn.Module]
    epochs: int
    loss: str = "cross_entropy"
    batch_size: int = 100
    curvature_batch_size: int = 100
    description: str = ""
    metric: str = "accuracy"
    partition: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"problem name must be a non-empty str, got {self.name!r}")
        if self.dataset not in DATASETS:
            known = ", ".join(sorted(DATASETS))
            raise ValueError(f"problem {self.name!r}: unknown data set {self.dataset!r} ({known})")
        if self.loss not in LOSSES:
            raise ValueError(f"problem {self.name!r}: unknown loss {self.loss!r} ({LOSSES})")
        if self.metric not in METRICS:
            raise ValueError(f"problem {self.name!r}: unknown metric {self.metric!r} ({METRICS})")
        if self.partition is not None and self.partition not in PARTITIONS:
            known = ", ".join(sorted(PARTITIONS))
            raise ValueError(
                f"problem {self.name!r}: unknown partition {self.partition!r} (None or {known})"
            )
        if not callable(self.build_model):
            raise ValueError(f"problem {self.name!r}: build_model {self.build_model!r}")
        for key in ("epochs", "batch_size", "curvature_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"problem {self.name!r}: {key} must be a positive int, not {value!r}"
                )

    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset].num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return DATASETS[self.dataset].input_shape

    def make_model(
        self, seed: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> nn.Module:
        """The problem's model, initialised from ``seed`` alone, on ``device`` in ``dtype``.

        Built and initialised on the CPU (so the weights are the same on every device) with
        torch's global generator seeded by ``seed`` inside ``torch.random.fork_rng``; the
        caller's global RNG state is left unchanged.
        """
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only
            model = self.build_model()
        return model.to(device=device, dtype=dtype)


PROBLEMS: dict[str, Problem] = {}


def register_problem(problem: Problem, *, replace: bool = False) -> Problem:
    """Add ``problem`` to :data:`PROBLEMS` (ValueError if the name is taken, unless ``replace``)."""
    if not isinstance(problem, Problem):
        raise ValueError(f"expected a Problem, got {type(problem).__name__}")
    if problem.name in PROBLEMS and not replace:
        raise ValueError(f"problem {problem.name!r} is already registered")
    PROBLEMS[problem.name] = problem
    return problem


def get_problem(name: str) -> Problem:
    """The registered problem ``name``; ValueError listing the known names otherwise."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r} (known: {', '.join(sorted(PROBLEMS))})")
    return PROBLEMS[name]


def _mnist5k_mlp() -> nn.Module:
    return models.mlp(784, (128, 64), 10, "tanh")


def _mnist5k_lenet5() -> nn.Module:
    return models.lenet5(1, input_size=28)


def _digits_mlp() -> nn.Module:
    return models.mlp(64, (64, 32), 10, "tanh")


def _mnist1d_mlp() -> nn.Module:
    return models.mlp(40, (128, 64), 10, "elu")


def _mnist5k_bnresnet() -> nn.Module:
    return models.bn_resnet(1, num_classes=10)


def _char_transformer(dataset: str) -> Callable[[], nn.Module]:
    spec = DATASETS[dataset]

    def build() -> nn.Module:
        return models.char_transformer(spec.num_classes, context=spec.input_shape[0])

    return build


for _problem in (
    Problem("mnist_mlp", "mnist", models.mlp_mnist, 200,
            description="the paper's MNIST MLP 784-1024-200-100-10, tanh"),
    Problem("cifar10_lenet5", "cifar10", models.lenet5, 200,
            description="the paper's LeNet-5 on CIFAR-10, tanh"),
    Problem("cifar10_vgg11", "cifar10", models.vgg11_nobn, 100,
            description="the paper's VGG-11 without BatchNorm on CIFAR-10, ELU"),
    Problem("cifar10_deepmlp", "cifar10", models.deep_mlp, 100,
            description="the paper's MLP 3072-(1024x20)-10 on CIFAR-10, ELU"),
    Problem("fashion_mnist_mlp", "fashion_mnist", models.mlp_mnist, 200,
            description="the paper's MNIST MLP on Fashion-MNIST"),
    Problem("mnist5k_mlp", "mnist5k", _mnist5k_mlp, 20,
            description="MLP 784-128-64-10 tanh on the 5 000 embedded MNIST images"),
    Problem("mnist5k_lenet5", "mnist5k", _mnist5k_lenet5, 20,
            description="LeNet-5 (28x28 padded to 32) on the 5 000 embedded MNIST images"),
    Problem("digits_mlp", "digits", _digits_mlp, 30,
            description="MLP 64-64-32-10 tanh on sklearn's 8x8 digits"),
    Problem("mnist1d_mlp", "mnist1d", _mnist1d_mlp, 30,
            description="MLP 40-128-64-10 ELU on MNIST-1D"),
    Problem("mnist5k_bnresnet", "mnist5k", _mnist5k_bnresnet, 4, batch_size=32,
            description="residual CNN with BatchNorm (conv biases on), ReLU, 19 850 parameters, "
                        "on the 5 000 embedded MNIST images"),
    Problem("pytopics_chartransformer", "pytopics", _char_transformer("pytopics"), 4,
            batch_size=32, curvature_batch_size=32, metric="perplexity", partition="per_module",
            description="causal char transformer (2 pre-LN blocks, d 64, context 64) on 1 024 "
                        "windows of pydoc_data.topics"),
    Problem("tiny_shakespeare_chartransformer", "tiny_shakespeare",
            _char_transformer("tiny_shakespeare"), 10, batch_size=64, curvature_batch_size=64,
            metric="perplexity", partition="per_module",
            description="causal char transformer (2 pre-LN blocks, d 64, context 64) on Tiny "
                        "Shakespeare"),
):  # fmt: skip
    register_problem(_problem)
