"""A train cell over its seeds, runtime.workers, and problem_settings.<problem>.train_size."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from bench.config import ConfigError, parse_pipeline_config
from bench.training.workers import run_pieces
from tests.test_stages import tiny_params, write_params

NUMBERS = ["epoch", "step", "train_loss", "test_loss", "test_accuracy", "lr", "diverged"]


def _project(tmp_path, **changes):
    """A tiny project (params file, .dvc marker, prepared data) → (params path, results dir)."""
    from bench.prepare import prepare

    (tmp_path / ".dvc").mkdir()
    params = tiny_params(tmp_path, seeds=[0, 1, 2], **changes)
    path = write_params(tmp_path / "params.yaml", params)
    from bench.config import load_pipeline_config

    prepare(load_pipeline_config(path), results=tmp_path / "results")
    return path, tmp_path / "results"


def _with_workers(path, workers):
    params = yaml.safe_load(path.read_text())
    params["runtime"]["workers"] = workers
    write_params(path, params)
    from bench.config import load_pipeline_config

    return load_pipeline_config(path)


def _runs(results, optimizer="sgd"):
    """{seed: (history without wall-clock, metrics without wall-clock and provenance)}."""
    cell = results / "tiny" / "runs" / "digits_mlp" / optimizer
    out = {}
    for folder in sorted(cell.iterdir()):
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics = {k: v for k, v in metrics.items() if k not in ("wall_clock", "provenance")}
        out[int(folder.name)] = (pd.read_csv(folder / "history.csv")[NUMBERS], metrics)
    return out


def _square(x):
    return x * x


def _fail_on_two(x):
    if x == 2:
        raise ValueError("piece 2 failed")
    return x


def test_run_pieces_keeps_order_and_raises_the_first_failure():
    """In this process with one worker (the order with two: the next test)."""
    assert run_pieces(_square, [(3,), (1,), (2,)], workers=1, threads=1, deterministic=True) == [
        9, 1, 4,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="piece 2 failed"):
        run_pieces(_fail_on_two, [(1,), (2,), (3,)], workers=2, threads=1, deterministic=True)
    with pytest.raises(ValueError, match="workers"):
        run_pieces(_square, [(1,)], workers=0, threads=1, deterministic=True)


def test_two_workers_give_the_numbers_of_one(tmp_path):
    """Tune grid points and train seeds in two processes: the same rows and runs, bitwise."""
    from bench.training.cells import train_seeds
    from bench.training.tuning import tune_cell

    path, results = _project(tmp_path)
    rows = {}
    runs = {}
    for workers in (1, 2):
        config = _with_workers(path, workers)
        tuned = tune_cell(config, "digits_mlp", "sgd", results=results, params=path)
        rows[workers] = (tuned["grid"], tuned["best"])
        train_seeds(config, "digits_mlp", "sgd", [0, 1, 2], params=path, results=results)
        runs[workers] = _runs(results)
    assert rows[1] == rows[2]
    assert sorted(runs[1]) == sorted(runs[2]) == [0, 1, 2]
    for seed in (0, 1, 2):
        pd.testing.assert_frame_equal(runs[1][seed][0], runs[2][seed][0], check_exact=True)
        assert runs[1][seed][1] == runs[2][seed][1]
    assert runs[1][0][1]["final_train_loss"] != runs[1][1][1]["final_train_loss"]  # seeds differ


def test_the_train_stage_runs_every_seed_and_drops_seeds_left_from_params(tmp_path, capsys):
    from bench import train, tune

    path, results = _project(tmp_path)
    assert tune.main(["--problem", "digits_mlp", "--optimizer", "sgd", "--params", str(path)]) == 0
    assert train.main(["--problem", "digits_mlp", "--optimizer", "sgd", "--params", str(path)]) == 0
    cell = results / "tiny" / "runs" / "digits_mlp" / "sgd"
    assert sorted(p.name for p in cell.iterdir()) == ["0", "1", "2"]
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()[-3:]] == [
        "train digits_mlp/sgd/0", "train digits_mlp/sgd/1", "train digits_mlp/sgd/2",
    ]  # fmt: skip
    before = (cell / "1" / "history.csv").read_bytes()
    params = yaml.safe_load(path.read_text())
    params["seeds"] = [0, 1]
    write_params(path, params)
    # one seed alone never removes the others (it is not the whole cell)
    assert train.main(["--problem", "digits_mlp", "--optimizer", "sgd", "--seed", "0",
                       "--params", str(path)]) == 0  # fmt: skip
    assert sorted(p.name for p in cell.iterdir()) == ["0", "1", "2"]
    assert train.main(["--problem", "digits_mlp", "--optimizer", "sgd", "--params", str(path)]) == 0
    assert sorted(p.name for p in cell.iterdir()) == ["0", "1"]
    assert (cell / "1" / "history.csv").read_bytes().split(b"\n")[1] == before.split(b"\n")[1]


def test_train_size_cuts_the_training_split_only(tmp_path):
    from bench.data import load_splits
    from bench.problems import get_problem
    from bench.training.cells import problem_splits

    path, results = _project(tmp_path, problem_settings={"digits_mlp": {"train_size": 120}})
    config = _with_workers(path, 1)
    data = config.data_path("digits", results)
    whole, cut = load_splits(data), problem_splits(config, get_problem("digits_mlp"), data)
    assert len(cut.y_train) == 120 and (cut.x_train == whole.x_train[:120]).all()
    assert (cut.x_valid == whole.x_valid).all() and (cut.x_test == whole.x_test).all()
    from bench.training.cells import train_cell
    from bench.training.tuning import tune_cell

    tune_cell(config, "digits_mlp", "sgd", results=results)
    metrics = train_cell(config, "digits_mlp", "sgd", 0, results=results)
    batch, epochs = config.train.batch_size, config.train.epochs
    assert metrics["steps"] == epochs * math.ceil(120 / batch)  # the last batch smaller
    params = yaml.safe_load(path.read_text())
    params["problem_settings"] = {"digits_mlp": {"train_size": 100_000}}
    write_params(path, params)
    from bench.config import load_pipeline_config

    with pytest.raises(ConfigError, match=r"problem_settings.digits_mlp.train_size: 100000"):
        problem_splits(load_pipeline_config(path), get_problem("digits_mlp"), data)


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("runtime", {"workers": 0}, "runtime.workers"),
        ("runtime", {"workers": "two"}, "runtime.workers"),
        ("problem_settings", {"digits_mlp": {"train_size": 10}}, "train_size"),
    ],
)
def test_bad_workers_and_train_size_name_their_key(tmp_path, section, value, message):
    params = tiny_params(tmp_path)
    if section == "runtime":
        params["runtime"] = {**params["runtime"], **value}
    else:
        params[section] = value
    with pytest.raises(ConfigError, match=message):
        parse_pipeline_config(params)


def test_workers_may_be_omitted(tmp_path):
    params = tiny_params(tmp_path)
    params["runtime"].pop("workers", None)
    assert parse_pipeline_config(params).runtime.workers == 1


def test_a_train_size_too_large_stops_a_two_worker_cell_with_one_line(tmp_path, capsys):
    """The error is raised in a worker process: it still reaches the command line as one line
    naming the key and value, exit 2, and no run folder is written."""
    from bench import train, tune
    from bench.cli import run

    path, results = _project(tmp_path)
    assert tune.main(["--problem", "digits_mlp", "--optimizer", "sgd", "--params", str(path)]) == 0
    params = yaml.safe_load(path.read_text())
    params["runtime"]["workers"] = 2
    params["problem_settings"] = {"digits_mlp": {"train_size": 100_000}}
    write_params(path, params)
    argv = ["--problem", "digits_mlp", "--optimizer", "sgd", "--params", str(path)]
    assert run(train.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "problem_settings.digits_mlp.train_size: 100000" in err[0]
    assert "Traceback" not in err[0]
    assert not (results / "tiny" / "runs").exists()
