"""The plateau rule (METHOD.md §4): halve λ1 when the epoch's training loss stalls.

Shaped like ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (``step(loss)``, ``state_dict()``,
``load_state_dict()``) but counting as METHOD.md words it, which moves the numbers if swapped
for torch's: the first ``step`` gives the reference loss (the training loss at epoch 0, before
training); after that, an epoch whose loss is not below ``best × (1 − threshold)`` is a stalled
epoch, and once ``patience`` epochs have stalled in a row ``optimizer.lr`` is multiplied by
``factor`` and the count restarts (torch's rule waits ``patience + 1`` epochs). An improving epoch
becomes the new best and resets the count.
"""

from __future__ import annotations

from typing import Any


class Plateau:
    """Multiplies ``optimizer.lr`` (any object with a settable ``lr``) by ``factor``."""

    def __init__(self, optimizer: Any, *, threshold: float, patience: int, factor: float):
        self.optimizer = optimizer
        self.threshold, self.patience, self.factor = float(threshold), int(patience), float(factor)
        self.best: float | None = None  # the reference loss, set by the first step
        self.stalled = 0

    def step(self, loss: float) -> bool:
        """Account for one epoch's training loss; True when the learning rate was reduced."""
        if self.best is None:
            self.best = loss
            return False
        if loss < self.best * (1.0 - self.threshold):
            self.best, self.stalled = loss, 0
            return False
        self.stalled += 1
        if self.stalled < self.patience:
            return False
        self.optimizer.lr = self.optimizer.lr * self.factor
        self.stalled = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "stalled": self.stalled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.stalled = state["best"], int(state["stalled"])
