"""Command-line pieces the study tools share: option types that reject a bad value with a message
naming it (argparse then exits with status 2, nothing written), reading a stored result or a
stage's prepared data (a missing file is a :class:`~bench.errors.UsageError`), and the command
line a result records."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import UsageError

__all__ = [
    "command_line",
    "device",
    "positive_float",
    "positive_int",
    "prepared_splits",
    "read_result",
]


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def device(name: str):
    """argparse type: a torch device that exists on this machine (``cuda`` needs CUDA)."""
    import torch

    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {name!r} (e.g. cpu, cuda)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{name!r}: CUDA is not available on this machine")
    return chosen


def read_result(option: str, path: Path) -> dict[str, Any]:
    """A stored result file (JSON object); a missing or malformed file is a :class:`UsageError`."""
    try:
        result = json.loads(Path(path).read_text())
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot read it ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{option} {path}: not JSON ({error})") from None
    if not isinstance(result, dict):
        raise UsageError(f"{option} {path}: not a stored result (a JSON object)")
    return result


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """``python -m <module> <arguments>`` as typed (``argv``, or this process's arguments)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python -m", module, *arguments])


def prepared_splits(config: Any, dataset: str, results: str | Path) -> Any:
    """The prepare stage's splits of ``dataset`` under ``results`` (:func:`bench.data.load_splits`);
    a missing file is a :class:`UsageError` naming it and the stage that writes it."""
    from bench.data import load_splits

    path = config.data_path(dataset, results)
    if not path.is_file():
        raise UsageError(
            f"no prepared data at {path} (--results {results}); run `python -m bench.prepare` first"
        )
    return load_splits(path)
