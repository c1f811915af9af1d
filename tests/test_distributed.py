"""PartitionedNewton under torch.distributed (2 gloo ranks on the CPU) equals one process on the
union of the ranks' batches (float64, to 1e-6 relative; METHOD.md §4: gradients are averaged
before u is proposed, ḡ, H̄ and the signed D^3 diagonal are averaged before d is taken)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from reference import relative_error
from torch import nn

from optimizers.derivatives import functional_loss
from optimizers.partitioned_newton import GLOBAL, PartitionedNewton

WORLD = 2
STEPS = 9
OPTIONS = {"lr": 0.3, "update_every": 2, "warmup": 1, "average": 2, "lambda_int": 1.0}


def _problem(seed: int):
    """The model, and STEPS training and curvature batches of 2 × 6 examples each."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))

    def batch():
        x = torch.randn(WORLD * 6, 4, generator=gen, dtype=torch.float64)
        return x, torch.randint(0, 3, (WORLD * 6,), generator=gen)

    return model, [batch() for _ in range(STEPS)], [batch() for _ in range(STEPS)]


def _train(model, data, curvature_data, rank: int | None):
    """STEPS steps; with ``rank``, on that rank's half of every batch."""
    optimizer = PartitionedNewton.from_model(model, **OPTIONS)

    def part(tensor):
        return tensor if rank is None else tensor.chunk(WORLD)[rank]

    for (x, y), (x2, y2) in zip(data, curvature_data, strict=True):
        x, y, x2, y2 = part(x), part(y), part(x2), part(y2)

        def closure(x=x, y=y):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        optimizer.step(closure, functional_loss(model, F.cross_entropy, x2, y2))
    return optimizer


def _worker(rank: int, seed: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        model, data, curvature_data = _problem(seed)
        optimizer = _train(model, data, curvature_data, rank)
        eta = optimizer.state[GLOBAL]["eta"]
        torch.save(
            {"params": [p.detach() for p in model.parameters()], "eta": eta}, f"{out}.{rank}"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("single_thread")
def test_two_gloo_ranks_equal_one_process_on_the_union_batch(seed, tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(seed, str(tmp_path / "store"), out), nprocs=WORLD, join=True)
    model, data, curvature_data = _problem(seed)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = _train(model, data, curvature_data, rank=None)
    assert optimizer.state[GLOBAL]["eta"] is not None, "no step was solved: nothing compared"
    moved = max(
        relative_error(p.detach(), q) for p, q in zip(model.parameters(), start, strict=True)
    )
    assert moved > 1e-3
    for rank in range(WORLD):
        result = torch.load(f"{out}.{rank}", weights_only=True)
        assert relative_error(result["eta"], optimizer.state[GLOBAL]["eta"]) <= 1e-6
        for got, want in zip(result["params"], model.parameters(), strict=True):
            assert relative_error(got, want.detach()) <= 1e-6
