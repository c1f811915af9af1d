"""A user's optimizer or problem enters the pipeline through params.yaml alone."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from test_stages import tiny_params

from bench import problems as problem_registry
from bench.config import ConfigError, parse_pipeline_config
from optimizers import registry

RMSPROP = {
    "torch_optimizer": "torch.optim.RMSprop",
    "defaults": {"lr": 0.01, "alpha": 0.9},
    "lr_grid": [0.003, 0.01],
    "description": "RMSprop from params",
}


@pytest.fixture(autouse=True)
def isolated_registries(monkeypatch):
    """Entries registered by a test disappear after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(problem_registry, "PROBLEMS", dict(problem_registry.PROBLEMS))


def _with(tmp_path, name, section, **top):
    params = tiny_params(tmp_path, **top)
    params["optimizers"] = {"sgd": {}, name: section}
    return params


def test_register_section_defines_a_torch_optimizer_and_it_tunes_and_trains(tmp_path):
    from bench.prepare import prepare
    from bench.train import train_cell
    from bench.tune import tune_cell

    params = _with(tmp_path, "rmsprop_params", {"register": RMSPROP})
    config = parse_pipeline_config(params)
    spec = registry.get_spec("rmsprop_params")
    assert dict(spec.defaults) == {"lr": 0.01, "alpha": 0.9} and spec.lr_grid == [0.003, 0.01]
    optimizer = registry.make("rmsprop_params", torch.nn.Linear(3, 2), {"alpha": 0.5})
    assert isinstance(optimizer.optimizer, torch.optim.RMSprop)
    assert optimizer.optimizer.defaults["alpha"] == 0.5
    parse_pipeline_config(params)  # loading the same params again in one process is fine

    results = tmp_path / "results"
    prepare(config, results=results)
    tuned = tune_cell(config, "digits_mlp", "rmsprop_params", results=results)
    assert [row["lr"] for row in tuned["grid"]] == [0.003, 0.01]
    metrics = train_cell(config, "digits_mlp", "rmsprop_params", 0, results=results)
    assert metrics["hyperparameters"]["lr"] in (0.003, 0.01) and metrics["steps"] > 0
    run = results / "tiny" / "runs" / "digits_mlp" / "rmsprop_params" / "0" / "metrics.json"
    assert json.loads(run.read_text())["final_train_loss"] == pytest.approx(
        metrics["final_train_loss"]
    )
    from bench.studies.invariance import invariance_cell

    record = json.loads(invariance_cell(config, "digits_mlp", results=results).read_text())
    deviations = record["max_relative_deviation"]
    assert set(deviations) == {"sgd", "rmsprop_params"}
    assert deviations["rmsprop_params"] > 1e-6  # RMSprop is not reparameterization-invariant


@pytest.mark.parametrize(
    ("name", "section", "words"),
    [
        ("sgd", {"register": RMSPROP}, "built-in optimizer"),
        ("mine", {"register": {**RMSPROP, "factory": "x:y"}}, "exactly one of"),
        ("mine", {"register": {k: v for k, v in RMSPROP.items() if k != "torch_optimizer"}},
         "exactly one of"),
        ("mine", {"register": {**RMSPROP, "torch_optimizer": "torch.optim.Nope"}},
         "cannot import"),
        ("mine", {"register": {**RMSPROP, "torch_optimizer": "torch.nn.Linear"}},
         "not a torch.optim.Optimizer"),
        ("mine", {"register": {**RMSPROP, "lr_grid": []}}, "lr_grid is empty"),
        ("mine", {"register": {**RMSPROP, "defaults": {"alpha": 0.9}}}, "must contain 'lr'"),
        ("mine", {"register": {**RMSPROP, "colour": 1}}, "unknown key"),
        ("mine", {"register": RMSPROP, "hyperparameters": {"beta": 1.0}}, "unknown hyperparameter"),
    ],
)  # fmt: skip
def test_bad_register_section_names_the_key(tmp_path, name, section, words):
    params = tiny_params(tmp_path)
    params["optimizers"][name] = section
    with pytest.raises(ConfigError, match=words) as error:
        parse_pipeline_config(params)
    assert f"optimizers.{name}" in str(error.value)


def test_plugin_module_registers_a_problem_and_an_optimizer(tmp_path, monkeypatch):
    module = tmp_path / "my_hobench_plugin.py"
    module.write_text(
        textwrap.dedent(
            """
            import dataclasses
            import torch
            from bench.problems import get_problem, register_problem
            from optimizers.registry import register_torch_optimizer

            register_problem(
                dataclasses.replace(get_problem("digits_mlp"), name="digits_mlp_copy"),
                replace=True,
            )
            register_torch_optimizer(
                "adagrad_plugin", torch.optim.Adagrad, defaults={"lr": 0.01},
                lr_grid=[0.01], description="Adagrad from a plugin", replace=True,
            )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_hobench_plugin", raising=False)
    params = tiny_params(tmp_path, plugins=["my_hobench_plugin"], problems=["digits_mlp_copy"])
    params["optimizers"] = {"adagrad_plugin": {}}
    config = parse_pipeline_config(params)
    assert config.plugins == ("my_hobench_plugin",) and "adagrad_plugin" in registry.available()
    assert "digits_mlp_copy" in problem_registry.PROBLEMS


def test_unimportable_plugin_names_the_key(tmp_path):
    params = tiny_params(tmp_path, plugins=["no_such_module_for_hobench"])
    with pytest.raises(ConfigError, match=r"plugins\[0\]: cannot import 'no_such_module"):
        parse_pipeline_config(params)
