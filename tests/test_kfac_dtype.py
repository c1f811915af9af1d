"""K-FAC (ASDL) in float64 on a model with an nn.Embedding: the invariance study's dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("asdl")


class TinyLM(nn.Module):
    def __init__(self, vocabulary: int = 7, width: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kfac_steps_an_embedding_model_in_its_own_dtype(dtype):
    from bench.training.runs import LOSSES
    from optimizers.registry import make

    torch.manual_seed(0)
    model = TinyLM().to(dtype)
    optimizer = make("kfac", model, {"lr": 0.1, "seed": 0}, criterion=LOSSES["cross_entropy"])
    tokens = torch.randint(0, 7, (4, 6))
    targets = torch.randint(0, 7, (4, 6))
    before = model.embed.weight.detach().clone()
    losses = [float(optimizer.step((tokens, targets))) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert model.embed.weight.dtype == dtype
    assert not torch.equal(model.embed.weight, before)  # the embedding is preconditioned and moves


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_kfac_on_a_diverged_model_returns_its_nonfinite_loss_instead_of_asdls_error(bad):
    """A run diverged to non-finite weights: ASDL's Monte-Carlo Fisher (torch.distributions
    validating the softmax) raised ValueError at the next curvature update, which ended the
    whole tune stage (K-FAC at lr 0.1 on the character transformer). The step now returns the
    non-finite loss, the training loop's divergence signal, and leaves the weights alone."""
    from bench.training.runs import LOSSES
    from optimizers.registry import make

    torch.manual_seed(0)
    model = TinyLM()
    every = {"lr": 0.1, "seed": 0, "curvature_update_every": 1}  # the next step samples
    optimizer = make("kfac", model, every, criterion=LOSSES["cross_entropy"])
    tokens, targets = torch.randint(0, 7, (4, 6)), torch.randint(0, 7, (4, 6))
    assert torch.isfinite(optimizer.step((tokens, targets)))
    checked = []
    real = optimizer._nonfinite_loss
    optimizer._nonfinite_loss = lambda *a: checked.append(1) or real(*a)
    with torch.no_grad():
        model.head.weight[0, 0] = bad
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss = optimizer.step((tokens, targets))  # a curvature update (every step by default)
    assert not torch.isfinite(loss)
    same = lambda a, b: torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))  # noqa: E731
    assert all(same(state[k], v) for k, v in model.state_dict().items())  # no step taken
    assert checked == [1]  # through ASDL's error, not a plain NaN step


def test_kfac_still_raises_asdls_error_when_the_loss_is_finite(monkeypatch):
    """Only a non-finite loss is taken for divergence: another ValueError inside ASDL stays one."""
    from bench.training.runs import LOSSES
    from optimizers.registry import make

    torch.manual_seed(0)
    model = TinyLM()
    optimizer = make("kfac", model, {"lr": 0.1, "seed": 0}, criterion=LOSSES["cross_entropy"])

    def broken():
        raise ValueError("something else inside ASDL")

    monkeypatch.setattr(optimizer.grad_maker, "forward_and_backward", broken)
    with pytest.raises(ValueError, match="something else inside ASDL"):
        optimizer.step((torch.randint(0, 7, (4, 6)), torch.randint(0, 7, (4, 6))))
