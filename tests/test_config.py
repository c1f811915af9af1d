"""params.yaml validation: one ConfigError naming the key, before any stage writes anything."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import yaml
from test_stages import tiny_params, write_params

from bench.config import (
    Config,
    ConfigError,
    load_config,
    load_pipeline_config,
    parse_config,
    parse_pipeline_config,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["params.yaml", "profiles/paper.yaml", "profiles/ci.yaml"])
def test_shipped_params_files_are_valid(path):
    config = load_pipeline_config(ROOT / path)
    assert isinstance(config, Config) and config.problems and config.optimizers
    with pytest.raises(AttributeError):
        config.profile = "other"  # frozen


def test_default_and_paper_profiles_write_to_different_places():
    default, paper = load_config(ROOT / "params.yaml"), load_config(ROOT / "profiles/paper.yaml")
    assert default.profile == "default" and paper.profile == "paper"
    assert default.results_dir() != paper.results_dir()
    assert len(paper.seeds) == 5 and paper.train.batch_size == 100 and paper.device == "auto"


def test_wrong_type_names_the_key_and_the_value(tmp_path):
    params = tiny_params(tmp_path)
    params["train"]["epochs"] = "ten"
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: train.epochs: expected int, got 'ten'"
    assert isinstance(error.value, ValueError)


def _error(tmp_path, mutate) -> str:
    params = tiny_params(tmp_path)
    mutate(params)
    with pytest.raises(ConfigError) as error:
        parse_pipeline_config(params)
    return str(error.value)


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (lambda p: p["optimizers"].update(sgdd={}), "optimizers.sgdd", "unknown optimizer"),
        (lambda p: p.update(problems=["nope_mlp"]), "problems[0]", "unknown problem"),
        (lambda p: p["optimizers"]["sgd"].update(grid={"lr": [0.1, -0.01]}),
         "optimizers.sgd.grid.lr[1]", "positive"),
        (lambda p: p["optimizers"]["sgd"].update(hyperparameters={"momentun": 0.5}),
         "optimizers.sgd.hyperparameters.momentun", "unknown hyperparameter"),
        (lambda p: p["optimizers"]["sgd"].update(grid={"lr": [0.1]}, hyperparameters={"lr": 0.1}),
         "optimizers.sgd.grid.lr", "also fixed"),
        (lambda p: p["optimizers"]["sgd"].update(hyperparameters={"lr": -1.0}),
         "optimizers.sgd.hyperparameters.lr", "positive"),
        (lambda p: p["train"].update(epoch=3), "train.epoch", "unknown key"),
        (lambda p: p.update(extra=1), "extra", "unknown key"),
        (lambda p: p["train"]["plateau"].update(scope="mine"), "train.plateau.scope",
         "expected one of"),
        (lambda p: p["runtime"].update(progress="yes"), "runtime.progress", "expected bool"),
        (lambda p: p["train"].update(progress=True), "train.progress", "moved to runtime.progress"),
        (lambda p: p["train"].update(threads=True), "train.threads", "expected int"),
        (lambda p: p.update(seeds=[0, 0]), "seeds", "duplicate"),
        (lambda p: p.pop("train"), "train", "missing required key"),
        (lambda p: p["train"]["plateau"].pop("patience"), "train.plateau.patience", "missing"),
        (lambda p: p["optimizers"].update(sgd=[0.1]), "optimizers.sgd", "expected a mapping"),
        (lambda p: p["train"]["probe"].update(optimizers=["nadam"]),
         "train.probe.optimizers[0]", "unknown optimizer"),
        (lambda p: p["tune"].update(epochs_fraction=0.0), "tune.epochs_fraction", "fraction"),
        (lambda p: p["invariance"].update(optimizers=["sdg"]), "invariance.optimizers[0]",
         "unknown optimizer"),
        (lambda p: p["invariance"].update(steps=0), "invariance.steps", "positive"),
        (lambda p: p["invariance"].update(dtype="float16"), "invariance.dtype", "expected one of"),
        (lambda p: p.update(problem_settings={"nope_mlp": {}}), "problem_settings.nope_mlp",
         "not in problems"),
        (lambda p: p.update(problem_settings={p["problems"][0]: {"epochs": 0}}),
         "problem_settings.digits_mlp.epochs", "positive"),
        (lambda p: p.update(problem_settings={p["problems"][0]: {"partition": "rows"}}),
         "problem_settings.digits_mlp.partition", "unknown partition"),
        (lambda p: p.update(problem_settings={p["problems"][0]: {"epoch": 2}}),
         "problem_settings.digits_mlp.epoch", "unknown key"),
    ],
)  # fmt: skip
def test_bad_params_name_the_key(tmp_path, mutate, key, words):
    message = _error(tmp_path, mutate)
    assert message.startswith(f"params.yaml: {key}: "), message
    assert words in message


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    params = tiny_params(tmp_path)
    params["train"]["divergence_factor"] = 100
    assert parse_config(params).train.divergence_factor == 100.0


def test_unreadable_or_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("stage", ["prepare", "tune", "train"])
def test_stage_refuses_bad_params_before_writing_anything(tmp_path, stage):
    import importlib

    results = tmp_path / "results"
    previous = results / "tiny" / "runs" / "digits_mlp" / "sgd" / "0" / "metrics.json"
    previous.parent.mkdir(parents=True)
    previous.write_text('{"previous": true}\n')
    (results / "tiny" / "tune" / "digits_mlp").mkdir(parents=True)
    (results / "tiny" / "tune" / "digits_mlp" / "sgd.json").write_text("{}\n")
    before = _snapshot(tmp_path)
    params = copy.deepcopy(tiny_params(tmp_path))
    params["optimizers"]["sgd"]["grid"] = {"lr": [-0.1]}
    path = write_params(tmp_path / "params.yaml", params)
    before = _snapshot(tmp_path)
    cell = {"prepare": [], "tune": ["--problem", "digits_mlp", "--optimizer", "sgd"]}
    cell["train"] = cell["tune"] + ["--seed", "0"]
    main = importlib.import_module(f"bench.{stage}").main
    with pytest.raises(ConfigError, match=r"optimizers\.sgd\.grid\.lr\[0\]"):
        main(["--params", str(path), "--results", str(results), *cell[stage]])
    assert _snapshot(tmp_path) == before
    assert yaml.safe_load(previous.read_text()) == {"previous": True}


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (lambda p: p.update(seeds=[10**23]), "seeds[0]", "2**32"),
        (lambda p: p["prepare"].update(seed=-1), "prepare.seed", "seed in"),
        (lambda p: p["prepare"].update(max_train=1), "prepare.max_train", "at least 100"),
        (lambda p: p["optimizers"]["sgd"].update(hyperparameters={"lr": 1e300}),
         "optimizers.sgd.hyperparameters.lr", "at most"),
        (lambda p: p["train"].update(threads=100000), "train.threads", "at most"),
        (lambda p: p["timing"]["scaling"].update(widths=[64, 100000000]),
         "timing.scaling.widths[1]", "at most"),
        (lambda p: p["timing"]["scaling"].update(width=100000000), "timing.scaling.width",
         "at most"),
        (lambda p: p["optimizers"]["sgd"].update(grid={"momentum": [0.5, "x"]}),
         "optimizers.sgd.grid.momentum[1]", "finite number"),
        (lambda p: p["optimizers"]["sgd"].update(hyperparameters={"nesterov": 1}),
         "optimizers.sgd.hyperparameters.nesterov", "bool"),
    ],
)  # fmt: skip
def test_late_crashes_are_range_and_type_errors_at_parse_time(tmp_path, mutate, key, words):
    message = _error(tmp_path, mutate)
    assert message.startswith(f"params.yaml: {key}: "), message
    assert words in message


@pytest.mark.parametrize(
    ("text", "key"),
    [("yes", "train.deterministic"), ("1e23", "train.divergence_factor"), ("010", "train.epochs")],
)
def test_values_pyyaml_and_dvc_read_differently_are_refused(tmp_path, text, key):
    params = tiny_params(tmp_path)
    section, name = key.split(".")
    params[section][name] = "@@"
    path = write_params(tmp_path / "params.yaml", params)
    path.write_text(path.read_text().replace("'@@'", text))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{key}: read as" in str(error.value) and "YAML 1.2" in str(error.value)


def test_problem_settings_are_omissible_per_key(tmp_path):
    params = tiny_params(tmp_path)
    config = parse_config(params)
    assert config.settings_of(params["problems"][0]).epochs is None  # none given
    params["problem_settings"] = {params["problems"][0]: {"epochs": 3, "partition": "per_module"}}
    settings = parse_config(params).settings_of(params["problems"][0])
    assert (settings.epochs, settings.batch_size, settings.partition) == (3, None, "per_module")
