"""The end-of-epoch evaluation: mean loss and accuracy on whole splits, in eval mode."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench import schema


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


def evaluation_values(
    model: nn.Module,
    loss: Callable[..., Tensor],
    train_split: tuple[Tensor, Tensor],
    eval_split: tuple[Tensor, Tensor],
    eval_name: str,
    batch_size: int,
) -> dict[str, float]:
    """The history values of one evaluation: the whole training split's loss (re-evaluated, not
    the running mean of the minibatch losses), and the evaluation split's loss and accuracy."""
    train_loss, _ = evaluate(model, loss, *train_split, batch_size)
    eval_loss, accuracy = evaluate(model, loss, *eval_split, batch_size)
    return {
        schema.TRAIN_LOSS: train_loss,
        schema.loss_column(eval_name): eval_loss,
        schema.accuracy_column(eval_name): accuracy,
    }
