"""One run's inputs and settings: the RNG streams, the model, the optimizer and the batches.

RNG streams, all derived from the run's seed with ``numpy.random.SeedSequence([seed, purpose])``
(:func:`stream_seed`): ``init`` (model weights), ``data`` (epoch e's minibatch order uses
[seed, data, e], so it does not depend on what ran before), ``curvature`` (the start offset of the
curvature batches, which then walk the training split in its stored order, unshuffled, cycling:
batch k covers rows [o + kB', o + (k+1)B') mod N, one batch per step; :class:`CyclicBatches`),
``probe`` (same scheme, its own offset; the batch of :class:`optimizers.probe.LearningRateProbe`)
and ``torch`` (torch's global generator, for optimizers that draw random vectors). Seeds share
initialisation and batches across optimizers: seed s of SGD and seed s of ours start from the
same weights and see the same minibatches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import schema
from bench.config import PlateauConfig

PURPOSES = {"init": 0, "data": 1, "curvature": 2, "probe": 3, "torch": 4}


class CrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy for a classifier and for a sequence model, one criterion for both.

    Logits [N, C] against labels [N]: ``F.cross_entropy`` itself (the same call, the same float
    operations). Logits [B, T, V] against next tokens [B, T]: the mean (or sum) over the B·T
    tokens, the logits flattened to [B·T, V] (the class dimension last, as a language model
    emits it; ``reduction="none"`` gives the per-token losses [B, T]). ``reduction`` may be given
    per call (the evaluation sums); else the module's, which ASDL sets for K-FAC. A
    ``nn.CrossEntropyLoss``, so K-FAC's Fisher is the categorical one.
    """

    def forward(self, input: Tensor, target: Tensor, reduction: str | None = None) -> Tensor:
        reduction = reduction or self.reduction
        if input.dim() > 2 and target.dim() == input.dim() - 1:  # [B, T, V] vs [B, T]
            flat = input.reshape(-1, input.shape[-1])  # [B·T, V]
            losses = F.cross_entropy(flat, target.reshape(-1), reduction=reduction)
            return losses.reshape(target.shape) if reduction == "none" else losses
        return F.cross_entropy(input, target, reduction=reduction)


LOSSES: dict[str, Callable[..., Tensor]] = {"cross_entropy": CrossEntropy()}


def stream_seed(seed: int, purpose: str, *extra: int) -> int:
    """The 63-bit seed of one RNG stream (``purpose`` in :data:`PURPOSES`) of run ``seed``."""
    sequence = np.random.SeedSequence([seed, PURPOSES[purpose], *extra])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run that is not the model, the optimizer or the data.

    ``plateau``: the rule halving λ1 (None: never), applied when its scope covers the optimizer;
    ``probe_every``: steps between two learning-rate probes (None: no probe)."""

    epochs: int
    batch_size: int
    curvature_batch_size: int
    eval_batch_size: int = 1000
    divergence_factor: float = 100.0
    plateau: PlateauConfig | None = None
    probe_every: int | None = None
    probe_batch_size: int = 100
    progress: bool = False
    device: str = "cpu"

    def plateau_applies(self, needs_curvature_batch: bool) -> bool:
        """Whether the plateau rule acts on an optimizer (``ours``: with a curvature batch)."""
        if self.plateau is None:
            return False
        scope = self.plateau.scope
        return scope == "all" or (scope == "ours" and needs_curvature_batch)


class CyclicBatches:
    """Batches of ``size`` rows walking ``(x, y)`` in stored order from ``offset``, wrapping."""

    def __init__(self, x: Tensor, y: Tensor, size: int, offset: int):
        self.x, self.y, self.size = x, y, min(size, len(x))
        self.offset = offset % len(x)

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        start = (self.offset + index * self.size) % len(self.x)
        rows = (torch.arange(self.size, device=self.x.device) + start) % len(self.x)
        return self.x[rows], self.y[rows]


@dataclass
class RunInputs:
    """A model, its optimizer and the data of one run, ready for :func:`run_training`."""

    model: nn.Module
    optimizer: Any
    batches: Callable[[int], Iterator[tuple[Tensor, Tensor]]]
    train_split: tuple[Tensor, Tensor]
    valid_split: tuple[Tensor, Tensor]
    test_split: tuple[Tensor, Tensor]
    loss: str
    metric: str = schema.DEFAULT_METRIC  # the problem's quality metric (bench.schema)


def build_run(
    problem: Any,
    optimizer_name: str,
    hyperparameters: dict[str, Any],
    splits: Any,
    *,
    seed: int,
    batch_size: int,
    device: str,
) -> RunInputs:
    """Model (``init`` stream), registry optimizer and the data of one run on ``device``.

    ``problem``: a :class:`bench.problems.Problem`; ``splits``: :class:`bench.data.Splits`;
    ``hyperparameters`` are used as given (the cells add the problem's partition first,
    :func:`problem_hyperparameters`, so that what they record is what ran). Epoch e's
    minibatches come from ``bench.data.batches`` with the seed [seed, data, e].
    """
    from bench.data import batches
    from optimizers.registry import make

    criterion = problem_criterion(problem)
    model = problem.make_model(stream_seed(seed, "init"), device=device)
    # Optimizers that seed a private stream from the global generator draw it from ours.
    torch.manual_seed(stream_seed(seed, "torch"))
    optimizer = make(optimizer_name, model, hyperparameters, criterion=criterion)

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        return input_tensor(x, device), torch.as_tensor(y, dtype=torch.long, device=device)

    train_split = tensors(splits.x_train, splits.y_train)

    def epoch_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        seed_of_epoch = stream_seed(seed, "data", epoch)
        return batches(*train_split, batch_size, seed=seed_of_epoch, shuffle=True, device=device)

    return RunInputs(
        model=model,
        optimizer=optimizer,
        batches=epoch_batches,
        train_split=train_split,
        valid_split=tensors(splits.x_valid, splits.y_valid),
        test_split=tensors(splits.x_test, splits.y_test),
        loss=problem.loss,
        metric=problem_metric(problem),
    )


def problem_criterion(problem: Any) -> Callable[..., Tensor]:
    """The criterion of ``problem``'s loss (:data:`LOSSES`), for the loop, the loss closures of
    the optimizers (``curvature_loss``) and K-FAC alike; ValueError for an unknown loss."""
    if problem.loss not in LOSSES:
        raise ValueError(f"problem {problem!r}: unknown loss {problem.loss!r}")
    return LOSSES[problem.loss]


def problem_metric(problem: Any) -> str:
    """The name of ``problem``'s quality metric (:data:`bench.schema.QUALITY_METRICS`), checked."""
    return schema.quality_metric(getattr(problem, "metric", schema.DEFAULT_METRIC)).name


def input_tensor(x: np.ndarray | Tensor, device: str | torch.device) -> Tensor:
    """A split's inputs on ``device``: token ids (integers) as int64, anything else as float32
    (images, features), as ``bench.data.batches`` hands out its minibatches."""
    integer = not torch.as_tensor(x[:0]).is_floating_point()
    return torch.as_tensor(x, dtype=torch.long if integer else torch.float32, device=device)


def takes_problem_partition(optimizer_name: str) -> bool | None:
    """Whether a problem's partition applies to the optimizer: True when it takes a
    ``partition`` hyperparameter whose registry default is the library's (one subset per tensor);
    False when its default is another partition, which defines the entry (``cauchy``: S = 1,
    ``single``, is what it is); None when it takes no partition."""
    from optimizers.baselines import PARTITIONED_NEWTON_DEFAULTS
    from optimizers.registry import get_spec

    defaults = get_spec(optimizer_name).defaults
    if "partition" not in defaults:
        return None
    return defaults["partition"] == PARTITIONED_NEWTON_DEFAULTS["partition"]


def problem_hyperparameters(
    problem: Any,
    optimizer_name: str,
    hyperparameters: dict[str, Any],
    *,
    partition: str | None = None,
) -> dict[str, Any]:
    """``hyperparameters`` with a ``partition`` when the problem has one (``partition`` when
    given: params' ``problem_settings``; else ``problem.partition``),
    the optimizer takes a partition and ``hyperparameters`` name none (a partition fixed in params
    ``optimizers.<name>.hyperparameters`` or swept by the tune grid wins): the problem's when it
    applies (:func:`takes_problem_partition`), else the optimizer's own default, written out so
    that the record says which partition ran. Otherwise ``hyperparameters`` unchanged (the same
    dict: a problem without a partition records what it always did)."""
    partition = partition if partition is not None else getattr(problem, "partition", None)
    if partition is None or "partition" in hyperparameters:
        return hyperparameters
    applies = takes_problem_partition(optimizer_name)
    if applies is None:
        return hyperparameters
    if not applies:
        from optimizers.registry import get_spec

        partition = get_spec(optimizer_name).defaults["partition"]
    return {**hyperparameters, "partition": partition}


def setup_torch(threads: int, deterministic: bool) -> None:
    """Fix torch's intra-op thread count and, when asked, deterministic kernels (warn only).

    ``torch.use_deterministic_algorithms`` also sets a flag of torch._inductor, whose import
    costs ~2 s per process (×100 DVC cells); nothing here compiles with inductor, so the same
    kernel switch is set directly through ``torch._C`` when that entry point exists.
    """
    torch.set_num_threads(threads)
    if not deterministic:
        return
    switch = getattr(torch._C, "_set_deterministic_algorithms", None)
    if switch is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        switch(True, warn_only=True)
    assert torch.are_deterministic_algorithms_enabled()
