"""The errors a user can fix: every entry point turns them into one message and exit status 2.

* :class:`ConfigError` — a params file that does not describe a valid pipeline (the message names
  the file, the dotted key and the value);
* :class:`UsageError` — a command-line mistake, or an input the command needs that is missing or
  malformed (the message names the option or the file).

Both derive from :class:`UserError`, which :func:`bench.cli.run` catches; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake of the user's (params, command line, missing input), not a bug of ours."""


class ConfigError(UserError, ValueError):
    """A params file that does not describe a valid pipeline; the message names the key."""


class UsageError(UserError, ValueError):
    """A command-line mistake or a missing/malformed input; the message names it."""
