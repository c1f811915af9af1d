"""The quality metric as a property of the problem: the run record's names (bench.schema), the one
cross-entropy criterion for classifiers and sequence models, and the evaluation's perplexity.

References are independent: log-softmax and gather in float64 per token, ``F.cross_entropy``
with the class dimension moved (its own [B, V, T] form), fresh random inputs over several shapes
and seeds (the conftest ``seed``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import schema
from bench.training.evaluation import evaluate
from bench.training.runs import LOSSES, input_tensor

CROSS_ENTROPY = LOSSES["cross_entropy"]


def _reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-prediction cross-entropy in float64: −log softmax(logits)[target], class dim last."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    return -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("shape", [(1, 2), (7, 3), (64, 10)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_classifier_logits_give_exactly_f_cross_entropy(seed, shape, reduction):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=generator)
    labels = torch.randint(0, shape[1], shape[:1], generator=generator)
    ours = CROSS_ENTROPY(logits, labels, reduction=reduction)
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, reduction=reduction),
                               rtol=0, atol=0)  # fmt: skip
    assert torch.equal(CROSS_ENTROPY(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 5, 7), (4, 16, 30)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sequence_logits_give_the_mean_per_token_cross_entropy(seed, shape, dtype):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=generator, dtype=dtype)
    tokens = torch.randint(0, shape[-1], shape[:2], generator=generator)
    reference = _reference(logits, tokens)
    # float32 results are compared after .double(): at float32's tolerances, not float64's
    tolerance = (
        {"rtol": 1e-12, "atol": 0} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    )
    mean = CROSS_ENTROPY(logits, tokens)
    torch.testing.assert_close(mean.double(), reference.mean(), **tolerance)
    total = CROSS_ENTROPY(logits, tokens, reduction="sum")
    torch.testing.assert_close(total.double(), reference.sum(), **tolerance)
    moved = F.cross_entropy(logits.transpose(1, 2), tokens)  # torch's [B, V, T] convention
    torch.testing.assert_close(mean, moved, **tolerance)
    per_token = CROSS_ENTROPY(logits, tokens, reduction="none")
    assert per_token.shape == shape[:2]
    torch.testing.assert_close(per_token.double(), reference, **tolerance)
    # the gradient too (what the optimizers' loss closures differentiate)
    leaf = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(CROSS_ENTROPY(leaf, tokens), leaf)
    expected = (torch.softmax(logits.double(), -1) - F.one_hot(tokens, shape[-1]).double()) / (
        shape[0] * shape[1]
    )
    torch.testing.assert_close(grad.double(), expected, **tolerance)


def test_the_criterion_is_kfacs_categorical_fisher_and_honours_asdls_reduction():
    from optimizers.baselines import _asdl_loss_type

    assert _asdl_loss_type(CROSS_ENTROPY) == "cross_entropy"
    logits, tokens = torch.randn(2, 3, 4), torch.randint(0, 4, (2, 3))
    CROSS_ENTROPY.reduction = "sum"  # what ASDL does around its call
    try:
        torch.testing.assert_close(CROSS_ENTROPY(logits, tokens), _reference(logits, tokens).sum()
                                   .float())  # fmt: skip
    finally:
        CROSS_ENTROPY.reduction = "mean"


class _Bigram(nn.Module):
    """Logits [B, T, V] from an embedding of each token (a tiny language model)."""

    def __init__(self, vocabulary: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.table = nn.Embedding(vocabulary, vocabulary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x)


@pytest.mark.parametrize(("rows", "context", "vocabulary"), [(5, 3, 4), (37, 8, 11)])
def test_evaluation_perplexity_is_exp_of_the_mean_token_loss_whatever_the_chunks(
    seed, rows, context, vocabulary
):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocabulary, (rows, context), generator=generator)
    y = torch.randint(0, vocabulary, (rows, context), generator=generator)
    model = _Bigram(vocabulary, seed)
    with torch.no_grad():
        reference = float(_reference(model(x), y).mean())
    for chunk in (1, 4, 1000):
        loss, perplexity = evaluate(model, CROSS_ENTROPY, x, y, chunk, "perplexity")
        assert loss == pytest.approx(reference, rel=1e-6)
        assert perplexity == pytest.approx(math.exp(reference), rel=1e-6)
    loss, accuracy = evaluate(model, CROSS_ENTROPY, x[:, 0].clone(), y[:, 0].clone(), 3)
    assert 0.0 <= accuracy <= 1.0  # a classifier's evaluation is untouched (test_stages)


def test_perplexity_beyond_float_range_is_infinite_not_an_error():
    from bench.training.evaluation import perplexity

    assert perplexity(1e4) == math.inf and math.isnan(perplexity(math.nan))
    assert perplexity(0.0) == 1.0


def test_token_inputs_stay_int64_as_the_minibatches_do():
    from bench.data import batches

    tokens = np.array([[0, 5], [3, 2**40]], dtype=np.int64)  # beyond float32's exact integers
    assert input_tensor(tokens, "cpu").dtype == torch.int64
    assert torch.equal(input_tensor(tokens, "cpu"), torch.as_tensor(tokens))
    assert input_tensor(np.zeros((2, 3), np.float32), "cpu").dtype == torch.float32
    assert input_tensor(torch.tensor([[1, 2]]), "cpu").dtype == torch.int64
    (x, _), *_ = batches(input_tensor(tokens, "cpu"), torch.zeros(2, dtype=torch.long), 2, seed=0)
    assert x.dtype == torch.int64 and int(x.max()) == 2**40


# ----------------------------------------------------------------------------- the schema API
def test_a_metrics_names_and_direction():
    accuracy, perplexity = schema.QUALITY_METRICS["accuracy"], schema.QUALITY_METRICS["perplexity"]
    assert (accuracy.higher_is_better, perplexity.higher_is_better) == (True, False)
    assert schema.metric_column("perplexity", "valid") == "valid_perplexity"
    assert schema.final_metric_key("perplexity") == "final_test_perplexity"
    assert schema.best_metric_key("accuracy") == "best_test_accuracy"
    assert perplexity.best([3.0, math.nan, 2.5, 4.0]) == 2.5 and accuracy.best([0.1, 0.7]) == 0.7
    assert math.isnan(perplexity.best([math.nan]))
    assert perplexity.outside(0.99) and not perplexity.outside(math.inf)
    assert accuracy.outside(1.5) and not accuracy.outside(math.nan)
    with pytest.raises(ValueError, match="unknown quality metric 'bleu'"):
        schema.quality_metric("bleu")


def test_an_accuracy_problems_record_is_what_it_always_was():
    assert schema.metrics_keys() == schema.METRICS_KEYS == schema.metrics_keys("accuracy")
    assert schema.history_columns() == [
        "epoch", "step", "train_loss", "test_loss", "test_accuracy", "wall_clock", "lr",
        "diverged",
    ]  # fmt: skip
    language_model = schema.metrics_keys("perplexity")
    assert [k for k in language_model if "perplexity" in k] == [
        "final_test_perplexity", "best_test_perplexity",
    ]  # fmt: skip
    assert [k.replace("perplexity", "accuracy") for k in language_model] == list(
        schema.METRICS_KEYS
    )


@pytest.mark.parametrize(
    ("keys", "expected"),
    [(["final_test_accuracy", "x"], "accuracy"), (["final_test_perplexity"], "perplexity"),
     ([], None), (["final_test_accuracy", "final_test_perplexity"], None)],
)  # fmt: skip
def test_a_record_names_its_metric_by_its_keys(keys, expected):
    if expected is None:
        with pytest.raises(ValueError, match="expected exactly one of"):
            schema.metric_of(keys)
    else:
        assert schema.metric_of(keys).name == expected
