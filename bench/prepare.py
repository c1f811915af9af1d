"""Prepare stage: the data sets of the params' problems → ``results/<profile>/data/<dataset>.npz``.

    python -m bench.prepare [--params params.yaml] [--results results]

Loads each data set once with :func:`bench.data.load_arrays` (embedded data offline; full data
sets through the HuggingFace hub for the paper profile), keeps the first ``prepare.max_train``
training and ``prepare.max_test`` test examples when set (the splits are already shuffled and
stratified by ``bench.data``; the validation split is kept whole), and caches the arrays as an
.npz (atomically, :func:`bench.data.save_splits`). The directory is the stage's DVC output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cli import run, stage_config, stage_parser
from bench.config import Config
from bench.errors import UsageError
from bench.io import write_dir_atomic


def datasets(config: Config) -> list[str]:
    """The data sets of the params' problems, in first-use order, without repeats."""
    from bench.problems import get_problem

    names: list[str] = []
    for problem in config.problems:
        dataset = get_problem(problem).dataset
        if dataset not in names:
            names.append(dataset)
    return names


def truncate(splits: Any, max_train: int | None, max_test: int | None) -> Any:
    """``splits`` with at most ``max_train`` training and ``max_test`` test examples."""
    changes = {}
    if max_train is not None:
        changes |= {"x_train": splits.x_train[:max_train], "y_train": splits.y_train[:max_train]}
    if max_test is not None:
        changes |= {"x_test": splits.x_test[:max_test], "y_test": splits.y_test[:max_test]}
    return dataclasses.replace(splits, **changes) if changes else splits


def prepare(config: Config, *, results: str | Path = "results") -> dict[str, Path]:
    """Write the .npz of every data set of ``config``; return {dataset: path}.

    The data folder is built whole beside the old one and swapped in (:func:`write_dir_atomic`):
    it holds exactly the data sets of the params' problems, and a data set that cannot be loaded
    leaves the previous folder as it was."""
    from bench.data import DatasetUnavailableError, load_arrays, save_splits

    loaded = {}
    for name in datasets(config):
        try:
            splits = load_arrays(name, seed=config.prepare.seed)
        except DatasetUnavailableError as error:
            raise UsageError(str(error)) from None
        loaded[name] = truncate(splits, config.prepare.max_train, config.prepare.max_test)
    folder = config.data_path(next(iter(loaded)), results).parent

    def write(staging: Path) -> None:
        for name, splits in loaded.items():
            save_splits(splits, staging / config.data_path(name, results).name)

    write_dir_atomic(folder, write)
    return {name: config.data_path(name, results) for name in loaded}


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    config = stage_config(args)
    for name, path in prepare(config, results=args.results).items():
        print(f"prepare: {name} → {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
