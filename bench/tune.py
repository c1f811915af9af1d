"""Tune stage: one cell (problem, optimizer) → ``results/<profile>/tune/<problem>/<opt>.json``.

    python -m bench.tune --problem digits_mlp --optimizer sgd [--params params.yaml]

The protocol (:data:`PROTOCOL`, filled in and stored in every output file, quoted by the README):
a grid (learning rates, and for some optimizers a second axis, e.g. K-FAC's damping), a short
budget, one seed, the validation split. The grid is ``optimizers.<name>.grid`` from params when
set, else the registry spec's ``grid`` without the axes that params fix in
``optimizers.<name>.hyperparameters`` (fixing ``lr`` there skips the learning-rate search).

Output: ``{"problem", "optimizer", "grid": [{<swept hyperparameters incl. lr>, "valid_loss",
"valid_accuracy", "train_loss", "diverged"}, ...], "best": {hyperparameters incl. lr},
"protocol", "all_diverged", "epochs", "provenance"}``.
"""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path
from typing import Any

from bench.config import Config, resolve_device
from bench.io import write_json_atomic
from bench.loop import build_run, run_training
from bench.provenance import provenance
from bench.train import cell_arguments, check_cell, file_digest, run_settings

PROTOCOL = (
    "Learning rate tuned per (problem, optimizer) on the validation split with one seed "
    "({seed}): for every point of the grid {grid}, the model is trained for {epochs} "
    "epoch(s) ({fraction:g} of the {train_epochs}-epoch budget, rounded up; same loop, batch "
    "size and plateau rule as the training runs) and its loss on the validation split is "
    "measured after the last epoch. The chosen point has the lowest final validation "
    "loss among the runs that did not diverge (non-finite loss, or a training loss more than "
    "{factor:g}x its previous epoch's value; ties: the first in grid order); if all diverge, "
    "the point with the smallest learning rate is kept and the file says so (all_diverged). "
    "The other hyperparameters are the registry defaults overridden by params "
    "optimizers.<name>.hyperparameters."
)


def search_grid(config: Config, optimizer: str) -> dict[str, list[Any]]:
    """The axes of the tune cell: params ``grid``, else the registry's minus the fixed axes."""
    from optimizers.registry import get_spec

    section = config.optimizers[optimizer]
    if section.grid is not None:
        return {axis: list(values) for axis, values in section.grid.items()}
    fixed = section.hyperparameters
    return {a: list(v) for a, v in get_spec(optimizer).grid.items() if a not in fixed}


def grid_points(config: Config, optimizer: str) -> list[dict[str, Any]]:
    """Every hyperparameter set the cell tries: fixed ones + one point of the grid, with ``lr``
    always present (the registry default when neither fixed nor swept)."""
    from optimizers.registry import get_spec

    fixed = dict(config.optimizers[optimizer].hyperparameters)
    fixed.setdefault("lr", get_spec(optimizer).defaults["lr"])
    axes = search_grid(config, optimizer)
    return [{**fixed, **dict(zip(axes, values, strict=True))} for values in product(*axes.values())]


def tune_epochs(config: Config, train_epochs: int) -> int:
    """max(1, ⌈epochs_fraction × training epochs⌉)."""
    return max(1, math.ceil(config.tune.epochs_fraction * train_epochs - 1e-9))


def choose(rows: list[dict[str, Any]]) -> tuple[int, bool]:
    """(index of the chosen row, whether every run diverged): the lowest final valid loss among
    the finite, non-diverged runs (ties: the first); the smallest lr when none qualifies."""
    usable = [i for i, r in enumerate(rows) if not r["diverged"] and math.isfinite(r["valid_loss"])]
    if not usable:
        return min(range(len(rows)), key=lambda i: rows[i]["lr"]), True
    return min(usable, key=lambda i: rows[i]["valid_loss"]), False


def tune_cell(
    config: Config, problem_name: str, optimizer_name: str, *, results: str | Path = "results"
) -> dict[str, Any]:
    """Run the grid of one (problem, optimizer) cell, write its JSON and return it."""
    from bench.data import load_splits
    from bench.problems import get_problem

    check_cell(config, problem_name, optimizer_name)
    results = Path(results)
    problem = get_problem(problem_name)
    data_path = config.data_path(problem.dataset, results)
    splits = load_splits(data_path)
    device = resolve_device(config.device)
    train_epochs = run_settings(config, problem, device).epochs
    settings = run_settings(config, problem, device, epochs=tune_epochs(config, train_epochs))
    axes = search_grid(config, optimizer_name)
    points = grid_points(config, optimizer_name)
    seed = config.tune.seed
    rows = []
    for point in points:
        inputs = build_run(
            problem, optimizer_name, point, splits,
            seed=seed, batch_size=settings.batch_size, device=device,
        )  # fmt: skip
        result = run_training(
            inputs.model,
            inputs.optimizer,
            inputs.batches,
            inputs.train_split,
            inputs.valid_split,
            seed=seed,
            settings=settings,
            loss=inputs.loss,
            eval_name="valid",
            description=f"tune {problem_name}/{optimizer_name} {point}",
        )
        last = result.history[-1]
        rows.append(
            {
                "lr": float(point["lr"]),
                **{axis: point[axis] for axis in axes if axis != "lr"},
                "valid_loss": float(last["valid_loss"]),
                "valid_accuracy": float(last["valid_accuracy"]),
                "train_loss": float(last["train_loss"]),
                "diverged": result.diverged,
            }
        )
    chosen, all_diverged = choose(rows)
    protocol = PROTOCOL.format(
        seed=seed,
        grid=axes or {"lr": [points[0]["lr"]]},
        epochs=settings.epochs,
        fraction=config.tune.epochs_fraction,
        train_epochs=train_epochs,
        factor=config.train.divergence_factor,
    )
    cell_params = {
        "problem": problem_name,
        "optimizer": optimizer_name,
        "profile": config.profile,
        "device": device,
        "tune": config.raw.get("tune"),
        "train": config.raw.get("train"),
        f"optimizers.{optimizer_name}": config.raw["optimizers"][optimizer_name],
        "data": file_digest(data_path),
    }
    output = {
        "problem": problem_name,
        "optimizer": optimizer_name,
        "grid": rows,
        "best": points[chosen],
        "all_diverged": all_diverged,
        "epochs": settings.epochs,
        "protocol": protocol,
        "provenance": provenance(
            seed=seed, device=device, threads=config.train.threads, params=cell_params
        ),
    }
    write_json_atomic(
        config.tune_path(problem_name, optimizer_name, results), output, allow_nan=True
    )
    return output


def main(argv: list[str] | None = None) -> int:
    args, config = cell_arguments(__doc__.splitlines()[0], argv, seed=False)
    output = tune_cell(config, args.problem, args.optimizer, results=args.results)
    losses = ", ".join(f"lr {r['lr']:g}: {r['valid_loss']:.4g}" for r in output["grid"])
    print(f"tune {args.problem}/{args.optimizer}: best {output['best']} ({losses})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
