"""The training loop: a :class:`LoopState` driven epoch by epoch, with its policies.

One run = one (problem, optimizer, hyperparameters, seed). Per epoch (epoch 0 = before training):

- the training loss is **re-evaluated** on the whole training split at the end of the epoch
  (:mod:`bench.training.evaluation`), the evaluation split's loss and the problem's quality
  metric (accuracy or perplexity) likewise;
- ``wall_clock`` counts only the optimisation steps (``optimizer.step`` and the device
  synchronisation), not the evaluations, the probe or the checkpoints;
- **divergence** (METHOD.md §7): a non-finite minibatch loss, or an end-of-epoch training loss that
  is not finite or exceeds ``divergence_factor`` (100) × the previous epoch's. The epoch is recorded
  with ``diverged = 1`` and training stops; nothing is dropped or back-filled;
- **plateau** (METHOD.md §4): :class:`bench.training.plateau.Plateau`, when the settings' scope
  covers the optimizer (``ours``: the optimizers that take a curvature batch);
- **probe** (METHOD.md §3): with ``probe_every``, :class:`optimizers.probe.LearningRateProbe`
  along the step the optimizer takes, on its own cyclic batch;
- **checkpoints**: with ``checkpoint``, the whole state (model, optimizer, λ1, torch's RNG state,
  the plateau's and the loop's state) is saved there atomically after every epoch but the last,
  and a checkpoint of the same ``fingerprint`` is resumed from, so a resumed run is bitwise
  identical on CPU. A checkpoint that cannot be read, belongs to other settings or has another
  structure is ignored with a warning.
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

import torch
from torch import Tensor, nn

from bench import schema
from bench.io import write_bytes_atomic
from bench.training.evaluation import evaluation_values
from bench.training.plateau import Plateau
from bench.training.runs import LOSSES, CyclicBatches, RunSettings, stream_seed
from optimizers.derivatives import functional_loss

PROGRESS_ENV = "HOBENCH_PROGRESS"  # "0" disables the progress bars
CHECKPOINT_FORMAT = 2  # bumped when the checkpoint's structure changes (older ones are ignored)
CHECKPOINT_KEYS = ("format", "fingerprint", "loop", "plateau", "model", "optimizer", "lr",
                   "torch_rng", "cuda_rng")  # fmt: skip


@dataclass
class RunResult:
    history: list[dict[str, float]]  # one row per epoch, epoch 0 first
    probe: list[dict[str, Any]]  # probe.csv rows (empty without a probe)
    steps: int
    diverged: bool
    diverged_epoch: int | None
    resumed_from: int | None  # epoch of the checkpoint the run resumed from


@dataclass
class LoopState:
    """Where a run stands: the last finished epoch, steps taken, optimisation seconds, the
    history rows so far and the probe records."""

    epoch: int = 0
    step: int = 0
    wall_clock: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    probe: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "wall_clock": self.wall_clock,
            "history": self.history,
            "probe": self.probe,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.wall_clock = float(state["wall_clock"])
        self.history, self.probe = list(state["history"]), list(state["probe"])


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists, is readable, has this loop's structure and
    belongs to this run (same fingerprint); None, with a warning on stderr, otherwise."""
    if path is None:
        return None
    for stray in path.parent.glob(f".{path.name}.*.tmp"):  # a write killed before its rename
        print(f"removing the partial checkpoint {stray}", file=sys.stderr)
        stray.unlink(missing_ok=True)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - an unreadable checkpoint is discarded, not fatal
        print(f"ignoring unreadable checkpoint {path}: {error}", file=sys.stderr)
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        print(f"ignoring checkpoint {path}: not a checkpoint of this loop", file=sys.stderr)
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"ignoring checkpoint {path}: it belongs to other settings or code", file=sys.stderr)
        return None
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        print(f"ignoring checkpoint {path}: it lacks {missing}", file=sys.stderr)
        return None
    return state


def _progress_enabled(requested: bool) -> bool:
    return requested and os.environ.get(PROGRESS_ENV, "1") != "0" and sys.stderr.isatty()


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Run:
    """The pieces of one :func:`run_training` call (see there), epoch by epoch."""

    def __init__(self, model, optimizer, train_split, eval_split, *, seed, settings, loss,
                 eval_name, metric):  # fmt: skip
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.criterion, self.metric = LOSSES[loss], metric
        self.train_split, self.eval_split, self.eval_name = train_split, eval_split, eval_name
        x_train, y_train = train_split
        self.curvature = CyclicBatches(
            x_train, y_train, settings.curvature_batch_size, stream_seed(seed, "curvature")
        )
        self.probe_batches = CyclicBatches(
            x_train, y_train, settings.probe_batch_size, stream_seed(seed, "probe")
        )
        self.probe = None
        if settings.probe_every:
            from optimizers.probe import LearningRateProbe

            self.probe = LearningRateProbe(model, every=settings.probe_every)  # one per tensor
        self.needs_curvature = bool(optimizer.needs_curvature_batch)
        self.plateau = None
        if settings.plateau_applies(self.needs_curvature):
            rule = settings.plateau
            self.plateau = Plateau(
                optimizer, threshold=rule.threshold, patience=rule.patience, factor=rule.factor
            )
        self.state = LoopState()

    def row(self, diverged: bool) -> dict[str, float]:
        """The history row of the current state (evaluates the model)."""
        values: dict[str, float] = {schema.EPOCH: self.state.epoch, schema.STEP: self.state.step}
        values |= evaluation_values(
            self.model, self.criterion, self.train_split, self.eval_split, self.eval_name,
            self.settings.eval_batch_size, self.metric,
        )  # fmt: skip
        values |= {
            schema.WALL_CLOCK: self.state.wall_clock,
            schema.LR: float(self.optimizer.lr),
            schema.DIVERGED: int(diverged),
        }
        diagnostics = self.optimizer.diagnostics().items()
        values |= {schema.diagnostic_column(k): float(v) for k, v in diagnostics}
        return values

    def start(self, seed: int) -> None:
        """A fresh run: torch's stream seeded, epoch 0 evaluated, the plateau's reference set."""
        torch.manual_seed(stream_seed(seed, "torch"))
        self.state.history.append(self.row(False))
        if self.plateau is not None:
            self.plateau.step(self.state.history[0][schema.TRAIN_LOSS])

    def resume(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.optimizer.lr = checkpoint["lr"]
        torch.set_rng_state(checkpoint["torch_rng"])
        if checkpoint["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        self.state.load_state_dict(checkpoint["loop"])
        if self.plateau is not None:
            self.plateau.load_state_dict(checkpoint["plateau"])
        if self.probe is not None:
            self.probe.steps = self.state.step  # due on the same steps as without interruption

    def checkpoint(self, fingerprint: str) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "loop": self.state.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr": self.optimizer.lr,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
        }

    def train_epoch(self, batches: Iterator[tuple[Tensor, Tensor]]) -> bool:
        """One epoch of steps; False when a minibatch loss was not finite (the epoch stops)."""
        state, probe, every = self.state, self.probe, self.settings.probe_every
        for inputs, targets in batches:
            probed = probe is not None and probe.before_step()  # snapshot θ_t when due
            curvature_batch = self.curvature.batch(state.step) if self.needs_curvature else None
            started = time.perf_counter()
            batch_loss = self.optimizer.step((inputs, targets), curvature_batch)
            _synchronize(self.settings.device)
            state.wall_clock += time.perf_counter() - started
            state.step += 1
            if not math.isfinite(float(batch_loss)):
                return False
            if probed:
                x_probe, y_probe = self.probe_batches.batch((state.step - 1) // every)
                probe_loss = functional_loss(self.model, self.criterion, x_probe, y_probe)
                state.probe.extend(probe.after_step(probe_loss))
            elif probe is not None:
                probe.after_step()
        return True

    def end_epoch(self, finite: bool) -> bool:
        """Record the epoch's row; True when the run diverged (then training stops)."""
        previous = self.state.history[-1][schema.TRAIN_LOSS]
        current = self.row(False)
        loss = current[schema.TRAIN_LOSS]
        factor = self.settings.divergence_factor
        diverged = not finite or not math.isfinite(loss) or loss > factor * previous
        current[schema.DIVERGED] = int(diverged)
        self.state.history.append(current)
        if not diverged and self.plateau is not None:
            self.plateau.step(loss)
        return diverged


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
    eval_name: str = schema.TEST_SPLIT,
    metric: str = schema.DEFAULT_METRIC,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    on_epoch_end: Callable[[int], None] | None = None,
    description: str = "",
) -> RunResult:
    """Train ``model`` with ``optimizer`` (a registry TrainingOptimizer) for ``settings.epochs``.

    ``batches(epoch)`` yields the minibatches of that epoch (epochs count from 1);
    ``train_split``/``eval_split`` are the whole splits as tensors on the device. History rows:
    :func:`bench.schema.history_columns` (``eval_name`` in two of them, the problem's quality
    ``metric`` in one), then ``diag/<key>`` for each key of ``optimizer.diagnostics()``.
    ``on_epoch_end(epoch)`` runs after the checkpoint of each epoch (tests use it to "kill" a
    run).
    """
    from tqdm.auto import tqdm

    run = _Run(model, optimizer, train_split, eval_split, seed=seed, settings=settings, loss=loss,
               eval_name=eval_name, metric=metric)  # fmt: skip
    saved = load_checkpoint(checkpoint, fingerprint)
    if saved is not None:
        run.resume(saved)
    else:
        run.start(seed)
    state = run.state
    quiet = not _progress_enabled(settings.progress)
    bar = tqdm(total=settings.epochs, initial=state.epoch, desc=description, unit="epoch",
               file=sys.stderr, disable=quiet, leave=False)  # fmt: skip
    diverged_epoch = None
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        finite = run.train_epoch(batches(epoch))
        state.epoch = epoch
        diverged = run.end_epoch(finite)
        bar.update(1)
        bar.set_postfix(train_loss=f"{state.history[-1][schema.TRAIN_LOSS]:.4g}",
                        lr=f"{optimizer.lr:.3g}")  # fmt: skip
        if diverged:
            diverged_epoch = epoch
            break
        if checkpoint is not None and epoch < settings.epochs:
            _save_checkpoint(checkpoint, run.checkpoint(fingerprint))
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    bar.close()
    return RunResult(
        history=state.history,
        probe=state.probe,
        steps=state.step,
        diverged=diverged_epoch is not None,
        diverged_epoch=diverged_epoch,
        resumed_from=None if saved is None else saved["loop"]["epoch"],
    )
