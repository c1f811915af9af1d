"""The one wrapper of every command-line entry point (each DVC stage, every ``python -m bench.*``).

    if __name__ == "__main__":
        raise SystemExit(run(main))

:func:`run` calls ``main(argv)``; a :class:`~bench.errors.UserError` (a bad params value, a bad
option, a missing input) becomes one line ``<program>: error: <message>`` on stderr and exit
status 2, as argparse does for its own errors, with no traceback. Entry points validate their
configuration before they write anything, so such an error leaves ``results/`` and ``reports/``
as they were. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import UsageError, UserError

if TYPE_CHECKING:
    from bench.config import Config

EXIT_USAGE = 2


def program_name() -> str:
    """``python -m bench.train`` → ``bench.train`` (the name the user typed)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    return os.path.basename(sys.argv[0]) or "bench"


def run(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """``main(argv)``'s status; a :class:`UserError` → one message on stderr and status 2."""
    try:
        return int(main(argv) or 0)
    except UserError as error:
        print(f"{program_name()}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


class ArgumentParser(argparse.ArgumentParser):
    """argparse naming the program as :func:`program_name` does (``bench.train``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("prog", program_name())
        super().__init__(*args, **kwargs)


def stage_parser(
    description: str, *, profile: bool = False, reports: bool = False
) -> ArgumentParser:
    """The options every stage shares: ``--params`` (default params.yaml) and ``--results``;
    with ``profile``, ``--profile`` (checked against the params'), with ``reports``,
    ``--reports``. The folders default to the params file's project (see :func:`stage_config`)."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--results", type=Path, default=None, help="default: <project>/results")
    if profile:
        parser.add_argument("--profile", help="check that params' profile is this one")
    if reports:
        parser.add_argument("--reports", type=Path, default=None, help="default: <project>/reports")
    return parser


def stage_config(args: argparse.Namespace) -> Config:
    """The whole params file of ``args.params`` (:func:`bench.config.load_pipeline_config`);
    ``args.results`` (and ``args.reports``) resolved in the params file's project when not
    given; a ``--profile`` other than the params' is a :class:`~bench.errors.UsageError`."""
    from bench import layout
    from bench.config import load_pipeline_config

    config = load_pipeline_config(args.params)
    given = getattr(args, "profile", None)
    if given is not None and given != config.profile:
        raise UsageError(
            f"--profile {given!r} differs from profile {config.profile!r} in {args.params}"
        )
    args.results = config.project_path(args.results, layout.RESULTS)
    if hasattr(args, "reports"):
        args.reports = config.project_path(args.reports, layout.REPORTS)
    return config
