"""Every entry point turns a user's mistake into one message naming the key and the value.

Each DVC stage's command line (as dvc.yaml writes it, on a cell of the tiny grid) runs on a set of
bad params files: a misspelt optimizer name, a wrong type, an out-of-range value, an unknown key,
a non-numeric target, a YAML syntax error. Expected of every one: exit status 2, one line on
stderr naming the key and the bad value, no traceback, and nothing written under the project
folder (no results/, no reports/). In-process for the whole matrix (fast), and in a real
subprocess for one bad file per stage (the exit status and stderr as a user sees them).
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_stages import tiny_params

from bench import pipeline
from bench.cli import run

ROOT = Path(__file__).resolve().parents[1]
CELL = {"problem": "digits_mlp", "optimizer": "sgd", "seed": "0"}


def _set(path: str, value):
    def mutate(params: dict) -> None:
        *parents, last = path.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


# (name, mutation of the tiny params or raw text, key the message must name, words it must hold)
BAD_PARAMS = [
    ("misspelt_optimizer", _set("optimizers.sgdd", {}), "optimizers.sgdd", "unknown optimizer"),
    ("misspelt_problem", _set("problems", ["digits_mpl"]), "problems[0]", "'digits_mpl'"),
    ("wrong_type", _set("train.epochs", "ten"), "train.epochs", "'ten'"),
    ("out_of_range", _set("tune.epochs_fraction", 0.0), "tune.epochs_fraction", "0.0"),
    ("unknown_key", _set("report", {"colour": "red"}), "report.colour", "unknown key"),
    ("bad_target", _set("aggregate.train_loss_target", {"digits_mlp": "abc"}),
     "aggregate.train_loss_target.digits_mlp", "'abc'"),
    ("yaml_syntax", "train: [unclosed\n", "not valid YAML", ""),
]  # fmt: skip


def stage_commands() -> dict[str, list[str]]:
    """stage → its command line from the pipeline's template (bench/pipeline.py renders every
    dvc.yaml from it) on the tiny grid's first cell."""
    stages = pipeline.template()["stages"]
    commands = {}
    for name, stage in stages.items():
        command = re.sub(r"\$\{item\.(\w+)\}", lambda m: CELL[m.group(1)], stage["cmd"])
        command = command.replace("${profile}", "tiny")
        commands[name] = shlex.split(command)
    return commands


def _write(tmp_path: Path, bad) -> Path:
    if isinstance(bad, str):
        text = bad
    else:
        params = copy.deepcopy(tiny_params(tmp_path))
        bad(params)
        text = yaml.safe_dump(params, sort_keys=False)
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml"


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _check(stderr: str, key: str, words: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert key in lines[0] and words in lines[0], lines[0]


@pytest.mark.parametrize("stage", sorted(stage_commands()))
@pytest.mark.parametrize(
    ("case", "bad", "key", "words"), BAD_PARAMS, ids=[b[0] for b in BAD_PARAMS]
)
def test_stage_rejects_bad_params_with_one_message(tmp_path, monkeypatch, capsys, stage, case,
                                                    bad, key, words):  # fmt: skip
    command = stage_commands()[stage]
    assert command[:2] == ["python", "-m"], command
    _write(tmp_path, bad)
    monkeypatch.chdir(tmp_path)
    before = _listing(tmp_path)
    main = importlib.import_module(command[2]).main
    capsys.readouterr()
    status = run(main, command[3:])
    captured = capsys.readouterr()
    assert status == 2, captured
    _check(captured.err, key, words)
    assert _listing(tmp_path) == before  # nothing written


@pytest.mark.parametrize("stage", sorted(stage_commands()))
def test_stage_command_line_exits_2_without_traceback(tmp_path, stage):
    command = stage_commands()[stage]
    name, bad, key, words = BAD_PARAMS[sorted(stage_commands()).index(stage) % len(BAD_PARAMS)]
    _write(tmp_path, bad)
    before = _listing(tmp_path)
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, *command[1:]], cwd=tmp_path, env=environment, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 2, (name, completed.stderr)
    _check(completed.stderr, key, words)
    assert completed.stderr.startswith(f"{command[2]}: error: ")
    assert _listing(tmp_path) == before
