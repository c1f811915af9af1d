"""Validate stage: the whole params.yaml, before any other stage runs.

    python -m bench.validate [--params params.yaml]

DVC checks a stage's params only when that stage runs, so a bad key read by no stage that has to
run (an unknown top-level key, a misspelt plugin, ``seeds: []`` after a full run) would pass as
"up to date". This stage depends on the whole params file (any edit reruns it) and every other
stage depends on its output, so ``dvc repro`` (and ``dvc exp run``) stop at it with one message
naming the key. Its output, ``results/<profile>/params.valid``, has the same content for every
valid params file, so a valid edit (one optimizer's section, a comment, the runtime section)
reruns no other stage through it. ``dvc repro -s STAGE`` skips it; STAGE itself still
validates the whole file before it writes anything.

It also refuses a dvc.yaml that is not the rendering of its params file
(:func:`bench.pipeline.check_current`): a grid edited in params.yaml (a problem, an optimizer, a
seed, a registered module) needs ``python -m bench.pipeline`` first (``make repro`` runs it).
"""

from __future__ import annotations

from collections.abc import Sequence

from bench import layout, pipeline
from bench.cli import run, stage_config, stage_parser
from bench.io import write_bytes_atomic

MARKER = "params.valid"
CONTENT = b"params.yaml is valid (bench/validate.py); this file is the same for every valid one\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    config = stage_config(args)
    pipeline.check_current(args.params, config.root)
    marker = layout.results_dir(config.profile, args.results) / MARKER
    write_bytes_atomic(marker, CONTENT)
    print(f"validate: {args.params} is valid → {marker}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
