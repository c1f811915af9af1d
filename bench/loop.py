"""The training loop shared by the tune and train stages: epochs, evaluation, divergence, the
plateau halving of λ1, the learning-rate probe and resumable checkpoints.

One run = one (problem, optimizer, hyperparameters, seed). Per epoch (epoch 0 = before training):

- the training loss is **re-evaluated** on the whole training split at the end of the epoch (not
  the running mean of the minibatch losses), the evaluation split's loss and accuracy likewise;
- ``wall_clock`` counts only the optimisation steps (batch transfer + ``optimizer.step``), not the
  evaluations, the probe or the checkpoints;
- **divergence** (METHOD.md §7): a non-finite minibatch loss, or an end-of-epoch training loss that
  is not finite or exceeds ``divergence_factor`` (100) × the previous epoch's. The epoch is recorded
  with ``diverged = 1`` and training stops; nothing is dropped or back-filled;
- **plateau** (METHOD.md §4): when ``scope`` covers the optimizer (``ours``: the optimizers that
  take a curvature batch), λ1 = ``optimizer.lr`` is multiplied by ``factor`` (½) once the
  training loss has failed for ``patience`` (2) consecutive epochs to improve on its best by a
  relative ``threshold`` (1e-4); the count then restarts. (torch's ReduceLROnPlateau waits
  ``patience + 1`` epochs; here ``patience`` stalled epochs suffice, as METHOD.md words it.)

RNG streams, all derived from the run's seed with ``numpy.random.SeedSequence([seed, purpose])``:
``init`` (model weights), ``data`` (epoch e's minibatch order uses [seed, data, e], so it does
not depend on what ran before), ``curvature`` (the start offset of the curvature batches, which
then walk the training split in its stored order, unshuffled, cycling: batch k covers rows
[o + kB', o + (k+1)B') mod N, one batch per step), ``probe`` (same scheme, its own offset; the
batch of :class:`optimizers.probe.LearningRateProbe`, η* = H̄⁻¹ḡ along the step taken) and
``torch`` (torch's global generator, for optimizers that draw random vectors). Resuming from a
checkpoint restores the model, the optimizer's state_dict, λ1, torch's RNG state, the plateau
counters, the history and the step count, so a resumed run is bitwise identical on CPU.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.config import PlateauConfig
from bench.io import write_bytes_atomic
from optimizers.derivatives import functional_loss

PURPOSES = {"init": 0, "data": 1, "curvature": 2, "probe": 3, "torch": 4}
LOSSES: dict[str, Callable[..., Tensor]] = {"cross_entropy": F.cross_entropy}
PROGRESS_ENV = "HOBENCH_PROGRESS"  # "0" disables the progress bars


def stream_seed(seed: int, purpose: str, *extra: int) -> int:
    """The 63-bit seed of one RNG stream (``purpose`` in :data:`PURPOSES`) of run ``seed``."""
    sequence = np.random.SeedSequence([seed, PURPOSES[purpose], *extra])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run that is not the model, the optimizer or the data."""

    epochs: int
    batch_size: int
    curvature_batch_size: int
    eval_batch_size: int = 1000
    divergence_factor: float = 100.0
    plateau: PlateauConfig = field(default_factory=PlateauConfig)
    probe_every: int | None = None  # None: no probe
    probe_batch_size: int = 100
    progress: bool = False
    device: str = "cpu"


@dataclass
class RunResult:
    history: list[dict[str, float]]  # one row per epoch, epoch 0 first
    probe: list[dict[str, Any]]  # probe.csv rows (empty without a probe)
    steps: int
    diverged: bool
    diverged_epoch: int | None
    resumed_from: int | None  # epoch of the checkpoint the run resumed from


class CyclicBatches:
    """Batches of ``size`` rows walking ``(x, y)`` in stored order from ``offset``, wrapping."""

    def __init__(self, x: Tensor, y: Tensor, size: int, offset: int):
        self.x, self.y, self.size = x, y, min(size, len(x))
        self.offset = offset % len(x)

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        start = (self.offset + index * self.size) % len(self.x)
        rows = (torch.arange(self.size, device=self.x.device) + start) % len(self.x)
        return self.x[rows], self.y[rows]


@torch.no_grad()
def evaluate(
    model: nn.Module, loss: Callable[..., Tensor], x: Tensor, y: Tensor, batch_size: int
) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``(x, y)`` in chunks of ``batch_size``, eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        outputs = model(x[start : start + batch_size])
        targets = y[start : start + batch_size]
        total_loss += float(loss(outputs, targets, reduction="sum"))
        correct += int((outputs.argmax(dim=1) == targets).sum())
    model.train(was_training)
    return total_loss / len(x), correct / len(x)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists and belongs to this run (same fingerprint)."""
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - an unreadable checkpoint is discarded, not fatal
        print(f"ignoring unreadable checkpoint {path}: {error}", file=sys.stderr)
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"ignoring checkpoint {path}: it belongs to other settings", file=sys.stderr)
        return None
    return state


def _progress_enabled(requested: bool) -> bool:
    return requested and os.environ.get(PROGRESS_ENV, "1") != "0" and sys.stderr.isatty()


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_training(
    model: nn.Module,
    optimizer: Any,
    batches: Callable[[int], Iterator[tuple[Tensor, Tensor]]],
    train_split: tuple[Tensor, Tensor],
    eval_split: tuple[Tensor, Tensor],
    *,
    seed: int,
    settings: RunSettings,
    loss: str = "cross_entropy",
    eval_name: str = "test",
    checkpoint: Path | None = None,
    fingerprint: str = "",
    on_epoch_end: Callable[[int], None] | None = None,
    description: str = "",
) -> RunResult:
    """Train ``model`` with ``optimizer`` (a registry TrainingOptimizer) for ``settings.epochs``.

    ``batches(epoch)`` yields the minibatches of that epoch (epochs count from 1);
    ``train_split``/``eval_split`` are the whole splits as tensors on the device. History rows:
    epoch, step, train_loss, <eval_name>_loss, <eval_name>_accuracy, wall_clock, lr, diverged,
    then ``diag/<key>`` for each key of ``optimizer.diagnostics()``. With ``checkpoint``, the
    state is saved there atomically after every epoch and a matching one is resumed from.
    ``on_epoch_end(epoch)`` runs after the checkpoint of each epoch (tests use it to "kill" a run).
    """
    criterion = LOSSES[loss]
    x_train, y_train = train_split
    curvature = CyclicBatches(
        x_train, y_train, settings.curvature_batch_size, stream_seed(seed, "curvature")
    )
    probe_batches = CyclicBatches(
        x_train, y_train, settings.probe_batch_size, stream_seed(seed, "probe")
    )
    probe = None
    if settings.probe_every:
        from optimizers.probe import LearningRateProbe

        probe = LearningRateProbe(model, every=settings.probe_every)  # one subset per tensor
    needs_curvature = bool(optimizer.needs_curvature_batch)
    scope = settings.plateau.scope
    plateau_on = scope == "all" or (scope == "ours" and needs_curvature)

    def row(epoch: int, step: int, wall_clock: float, diverged: bool) -> dict[str, float]:
        train_loss, _ = evaluate(model, criterion, x_train, y_train, settings.eval_batch_size)
        eval_loss, accuracy = evaluate(model, criterion, *eval_split, settings.eval_batch_size)
        values = {
            "epoch": epoch,
            "step": step,
            "train_loss": train_loss,
            f"{eval_name}_loss": eval_loss,
            f"{eval_name}_accuracy": accuracy,
            "wall_clock": wall_clock,
            "lr": float(optimizer.lr),
            "diverged": int(diverged),
        }
        values |= {f"diag/{k}": float(v) for k, v in optimizer.diagnostics().items()}
        return values

    state = load_checkpoint(checkpoint, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        optimizer.lr = state["lr"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, probe_records = state["history"], state["probe"]
        step, wall_clock, start = state["step"], state["wall_clock"], state["epoch"]
        best, stalled = state["plateau_best"], state["plateau_stalled"]
        if probe is not None:
            probe.steps = step  # the probe is due on the same steps as without the interruption
    else:
        torch.manual_seed(stream_seed(seed, "torch"))
        history, probe_records, step, wall_clock, start = [], [], 0, 0.0, 0
        history.append(row(0, 0, 0.0, False))
        best, stalled = history[0]["train_loss"], 0

    from tqdm.auto import tqdm

    bar = tqdm(
        total=settings.epochs,
        initial=start,
        desc=description,
        unit="epoch",
        file=sys.stderr,
        disable=not _progress_enabled(settings.progress),
        leave=False,
    )
    diverged_epoch = None
    for epoch in range(start + 1, settings.epochs + 1):
        nonfinite = False
        for inputs, targets in batches(epoch):
            probed = probe is not None and probe.before_step()  # snapshot θ_t when due
            curvature_batch = curvature.batch(step) if needs_curvature else None
            started = time.perf_counter()
            batch_loss = optimizer.step((inputs, targets), curvature_batch)
            _synchronize(settings.device)
            wall_clock += time.perf_counter() - started
            step += 1
            if not math.isfinite(float(batch_loss)):
                nonfinite = True
                break
            if probed:
                x_probe, y_probe = probe_batches.batch((step - 1) // settings.probe_every)
                probe_loss = functional_loss(model, criterion, x_probe, y_probe)
                probe_records.extend(probe.after_step(probe_loss))
            elif probe is not None:
                probe.after_step()
        previous = history[-1]["train_loss"]
        current = row(epoch, step, wall_clock, False)
        loss_now = current["train_loss"]
        diverged = (
            nonfinite
            or not math.isfinite(loss_now)
            or loss_now > settings.divergence_factor * previous
        )
        current["diverged"] = int(diverged)
        history.append(current)
        bar.update(1)
        bar.set_postfix(train_loss=f"{loss_now:.4g}", lr=f"{optimizer.lr:.3g}")
        if diverged:
            diverged_epoch = epoch
            break
        if plateau_on:
            if loss_now < best * (1.0 - settings.plateau.threshold):
                best, stalled = loss_now, 0
            else:
                stalled += 1
                if stalled >= settings.plateau.patience:
                    optimizer.lr = optimizer.lr * settings.plateau.factor
                    stalled = 0
        if checkpoint is not None and epoch < settings.epochs:
            _save_checkpoint(
                checkpoint,
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "step": step,
                    "wall_clock": wall_clock,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr": optimizer.lr,
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all()
                    if torch.cuda.is_available()
                    else None,
                    "history": history,
                    "probe": probe_records,
                    "plateau_best": best,
                    "plateau_stalled": stalled,
                },
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    bar.close()
    return RunResult(
        history=history,
        probe=probe_records,
        steps=step,
        diverged=diverged_epoch is not None,
        diverged_epoch=diverged_epoch,
        resumed_from=None if state is None else state["epoch"],
    )


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

    ``problem``: a :class:`bench.problems.Problem`; ``splits``: :class:`bench.data.Splits`.
    Epoch e's minibatches come from ``bench.data.batches`` with the seed [seed, data, e].
    """
    from bench.data import batches
    from optimizers.registry import make

    if problem.loss not in LOSSES:
        raise ValueError(f"problem {problem!r}: unknown loss {problem.loss!r}")
    model = problem.make_model(stream_seed(seed, "init"), device=device)
    # Optimizers that seed a private stream from the global generator draw it from ours.
    torch.manual_seed(stream_seed(seed, "torch"))
    optimizer = make(optimizer_name, model, hyperparameters, criterion=LOSSES[problem.loss])

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        return (
            torch.as_tensor(x, dtype=torch.float32, device=device),
            torch.as_tensor(y, dtype=torch.long, device=device),
        )

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
    )


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
