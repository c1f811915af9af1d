"""Equal-steps study behind the optimizer's smoke test: PartitionedNewton against SGD, both tuned.

The setting of ``tests/test_partitioned_newton.py::test_paper_mlp_trains_on_embedded_mnist``:
the paper's MLP 784-1024-200-100-10 (tanh, paper init, ``torch.manual_seed(seed)``) on the first
3 000 embedded MNIST images (``mnist5k``, split seed 0), training batches of 100 taken in order and
cycled, three curvature batches of ``--curvature-batch`` images from the next ones (cycled), one
thread. After each count of ``--steps`` it records the loss on the 3 000 training images.

Each family gets its own grid, so neither is compared at a hand-picked setting: SGD (momentum 0.9)
over ``--sgd-lr``; ours over λ1 (``--lr``) × ``--partitions`` × ``--schedules`` (T:W, the
recomputation period and the warm-up counted in recomputations). The table gives the mean and the
range over ``--seeds`` and marks the best configuration of each family at every step count.

    python -m bench.studies.smoke_study --out results/smoke_study.json   # ~8 min on one core

A run that leaves the loss non-finite, or above 10x its initial value, is reported as diverged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.cli import ArgumentParser, run
from bench.data import load_arrays
from bench.errors import UsageError
from bench.io import write_json_atomic
from bench.models import mlp_mnist
from bench.provenance import provenance
from bench.studies.options import command_line, device, positive_int
from bench.studies.workloads import closure
from optimizers import PartitionedNewton, functional_loss
from optimizers.partition import PARTITIONS

TRAIN_SIZE = 3000
BATCH = 100
DIVERGED = 10.0  # final loss above DIVERGED × initial loss (or non-finite) = diverged


def _numbers(flag: str, text: str, kind: type) -> list:
    try:
        return [kind(item) for item in text.split(",") if item]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated {kind.__name__}s, got {text!r}") from None


def _schedules(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        period, sep, warmup = item.partition(":")
        if not sep:
            raise UsageError(f"--schedules: a schedule is T:W (e.g. 10:3), got {item!r}")
        try:
            pairs.append((int(period), int(warmup)))
        except ValueError:
            raise UsageError(f"--schedules: T and W are ints, got {item!r}") from None
    return pairs


def configurations(
    sgd_lr: Sequence[float],
    lr: Sequence[float],
    partitions: Sequence[str],
    schedules: Sequence[tuple[int, int]],
) -> list[dict[str, Any]]:
    """The grid: one dict per configuration, ``family`` 'sgd' or 'partitioned_newton'."""
    unknown = [name for name in partitions if name not in PARTITIONS]
    if unknown:
        raise UsageError(
            f"--partitions: unknown partition {unknown[0]!r}; known: {sorted(PARTITIONS)}"
        )
    grid: list[dict[str, Any]] = [{"family": "sgd", "lr": float(value)} for value in sgd_lr]
    for partition in partitions:
        for period, warmup in schedules:
            for value in lr:
                grid.append(
                    {
                        "family": "partitioned_newton",
                        "lr": float(value),
                        "partition": partition,
                        "update_every": period,
                        "warmup": warmup,
                    }
                )
    if not grid:
        raise UsageError("the grid is empty: give --sgd-lr or --lr")
    return grid


def _label(config: dict[str, Any]) -> str:
    if config["family"] == "sgd":
        return f"sgd lr={config['lr']:g}"
    return (
        f"ours λ1={config['lr']:g} {config['partition']} "
        f"T={config['update_every']} W={config['warmup']}"
    )


def train_run(
    config: dict[str, Any],
    seed: int,
    steps: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor],
    curvature_batch: int = BATCH,
    device: str | torch.device = "cpu",
    recomputations: list[dict[str, Any]] | None = None,
) -> list[float]:
    """Training losses (on the 3 000 training images) after each count of ``steps``. For ours,
    ``recomputations`` (if given) receives {step, event, status, eta} per recomputation."""
    x, y = (tensor.to(device) for tensor in data)
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, TRAIN_SIZE, BATCH)]
    start = TRAIN_SIZE
    curvature = [
        (x[start + i : start + i + curvature_batch], y[start + i : start + i + curvature_batch])
        for i in range(0, 3 * curvature_batch, curvature_batch)
    ]
    torch.manual_seed(seed)
    model = mlp_mnist().to(device)
    if config["family"] == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    else:
        options = {k: v for k, v in config.items() if k != "family"}
        optimizer = PartitionedNewton.from_model(model, **options)
    losses, done = [], 0
    for target in steps:
        for t in range(done, target):
            step_closure = closure(model, optimizer, *batches[t % len(batches)])
            if isinstance(optimizer, PartitionedNewton):
                xc, yc = curvature[t % len(curvature)]
                optimizer.step(step_closure, functional_loss(model, F.cross_entropy, xc, yc))
            else:
                optimizer.step(step_closure)
        done = target
        with torch.no_grad():
            losses.append(F.cross_entropy(model(x[:TRAIN_SIZE]), y[:TRAIN_SIZE]).item())
    if recomputations is not None and isinstance(optimizer, PartitionedNewton):
        keys = ("step", "event", "status", "eta")
        recomputations.extend({k: r[k] for k in keys} for r in optimizer.diagnostics)
    return losses


def eta_summary(row: dict[str, Any]) -> dict[str, Any] | None:
    """What ours did with its step sizes over every seed's solved recomputations: how many
    subsets had η_s = 0 (clipped or solved to 0) per recomputation, and the quantiles of
    λ1·η_s of the first subset (the first layer's weight or module), the factor its u is
    multiplied by; None for SGD or when nothing was solved."""
    if row["family"] != "partitioned_newton":
        return None
    solved = [r["eta"] for seed in row["recomputations"] for r in seed if r["event"] == "solved"]
    if not solved:
        return None
    zeros = sorted(sum(value == 0.0 for value in eta) for eta in solved)
    first = sorted(row["lr"] * eta[0] for eta in solved)

    def quantile(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "solved": len(solved),
        "subsets": len(solved[0]),
        "zero_subsets_median": quantile(zeros, 0.5),
        "zero_subsets_range": [zeros[0], zeros[-1]],
        "first_subset_step_quantiles": {
            f"p{round(100 * q)}": quantile(first, q) for q in (0.1, 0.5, 0.9)
        },
    }


def load_data(curvature_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 3 000 + 3 × ``curvature_batch`` images of mnist5k's training split (flattened)."""
    splits = load_arrays("mnist5k", seed=0)
    need = TRAIN_SIZE + 3 * curvature_batch
    if len(splits.y_train) < need:
        raise UsageError(
            f"--curvature-batch {curvature_batch} needs {need} training images, "
            f"mnist5k has {len(splits.y_train)}"
        )
    x = torch.as_tensor(splits.x_train[:need]).flatten(1)
    return x, torch.as_tensor(splits.y_train[:need])


def study(
    grid: Sequence[dict[str, Any]],
    seeds: Sequence[int],
    steps: Sequence[int],
    curvature_batch: int = BATCH,
    device: str | torch.device = "cpu",
    log=print,
) -> dict[str, Any]:
    """Every configuration × seed; rows with the per-seed losses, their mean/min/max per step."""
    if not seeds or not steps or list(steps) != sorted(set(steps)) or steps[0] < 1:
        raise UsageError(
            f"--seeds/--steps: need seeds and increasing positive steps, got {seeds!r}, {steps!r}"
        )
    if curvature_batch < 1:
        raise UsageError(f"--curvature-batch must be >= 1, got {curvature_batch}")
    data = load_data(curvature_batch)
    with torch.no_grad():
        torch.manual_seed(seeds[0])
        initial = F.cross_entropy(mlp_mnist()(data[0][:TRAIN_SIZE]), data[1][:TRAIN_SIZE]).item()
    rows = []
    for config in grid:
        recomputations: list[list[dict[str, Any]]] = [[] for _ in seeds]
        per_seed = [
            train_run(config, seed, steps, data, curvature_batch, device, recomputations[i])
            for i, seed in enumerate(seeds)
        ]
        diverged = [not math.isfinite(s[-1]) or s[-1] > DIVERGED * initial for s in per_seed]
        columns = list(zip(*per_seed, strict=True))
        row = {
            **config,
            "label": _label(config),
            "losses": per_seed,
            "diverged_seeds": sum(diverged),
            "mean": [sum(c) / len(c) for c in columns],
            "min": [min(c) for c in columns],
            "max": [max(c) for c in columns],
        }
        if config["family"] == "partitioned_newton":
            row["recomputations"] = recomputations
            row["eta_summary"] = eta_summary(row)
        rows.append(row)
        log(f"{row['label']}: " + ", ".join(f"{m:.4g}" for m in row["mean"]), flush=True)
    return {"initial_loss": initial, "rows": rows}


def best(rows: Sequence[dict[str, Any]], family: str, index: int) -> dict[str, Any] | None:
    """The configuration of ``family`` with the lowest mean loss at ``steps[index]``, among the
    ones with no diverged seed."""
    candidates = [r for r in rows if r["family"] == family and not r["diverged_seeds"]]
    finite = [r for r in candidates if math.isfinite(r["mean"][index])]
    return min(finite, key=lambda r: r["mean"][index]) if finite else None


def markdown(result: dict[str, Any]) -> str:
    """The table: mean [min, max] over seeds per step count; * marks each family's best."""
    steps = result["settings"]["steps"]
    marks = {
        (id(row), i)
        for i in range(len(steps))
        for family in ("sgd", "partitioned_newton")
        if (row := best(result["rows"], family, i)) is not None
    }
    header = "| configuration | diverged | " + " | ".join(f"{s} steps" for s in steps) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(steps)]
    for row in result["rows"]:
        cells = []
        for i in range(len(steps)):
            cell = f"{row['mean'][i]:.3g} [{row['min'][i]:.3g}, {row['max'][i]:.3g}]"
            cells.append(f"**{cell}**" if (id(row), i) in marks else cell)
        lines.append(f"| {row['label']} | {row['diverged_seeds']} | " + " | ".join(cells) + " |")
    seeds = result["settings"]["seeds"]
    lines.append("")
    lines.append(
        f"Training loss on {TRAIN_SIZE} images, mean [min, max] over seeds {seeds}; bold: the "
        f"best of each family at that step count (initial loss {result['initial_loss']:.4g})."
    )
    summaries = [(r["label"], r.get("eta_summary")) for r in result["rows"]]
    if any(summary for _, summary in summaries):
        lines += ["", "| configuration | solved | subsets with η = 0 (median, range) | "
                  "λ1·η of the first subset (10%, 50%, 90%) |", "|---|---:|---|---|"]  # fmt: skip
        for label, s in summaries:
            if s:
                low, high = s["zero_subsets_range"]
                q = s["first_subset_step_quantiles"]
                lines.append(
                    f"| {label} | {s['solved']} | {s['zero_subsets_median']} of {s['subsets']} "
                    f"({low}–{high}) | {q['p10']:.3g}, {q['p50']:.3g}, {q['p90']:.3g} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/smoke_study.json"))
    parser.add_argument("--steps", default="40,80,160")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--sgd-lr", default="0.03,0.05,0.07,0.1,0.15,0.2")
    parser.add_argument("--lr", default="0.3,0.45,0.6,0.8", help="λ1 values of ours")
    parser.add_argument("--partitions", default="per_tensor,per_module")
    parser.add_argument("--schedules", default="5:1,10:3", help="T:W pairs of ours")
    parser.add_argument("--curvature-batch", type=positive_int, default=BATCH)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--device", type=device, default="cpu")
    args = parser.parse_args(argv)
    grid = configurations(
        _numbers("--sgd-lr", args.sgd_lr, float),
        _numbers("--lr", args.lr, float),
        [p for p in args.partitions.split(",") if p],
        _schedules(args.schedules),
    )
    steps = _numbers("--steps", args.steps, int)
    seeds = _numbers("--seeds", args.seeds, int)
    torch.set_num_threads(args.threads)
    result = study(grid, seeds, steps, args.curvature_batch, args.device)
    settings = {
        "steps": steps,
        "seeds": seeds,
        "curvature_batch": args.curvature_batch,
        "grid": grid,
    }
    result = {
        "command": command_line("bench.studies.smoke_study", argv),
        "settings": settings,
        **result,
        "provenance": provenance(
            seed=seeds[0], device=str(args.device), threads=args.threads, params=settings
        ),
    }
    write_json_atomic(args.out, result, allow_nan=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
