"""Fail when the environment is not the intended one: torch must be the pinned CPU build and
torchvision must be absent (a dependency pulling torchvision swaps torch for a CUDA build)."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence

from bench.cli import ArgumentParser, run

PINNED_TORCH = "2.13.0"


def problems(strict: bool = False) -> list[str]:
    """What is wrong with the environment; ``strict`` also requires the CPU build (``+cpu``)."""
    found: list[str] = []
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return ["torch is not installed"]
    if version.split("+")[0] != PINNED_TORCH:
        found.append(f"torch {version} is installed, the project pins {PINNED_TORCH}")
    elif strict and not version.endswith("+cpu"):
        found.append(f"torch {version} is not the CPU build ({PINNED_TORCH}+cpu) CI expects")
    try:
        vision = importlib.metadata.version("torchvision")
        found.append(f"torchvision {vision} is installed; nothing in hobench may pull it in")
    except importlib.metadata.PackageNotFoundError:
        pass
    for name in importlib.metadata.distributions():
        dist = (name.metadata["Name"] or "").lower()
        if dist.startswith("nvidia-") or dist == "triton":
            found.append(f"{dist} is installed: a CUDA build of torch was pulled in")
            break
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="also require the CPU build")
    found = problems(strict=parser.parse_args(argv).strict)
    for line in found:
        print(f"check_env: {line}", file=sys.stderr)
    if not found:
        import torch

        print(f"check_env: torch {torch.__version__}, no torchvision, no CUDA packages: OK")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(run(main))
