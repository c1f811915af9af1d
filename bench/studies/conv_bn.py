"""A conv bias in front of a BatchNorm: the flat-subset case of the README, measured.

    python -m bench.studies.conv_bn [--steps 150] [--seed 0]

Model :func:`conv_bn_cnn` on sklearn's 8×8 digits (scaled to [0, 1]), batches of 32
(and curvature batches of 32) drawn with one seeded generator, 1 thread, the per-tensor
partition. SGD (lr 0.1) and our cubic, saddle-free and order-2 steps (λ1 0.03). Printed per
optimizer: the final training loss on the whole set in eval mode, the largest |conv bias| and
how often each subset was dropped as flat (``PartitionedNewton.flat_counts``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.cli import ArgumentParser, run
from bench.studies.options import positive_int

OPTIMIZERS = {
    "sgd": {"lr": 0.1},
    "partitioned_newton": {"lr": 0.03},
    "partitioned_newton_saddle_free": {"lr": 0.03},
    "partitioned_newton_order2": {"lr": 0.03},
}
BATCH = 32


def conv_bn_cnn(in_channels: int = 1, side: int = 8, classes: int = 10) -> nn.Sequential:
    """Conv2d(3×3, 8, bias on) → BatchNorm2d → ReLU → Linear: the smallest model whose conv bias
    is a subset along which the loss is constant (BatchNorm removes it); PyTorch's init. (Kept
    here, not in bench.models, which every pipeline stage depends on: no stage runs it.)"""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * side * side, classes),
    )  # fmt: skip


def measure(name: str, hyperparameters: dict, steps: int, seed: int) -> dict:
    """Train one optimizer; its final loss, largest |conv bias| and flat counts."""
    from sklearn.datasets import load_digits

    from optimizers.registry import make

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(digits.target)
    torch.manual_seed(seed)
    model = conv_bn_cnn()
    optimizer = make(name, model, hyperparameters)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, len(x), (BATCH,), generator=generator)
        other = torch.randint(0, len(x), (BATCH,), generator=generator)
        curvature = (x[other], y[other]) if optimizer.needs_curvature_batch else None
        optimizer.step((x[rows], y[rows]), curvature)
    model.eval()
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x), y))
    return {
        "loss": loss,
        "max_abs_conv_bias": float(model[0].bias.detach().abs().max()),
        "flat_counts": getattr(optimizer.optimizer, "flat_counts", None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name, hyperparameters in OPTIMIZERS.items():
        found = measure(name, hyperparameters, args.steps, args.seed)
        print(
            f"{name}: final train loss {found['loss']:.3f}, max |conv bias| "
            f"{found['max_abs_conv_bias']:.3g}, flat {found['flat_counts']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
