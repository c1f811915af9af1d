"""The pipeline stages on a tiny grid in tmp_path, and the training loop's mechanics.

Loop mechanics (epoch-0 row, re-evaluated training loss, divergence, plateau halving of λ1, the
unshuffled cycled curvature batches, bitwise resume) are checked with a small recording optimizer
that implements the TrainingOptimizer contract with plain SGD; the stages (prepare → tune → train,
kill and resume) run the real problems and registry on ``digits_mlp`` with 2 epochs.
"""

from __future__ import annotations

import copy
import json
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from bench.config import PlateauConfig, parse_pipeline_config
from bench.training.evaluation import evaluate
from bench.training.loop import run_training
from bench.training.runs import CyclicBatches, RunSettings, stream_seed

TINY_PARAMS = {
    "profile": "tiny",
    "device": "cpu",
    "problems": ["digits_mlp"],
    "seeds": [0],
    "optimizers": {
        "sgd": {"hyperparameters": {}, "grid": {"lr": [0.01, 0.1]}},
        "partitioned_newton": {"hyperparameters": {}, "grid": {"lr": [0.1]}},
    },
    "prepare": {"seed": 0, "max_train": 300, "max_test": 200},
    "tune": {"seed": 1000, "epochs_fraction": 0.5},
    "train": {
        "epochs": 2,
        "batch_size": 50,
        "curvature_batch_size": 50,
        "eval_batch_size": 500,
        "threads": 1,
        "deterministic": True,
        "divergence_factor": 100.0,
        "plateau": {"threshold": 1e-4, "patience": 2, "factor": 0.5, "scope": "ours"},
        "probe": {"optimizers": ["sgd"], "every": 3, "batch_size": 50},
    },
    "runtime": {"progress": False, "checkpoint_dir": ".checkpoints"},
    "aggregate": {"train_loss_target": {}},
    "invariance": {
        "optimizers": [],
        "steps": 8,
        "batch_size": 32,
        "seed": 0,
        "dtype": "float64",
        "scale_range": 10.0,
        "shift_std": 0.1,
        "min_movement": 1e-3,
        "overrides": {"update_every": 2, "warmup": 1, "average": 2},
    },
    "timing": {
        "optimizers": [],
        "period": 4,
        "rounds": 1,
        "memory": False,
        "scaling": {
            "width": 16,
            "depth": 2,
            "batch": 16,
            "partitions": ["single", "per_tensor"],
            "widths": [8, 16],
            "depths": [1, 2],
            "batches": [8, 16],
            "full_order3_max_subsets": 6,
            "rounds": 1,
        },
    },
    "report": {},
}


def tiny_params(tmp_path: Path, **changes) -> dict:
    """TINY_PARAMS with checkpoints under tmp_path and top-level ``changes``."""
    params = copy.deepcopy(TINY_PARAMS)
    params["runtime"]["checkpoint_dir"] = str(tmp_path / ".checkpoints")
    params.update(changes)
    return params


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# --------------------------------------------------------------------------- loop mechanics
class RecordingSGD:
    """Plain SGD (θ ← θ − lr ∇L) honouring the TrainingOptimizer contract; records what it gets.

    ``blow_up``: multiply the weights by this factor after each step (to force divergence);
    ``frozen``: never change the weights (a stalled training loss)."""

    name = "recording_sgd"

    def __init__(self, model, lr=0.1, *, curvature=False, blow_up=None, frozen=False):
        self.model, self._lr, self.needs_curvature_batch = model, lr, curvature
        self.blow_up, self.frozen = blow_up, frozen
        self.curvature_batches: list[torch.Tensor] = []
        self.steps = 0

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = float(value)

    def step(self, batch, curvature_batch=None):
        if self.needs_curvature_batch:
            self.curvature_batches.append(curvature_batch[0].clone())
        else:
            assert curvature_batch is None
        inputs, targets = batch
        loss = nn.functional.cross_entropy(self.model(inputs), targets)
        self.model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for parameter in self.model.parameters():
                if not self.frozen:
                    parameter -= self._lr * parameter.grad
                if self.blow_up is not None:
                    parameter *= self.blow_up
        self.steps += 1
        return loss.detach()

    def state_dict(self):
        return {"lr": self._lr, "steps": self.steps}

    def load_state_dict(self, state):
        self._lr, self.steps = state["lr"], state["steps"]

    def diagnostics(self):
        return {"steps_seen": float(self.steps)}


def toy_problem(seed: int, n: int = 120, features: int = 5, classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, classes))

    def batches(epoch: int):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for start in range(0, n, 20):
            rows = order[start : start + 20]
            yield x[rows], y[rows]

    return model, batches, (x, y)


def settings(**changes) -> RunSettings:
    values = {"epochs": 3, "batch_size": 20, "curvature_batch_size": 16, "eval_batch_size": 50}
    return RunSettings(**(values | changes))


def test_history_rows_and_reevaluated_training_loss(seed):
    model, batches, split = toy_problem(seed)
    initial_loss, _ = evaluate(copy.deepcopy(model), nn.functional.cross_entropy, *split, 7)
    optimizer = RecordingSGD(model, lr=0.05)
    result = run_training(model, optimizer, batches, split, split, seed=seed, settings=settings())
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3]
    assert [r["step"] for r in result.history] == [0, 6, 12, 18]
    # Epoch 0 is before training; each row's loss is the whole split's, at the end of the epoch.
    assert result.history[0]["train_loss"] == pytest.approx(initial_loss, rel=1e-6)
    final_loss, final_accuracy = evaluate(model, nn.functional.cross_entropy, *split, 1000)
    assert result.history[-1]["train_loss"] == pytest.approx(final_loss, rel=1e-6)
    assert result.history[-1]["test_accuracy"] == pytest.approx(final_accuracy)
    assert result.history[-1]["diag/steps_seen"] == 18.0
    assert [r["diverged"] for r in result.history] == [0, 0, 0, 0]
    clocks = [r["wall_clock"] for r in result.history]
    assert clocks[0] == 0.0 and all(b >= a for a, b in zip(clocks, clocks[1:], strict=False))
    assert not result.diverged and result.diverged_epoch is None and result.steps == 18


@pytest.mark.parametrize("blow_up", [1e3, math.inf])
def test_divergence_is_recorded_and_training_stops(seed, blow_up):
    model, batches, split = toy_problem(seed)
    optimizer = RecordingSGD(model, lr=0.05, blow_up=blow_up)
    result = run_training(model, optimizer, batches, split, split, seed=seed, settings=settings())
    assert result.diverged and result.diverged_epoch == 1
    assert [r["diverged"] for r in result.history] == [0, 1]
    last = result.history[-1]["train_loss"]  # the value at divergence, kept as it is
    assert not math.isfinite(last) or last > 100 * result.history[0]["train_loss"]
    if blow_up == math.inf:  # a non-finite minibatch loss stops the epoch at once
        assert result.steps <= 2


@pytest.mark.parametrize(
    ("scope", "curvature", "halves"),
    [("all", False, True), ("ours", True, True), ("ours", False, False), ("none", True, False)],
)
def test_plateau_halves_lr_after_patience_stalled_epochs(seed, scope, curvature, halves):
    model, batches, split = toy_problem(seed)
    optimizer = RecordingSGD(model, lr=1.0, curvature=curvature, frozen=True)
    plateau = PlateauConfig(threshold=1e-4, patience=2, factor=0.5, scope=scope)
    run = settings(epochs=6, plateau=plateau)
    result = run_training(model, optimizer, batches, split, split, seed=seed, settings=run)
    lrs = [r["lr"] for r in result.history]  # the lr used during each epoch
    expected = [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25] if halves else [1.0] * 7
    assert lrs == expected


def test_curvature_batches_walk_the_training_split_unshuffled_and_cycle(seed):
    model, batches, (x, y) = toy_problem(seed, n=50)
    optimizer = RecordingSGD(model, lr=0.01, curvature=True)
    run = settings(epochs=2, curvature_batch_size=16)
    run_training(model, optimizer, batches, (x, y), (x, y), seed=seed, settings=run)
    offset = stream_seed(seed, "curvature") % 50
    assert len(optimizer.curvature_batches) == 6  # one per step, 3 steps per epoch
    for k, received in enumerate(optimizer.curvature_batches):
        rows = (offset + k * 16 + np.arange(16)) % 50
        torch.testing.assert_close(received, x[torch.as_tensor(rows)], rtol=0, atol=0)
    # Same batches whatever the epoch's shuffling: they only depend on the step count.
    assert CyclicBatches(x, y, 16, offset).batch(5)[0].equal(optimizer.curvature_batches[5])


def test_resume_from_checkpoint_is_bitwise_identical(seed, tmp_path):
    def train(checkpoint, on_epoch_end=None):
        model, batches, split = toy_problem(seed)
        optimizer = RecordingSGD(model, lr=0.1)
        run = settings(epochs=3)
        return run_training(
            model, optimizer, batches, split, split, seed=seed, settings=run,
            checkpoint=checkpoint, fingerprint="f", on_epoch_end=on_epoch_end,
        )  # fmt: skip

    uninterrupted = train(None)

    def kill(epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed after epoch 1")

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(checkpoint, kill)
    assert checkpoint.is_file()
    resumed = train(checkpoint)
    assert resumed.resumed_from == 1
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_clock"} for r in rows]
    assert strip(resumed.history) == strip(uninterrupted.history)


@pytest.mark.parametrize("content", [[1, 2, 3], {"format": 2, "fingerprint": "f"}, {"a": 1}])
def test_a_checkpoint_of_another_structure_is_ignored_with_a_warning(seed, tmp_path, capsys,
                                                                     content):  # fmt: skip
    checkpoint = tmp_path / "run.pt"
    torch.save(content, checkpoint)
    stray = tmp_path / ".run.pt.abc123.tmp"  # a checkpoint write killed before its rename
    stray.write_bytes(b"partial")
    model, batches, split = toy_problem(seed)
    optimizer = RecordingSGD(model, lr=0.1)
    result = run_training(
        model, optimizer, batches, split, split, seed=seed, settings=settings(epochs=1),
        checkpoint=checkpoint, fingerprint="f",
    )  # fmt: skip
    assert result.resumed_from is None and len(result.history) == 2
    err = capsys.readouterr().err
    assert f"ignoring checkpoint {checkpoint}" in err and "removing the partial checkpoint" in err
    assert not stray.exists()


def test_stages_work_relative_to_the_params_files_project(tmp_path, monkeypatch):
    from bench.config import load_pipeline_config

    params = tiny_params(tmp_path)
    params["runtime"]["checkpoint_dir"] = ".checkpoints"  # relative: inside the project
    path = write_params(tmp_path / "params.yaml", params)
    monkeypatch.chdir(Path(__file__).parent)  # somewhere else
    config = load_pipeline_config(path)
    assert config.root == tmp_path.resolve()
    assert config.checkpoint_path("digits_mlp", "sgd", 0).is_relative_to(tmp_path.resolve())
    assert config.project_path(None, "results") == tmp_path.resolve() / "results"


def test_a_params_file_of_another_checkout_is_refused(tmp_path):
    from bench.config import ConfigError, load_pipeline_config

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")  # another copy of the project's code
    path = write_params(tmp_path / "params.yaml", tiny_params(tmp_path))
    with pytest.raises(ConfigError, match="belongs to the project"):
        load_pipeline_config(path)


# --------------------------------------------------------------------------- the stages
@pytest.fixture
def tiny(tmp_path):
    """(config, results dir) of the tiny grid, with prepare already run."""
    from bench.prepare import prepare

    config = parse_pipeline_config(tiny_params(tmp_path))
    results = tmp_path / "results"
    written = prepare(config, results=results)
    return config, results, written


def test_prepare_writes_the_cut_data_sets(tiny):
    from bench.data import load_splits

    config, results, written = tiny
    assert list(written) == ["digits"] or len(written) == 1
    path = next(iter(written.values()))
    assert path.parent == results / "tiny" / "data" and path.suffix == ".npz"
    splits = load_splits(path)
    assert len(splits.x_train) == 300 and len(splits.y_train) == 300
    assert len(splits.x_test) == 200 and len(splits.x_valid) > 0


def test_tune_cell_writes_grid_best_and_protocol(tiny):
    from bench.tune import tune_cell

    config, results, _ = tiny
    output = tune_cell(config, "digits_mlp", "sgd", results=results)
    path = results / "tiny" / "tune" / "digits_mlp" / "sgd.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(output))
    assert [row["lr"] for row in output["grid"]] == [0.01, 0.1]
    usable = [r for r in output["grid"] if not r["diverged"]]
    assert output["best"]["lr"] == min(usable, key=lambda r: r["valid_loss"])["lr"]
    assert output["epochs"] == 1 and "validation split" in output["protocol"]
    assert output["at_edge"] == (["lr"] if output["best"]["lr"] in (0.01, 0.1) else [])
    assert set(output["provenance"]) >= {"git_commit", "params_hash", "torch", "seed", "cpu"}


def problem_model(name: str) -> nn.Module:
    from bench.problems import get_problem

    return get_problem(name).make_model(0)


def test_train_cell_writes_history_metrics_and_probe(tiny):
    from bench.train import train_cell
    from bench.tune import tune_cell

    config, results, _ = tiny
    tune_cell(config, "digits_mlp", "sgd", results=results)
    metrics = train_cell(config, "digits_mlp", "sgd", 0, results=results)
    run_dir = results / "tiny" / "runs" / "digits_mlp" / "sgd" / "0"
    assert sorted(p.name for p in run_dir.iterdir()) == ["history.csv", "metrics.json", "probe.csv"]
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history.columns[:8]) == [
        "epoch", "step", "train_loss", "test_loss", "test_accuracy", "wall_clock", "lr", "diverged",
    ]  # fmt: skip
    assert history["epoch"].tolist() == [0, 1, 2]
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["final_train_loss"] == pytest.approx(history["train_loss"].iloc[-1])
    assert on_disk["steps"] == history["step"].iloc[-1] == metrics["steps"] == 12
    assert on_disk["hyperparameters"]["lr"] in (0.01, 0.1) and on_disk["diverged"] is False
    probe = pd.read_csv(run_dir / "probe.csv")
    assert list(probe.columns) == ["step", "subset", "eta", "ratio", "g", "h", "status"]
    assert sorted(set(probe["step"])) == [0, 3, 6, 9]  # every 3rd step, counted from 0
    assert set(probe["subset"]) == {n for n, _ in problem_model("digits_mlp").named_parameters()}
    assert not config.checkpoint_path("digits_mlp", "sgd", 0).exists()


@pytest.mark.parametrize("optimizer", ["sgd", "partitioned_newton"])
def test_killed_train_cell_resumes_bitwise(tiny, optimizer, tmp_path):
    from bench.train import train_cell
    from bench.tune import tune_cell

    config, results, _ = tiny
    tune_cell(config, "digits_mlp", optimizer, results=results)
    run_dir = config.run_dir("digits_mlp", optimizer, 0, results)
    train_cell(config, "digits_mlp", optimizer, 0, results=results)
    reference = pd.read_csv(run_dir / "history.csv")

    def kill(epoch):
        raise KeyboardInterrupt(f"killed after epoch {epoch}")

    import shutil

    shutil.rmtree(run_dir)
    with pytest.raises(KeyboardInterrupt):
        train_cell(config, "digits_mlp", optimizer, 0, results=results, on_epoch_end=kill)
    assert not run_dir.exists()  # no partial result
    assert not list(run_dir.parent.glob(".*staging*"))
    assert config.checkpoint_path("digits_mlp", optimizer, 0).is_file()
    metrics = train_cell(config, "digits_mlp", optimizer, 0, results=results)
    assert metrics["resumed_from_epoch"] == 1
    resumed = pd.read_csv(run_dir / "history.csv")
    pd.testing.assert_frame_equal(
        resumed.drop(columns="wall_clock"), reference.drop(columns="wall_clock"), check_exact=True
    )


MY_SGD = """import torch


class MySGD(torch.optim.SGD):
    STEP_SCALE = {scale}

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["lr"] * self.STEP_SCALE)
        return loss
"""


@pytest.mark.parametrize("edit", [False, True])
def test_a_checkpoint_made_by_other_code_is_not_resumed(tmp_path, monkeypatch, capsys, edit):
    """Kill a cell of a user's optimizer (its module inside the project), change the module's
    step, rerun: the checkpoint of the old code is ignored and the run starts over (issue #14:
    it resumed from epoch 28 and reported a loss the new code never produces)."""
    from bench.config import load_pipeline_config
    from bench.prepare import prepare
    from bench.train import train_cell
    from bench.tune import tune_cell

    project = tmp_path / "project"
    project.mkdir()
    module = project / f"mysgd_{edit:d}_{tmp_path.name.replace('-', '_')}.py"
    module.write_text(MY_SGD.format(scale=1.0))
    monkeypatch.syspath_prepend(str(project))
    params = tiny_params(tmp_path)
    params["optimizers"] = {
        "mysgd": {
            "register": {
                "torch_optimizer": f"{module.stem}.MySGD",
                "defaults": {"lr": 0.1},
                "lr_grid": [0.1],
            }
        }
    }
    params["train"]["probe"]["optimizers"] = []
    config = load_pipeline_config(write_params(project / "params.yaml", params))
    results = project / "results"
    prepare(config, results=results)
    tune_cell(config, "digits_mlp", "mysgd", results=results)

    def kill(epoch):
        raise KeyboardInterrupt(f"killed after epoch {epoch}")

    with pytest.raises(KeyboardInterrupt):
        train_cell(config, "digits_mlp", "mysgd", 0, results=results, on_epoch_end=kill)
    assert config.checkpoint_path("digits_mlp", "mysgd", 0).is_file()
    if edit:
        module.write_text(MY_SGD.format(scale=0.5))  # a different step, same params
    capsys.readouterr()
    metrics = train_cell(config, "digits_mlp", "mysgd", 0, results=results)
    if edit:
        assert metrics["resumed_from_epoch"] is None
        assert "belongs to other settings or code" in capsys.readouterr().err
    else:
        assert metrics["resumed_from_epoch"] == 1


# --------------------------------------------------------------------------- io and provenance
def test_atomic_json_keeps_the_previous_file_when_writing_fails(tmp_path):
    from bench.io import read_json, write_json_atomic

    path = tmp_path / "out" / "metrics.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):  # strict JSON by default
        write_json_atomic(path, {"a": math.nan})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert read_json(path) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left
    write_json_atomic(path, {"a": math.inf, "b": math.nan}, allow_nan=True)
    values = read_json(path)
    assert values["a"] == math.inf and math.isnan(values["b"])


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    """mkstemp creates 0600 files: results written atomically must stay readable by others
    under the usual umask, exactly as open(path, "w") would leave them."""
    from bench.io import write_bytes_atomic

    for mask in (0o022, 0o077, 0o002):
        previous = os.umask(mask)
        try:
            plain = tmp_path / f"plain-{mask:o}"
            plain.write_bytes(b"x")
            atomic = write_bytes_atomic(tmp_path / f"atomic-{mask:o}", b"x")
        finally:
            os.umask(previous)
        assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode), mask


def test_provenance_record_has_the_contract_keys(tmp_path):
    from bench.provenance import params_hash, provenance

    record = provenance(seed=3, device="cpu", threads=2, params={"b": 1, "a": [1, 2]})
    assert list(record) == [
        "git_commit", "git_dirty", "params_hash", "torch", "python", "hobench", "numpy",
        "device", "threads", "seed", "hostname", "cpu", "cpu_capability", "created",
    ]  # fmt: skip
    assert record["seed"] == 3 and record["threads"] == 2 and record["torch"] == torch.__version__
    assert params_hash({"a": [1, 2], "b": 1}) == record["params_hash"]
    assert params_hash({"a": [1, 2], "b": 2}) != record["params_hash"]
    json.dumps(record, allow_nan=False)


def test_git_dirty_ignores_pipeline_outputs(tmp_path):
    import subprocess

    from bench.provenance import git_state

    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}  # fmt: skip
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, env=env, check=True)
    assert git_state(tmp_path) == (None, None)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert git_state(tmp_path)[1] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)[1] is True


def test_rows_csv_reads_back_like_the_pandas_writer(tmp_path, seed):
    from bench.io import write_csv_atomic, write_rows_csv_atomic

    rng = np.random.default_rng(seed)
    rows = [
        {"epoch": e, "loss": float(rng.standard_normal() * 10.0 ** rng.integers(-12, 12))}
        for e in range(5)
    ]
    rows[1]["loss"], rows[2]["loss"], rows[3]["loss"] = math.nan, math.inf, -math.inf
    rows[4]["diag/eta"] = 0.1 + 1e-17 * seed  # a column missing from the other rows
    columns = ["epoch", "loss", "diag/eta"]
    write_rows_csv_atomic(tmp_path / "rows.csv", rows, columns)
    write_csv_atomic(tmp_path / "frame.csv", pd.DataFrame(rows, columns=columns))
    ours, theirs = pd.read_csv(tmp_path / "rows.csv"), pd.read_csv(tmp_path / "frame.csv")
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    assert ours["loss"].iloc[0] == rows[0]["loss"]  # full precision


def test_tune_grid_comes_from_the_registry_minus_fixed_axes(tmp_path):
    from bench.training.tuning import grid_points, search_grid
    from optimizers.registry import get_spec

    params = tiny_params(tmp_path)
    params["optimizers"] = {
        "sgd": {"hyperparameters": {"lr": 0.05}},  # fixed lr: no search
        "adam": {"grid": None},
        "kfac": {"hyperparameters": {"damping": 0.2}},
        "partitioned_newton": {"hyperparameters": {"lambda_int": 3.0}, "grid": {"lr": [0.1, 0.3]}},
    }
    config = parse_pipeline_config(params)
    assert grid_points(config, "sgd") == [{"lr": 0.05}]
    assert [p["lr"] for p in grid_points(config, "adam")] == get_spec("adam").lr_grid
    kfac = grid_points(config, "kfac")
    assert "damping" not in search_grid(config, "kfac") and len(kfac) == len(
        get_spec("kfac").lr_grid
    )
    assert all(p["damping"] == 0.2 for p in kfac)
    assert grid_points(config, "partitioned_newton") == [
        {"lambda_int": 3.0, "lr": 0.1},
        {"lambda_int": 3.0, "lr": 0.3},
    ]


def test_tune_choice_ignores_diverged_runs():
    from bench.training.tuning import choose

    row = lambda lr, loss, diverged=False: {"lr": lr, "valid_loss": loss, "diverged": diverged}
    assert choose([row(0.1, 0.5), row(0.3, 0.01, True), row(0.03, 0.4)]) == (2, False)
    assert choose([row(0.1, 0.5), row(0.3, math.nan), row(0.03, 0.5)]) == (0, False)  # tie: first
    assert choose([row(0.1, math.inf, True), row(0.03, math.nan, True)]) == (1, True)


def test_at_edge_names_the_axes_whose_choice_ends_its_grid():
    from bench.training.tuning import at_edge

    axes = {"lr": [0.1, 0.01, 1.0], "damping": [0.03, 0.1, 0.3], "momentum": [0.9]}
    assert at_edge(axes, {"lr": 0.1, "damping": 0.1, "momentum": 0.9}) == []
    assert at_edge(axes, {"lr": 1.0, "damping": 0.03, "momentum": 0.9}) == ["lr", "damping"]
    assert at_edge(axes, {"lr": 0.01, "damping": 0.1, "momentum": 0.9}) == ["lr"]


# --------------------------------------------------------------------------- a language model
TINY_CONTEXT = 12


def tiny_text(seed: int = 0, length: int = 2400) -> str:
    """A text with structure to learn: words of a small alphabet, some repeated often."""
    rng = np.random.default_rng(seed)
    words = ["ab", "bca", "cab", "dd", "abcd", "e"]
    return " ".join(rng.choice(words, size=length // 3, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1]))


@pytest.fixture
def tiny_lm(tmp_path, monkeypatch):
    """(config, results) of a grid on a tiny language model registered here (for this test
    only): a 1-block causal transformer on a synthetic text (metric perplexity, per-module
    partition)."""
    from fixtures_results import for_one_test

    from bench.data import DATASETS, DatasetSpec, register_dataset
    from bench.models import char_transformer
    from bench.prepare import prepare
    from bench.problems import PROBLEMS, Problem, register_problem

    text = tiny_text()
    vocabulary = len(set(text))
    dataset = DatasetSpec("tinytext", vocabulary, (TINY_CONTEXT,), (0.8, 0.1, 0.1), "synthetic",
                          raw=lambda: text, task="language_model")  # fmt: skip
    for_one_test(monkeypatch, DATASETS, dataset, register_dataset)
    problem = Problem(
        "tinytext_transformer", "tinytext",
        lambda: char_transformer(vocabulary, context=TINY_CONTEXT, d_model=16, heads=2, blocks=1),
        2, batch_size=16, curvature_batch_size=16, metric="perplexity", partition="per_module",
    )  # fmt: skip
    for_one_test(monkeypatch, PROBLEMS, problem, register_problem)
    params = tiny_params(tmp_path, problems=["tinytext_transformer"])
    often = {"update_every": 2, "warmup": 1, "average": 2}  # curvature within the 6 steps
    params["optimizers"] = {
        "sgd": {"hyperparameters": {}, "grid": {"lr": [0.3]}},
        "partitioned_newton": {"hyperparameters": often, "grid": {"lr": [0.1]}},
        "kfac": {"hyperparameters": {}, "grid": {"lr": [0.01], "damping": [0.1]}},
        "cauchy": {"hyperparameters": often, "grid": {"lr": [0.1]}},
        "partitioned_newton_diag": {"hyperparameters": {**often, "partition": "per_tensor"},
                                    "grid": {"lr": [0.1]}},
    }  # fmt: skip
    # one epoch of 6 steps (tune and train): the order-3 derivatives of a transformer are slow
    params["train"] |= {"epochs": 1, "batch_size": 32, "curvature_batch_size": 32}
    params["train"]["probe"]["optimizers"] = []
    params["prepare"]["max_train"] = None  # all ~160 training windows
    config = parse_pipeline_config(params)
    results = tmp_path / "results"
    prepare(config, results=results)
    return config, results


def test_a_language_models_train_cell_records_its_perplexity(tiny_lm):
    """The history and metrics carry the perplexity per token (exp of the mean per-token
    cross-entropy of the test split, checked against an independent evaluation of the trained
    model); the problem's partition is the one our optimizer used, recorded."""
    from bench.data import load_splits
    from bench.problems import get_problem
    from bench.train import train_cell
    from bench.tune import tune_cell

    config, results = tiny_lm
    tuned = tune_cell(config, "tinytext_transformer", "sgd", results=results)
    assert set(tuned["grid"][0]) == {"lr", "valid_loss", "valid_perplexity", "train_loss",
                                     "diverged"}  # fmt: skip
    metrics = train_cell(config, "tinytext_transformer", "sgd", 0, results=results)
    run_dir = config.run_dir("tinytext_transformer", "sgd", 0, results)
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history.columns[:8]) == [
        "epoch", "step", "train_loss", "test_loss", "test_perplexity", "wall_clock", "lr",
        "diverged",
    ]  # fmt: skip
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert "final_test_accuracy" not in on_disk and on_disk == json.loads(json.dumps(metrics))
    np.testing.assert_allclose(history["test_perplexity"], np.exp(history["test_loss"]), rtol=1e-12)
    assert on_disk["final_test_perplexity"] == history["test_perplexity"].iloc[-1]
    assert on_disk["best_test_perplexity"] == history["test_perplexity"].min()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]  # it trains
    assert "partition" not in on_disk["hyperparameters"]  # SGD takes none
    # an independent evaluation: the per-token cross-entropy of the test split in float64
    splits = load_splits(config.data_path("tinytext", results))
    x, y = (torch.as_tensor(a) for a in (splits.x_test, splits.y_test))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape
    model = get_problem("tinytext_transformer").make_model(stream_seed(0, "init")).eval()
    with torch.no_grad():  # the weights at epoch 0, as the run initialised them
        logits = model(x).double()
    ce = -torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).mean()
    assert history["test_loss"].iloc[0] == pytest.approx(float(ce), rel=1e-5)
    assert history["test_perplexity"].iloc[0] == pytest.approx(math.exp(float(ce)), rel=1e-5)


@pytest.mark.parametrize(
    ("optimizer", "partition"),
    [("partitioned_newton", "per_module"), ("kfac", None), ("cauchy", "single"),
     ("partitioned_newton_diag", "per_tensor")],
)  # fmt: skip
def test_a_problems_partition_reaches_the_optimizers_that_take_one(tiny_lm, optimizer,
                                                                   partition):  # fmt: skip
    """Ours takes the problem's per-module partition (one subset per module: the diagnostics
    name one η per module), unless params fix one (the diag variant here: per tensor); cauchy
    keeps its single subset, written out; K-FAC (ASDL, on the sequence's logits [B, T, V]) takes
    none. The tune file and metrics.json name the partition that ran. Every run trains."""
    from bench.train import train_cell
    from bench.tune import tune_cell

    config, results = tiny_lm
    tuned = tune_cell(config, "tinytext_transformer", optimizer, results=results)
    metrics = train_cell(config, "tinytext_transformer", optimizer, 0, results=results)
    assert tuned["best"].get("partition") == metrics["hyperparameters"].get("partition")
    assert metrics["hyperparameters"].get("partition") == partition
    assert ("problem's own (per_module)" in tuned["protocol"]) == (partition == "per_module")
    assert ("optimizer's own (single)" in tuned["protocol"]) == (optimizer == "cauchy")
    history = pd.read_csv(config.run_dir("tinytext_transformer", optimizer, 0, results)
                          / "history.csv")  # fmt: skip
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert math.isfinite(metrics["final_test_perplexity"])
    etas = [c for c in history.columns if c.startswith("diag/eta/")]
    model = problem_model("tinytext_transformer")
    if partition == "per_module":
        owners = {name.rsplit(".", 1)[0] for name, _ in model.named_parameters()}
        assert len(etas) == len(owners) < len(list(model.parameters()))
    elif partition == "per_tensor":
        assert len(etas) == len(list(model.parameters()))
    elif partition == "single":
        assert len(etas) == 1


def _thaw(value):
    """A validated config's raw params (read-only mappings) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(item) for item in value]
    return value


def test_params_problem_settings_override_the_problems_budget_and_partition(tiny_lm):
    """``problem_settings.<problem>`` in params comes before ``train`` and the problem's own
    (epochs, batch sizes) and before the problem's partition; a fixed partition still wins."""
    from bench.problems import get_problem
    from bench.training.cells import cell_params, run_settings
    from bench.training.tuning import grid_points
    from bench.tune import tune_cell

    config, results = tiny_lm
    problem = get_problem("tinytext_transformer")
    params = _thaw(config.raw)
    own = {"epochs": 2, "batch_size": 64, "partition": "single"}
    params["problem_settings"] = {"tinytext_transformer": own}
    overridden = parse_pipeline_config(params)
    settings = run_settings(overridden, problem, "cpu")
    assert (settings.epochs, settings.batch_size, settings.curvature_batch_size) == (2, 64, 32)
    assert run_settings(config, problem, "cpu").epochs == 1  # train.epochs without them
    assert [p["partition"] for p in grid_points(overridden, "partitioned_newton", problem)] == [
        "single"
    ]
    fixed = grid_points(overridden, "partitioned_newton_diag", problem)  # fixes per_tensor
    assert [p["partition"] for p in fixed] == ["per_tensor"]
    cell = {"problem": "tinytext_transformer", "optimizer": "sgd"}
    assert "problem_settings.tinytext_transformer" not in cell_params(config, cell, "cpu")
    assert cell_params(overridden, cell, "cpu")["problem_settings.tinytext_transformer"] == {
        "curvature_batch_size": None, "train_size": None, **own,
    }  # fmt: skip
    tuned = tune_cell(overridden, "tinytext_transformer", "partitioned_newton", results=results)
    assert tuned["best"]["partition"] == "single" and tuned["epochs"] == 1
    assert "problem's own (single)" in tuned["protocol"]
