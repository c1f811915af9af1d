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
