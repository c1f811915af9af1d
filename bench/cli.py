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

from bench.errors import UserError

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
