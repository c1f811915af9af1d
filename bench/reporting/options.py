"""The command-line options the aggregate and report stages share, and their params check.

Both stages read the whole params file through :func:`bench.config.load_pipeline_config` (an
invalid file stops them as it stops every stage). ``--profile`` is optional: given, it must be
the params file's ``profile`` (dvc.yaml passes ``--profile ${profile}``), else a
:class:`~bench.errors.UsageError`. ``--results`` and ``--reports`` default to the folders of
the params file's project (:meth:`bench.config.Config.project_path`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import layout
from bench.config import Config, load_pipeline_config
from bench.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser, *, reports: bool = False) -> None:
    """``--params``, ``--profile``, ``--results`` and, with ``reports``, ``--reports``."""
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--profile", help="check that params' profile is this one, e.g. default")
    parser.add_argument("--results", type=Path, help=f"default: <project>/{layout.RESULTS}")
    if reports:
        parser.add_argument("--reports", type=Path, help=f"default: <project>/{layout.REPORTS}")


def stage_config(args: argparse.Namespace) -> Config:
    """The params file of ``args.params``, checked against ``--profile`` when it is given."""
    config = load_pipeline_config(args.params)
    if args.profile is not None and args.profile != config.profile:
        raise UsageError(
            f"--profile {args.profile!r} differs from profile {config.profile!r} in {args.params}"
        )
    return config
