"""The end-of-epoch evaluation: the mean loss and the problem's quality metric on whole splits,
in eval mode.

The mean is over the predictions: the rows of a classifier's split (logits [N, C], labels [N]),
the B·T tokens of a language model's (logits [B, T, V], next tokens [B, T]). The quality metric
(:data:`bench.schema.QUALITY_METRICS`) is the accuracy (the fraction of correct argmax
predictions over dim 1) or the perplexity (exp of the mean per-token loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench import schema


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss: Callable[..., Tensor],
    x: Tensor,
    y: Tensor,
    batch_size: int,
    metric: str = schema.DEFAULT_METRIC,
) -> tuple[float, float]:
    """(mean loss, quality ``metric``) of ``model`` on ``(x, y)`` in chunks of ``batch_size``
    rows, eval mode. ``loss(outputs, targets, reduction="sum")`` sums over the predictions."""
    quality = schema.quality_metric(metric)
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        outputs = model(x[start : start + batch_size])
        targets = y[start : start + batch_size]
        total_loss += float(loss(outputs, targets, reduction="sum"))
        if quality is schema.ACCURACY:
            correct += int((outputs.argmax(dim=1) == targets).sum())
    model.train(was_training)
    count = y.numel()  # predictions: len(x) for a classifier, B·T tokens for a sequence model
    mean_loss = total_loss / count
    if quality is schema.ACCURACY:
        return mean_loss, correct / count
    return mean_loss, perplexity(mean_loss)


def perplexity(mean_loss: float) -> float:
    """exp(mean per-token cross-entropy): ∞ past float64's range (a diverged run), NaN for NaN."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


def evaluation_values(
    model: nn.Module,
    loss: Callable[..., Tensor],
    train_split: tuple[Tensor, Tensor],
    eval_split: tuple[Tensor, Tensor],
    eval_name: str,
    batch_size: int,
    metric: str = schema.DEFAULT_METRIC,
) -> dict[str, float]:
    """The history values of one evaluation: the whole training split's loss (re-evaluated, not
    the running mean of the minibatch losses), and the evaluation split's loss and quality
    ``metric`` (column ``<eval_name>_<metric>``)."""
    train_loss, _ = evaluate(model, loss, *train_split, batch_size, metric)
    eval_loss, quality = evaluate(model, loss, *eval_split, batch_size, metric)
    return {
        schema.TRAIN_LOSS: train_loss,
        schema.loss_column(eval_name): eval_loss,
        schema.metric_column(metric, eval_name): quality,
    }
