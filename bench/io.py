"""Atomic writers for every result file of the pipeline.

A result file is either absent or complete: each writer writes a temporary file in the *same*
directory as the target (so the rename never crosses a file system), flushes and fsyncs it, then
``os.replace``-s it over the target. A process killed at any moment leaves at most a stray
``.<name>.*.tmp`` file, never a truncated result.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported only by the writer that needs it (it costs ~0.5 s)
    import pandas as pd


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file beside it + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            if hasattr(os, "fchmod"):  # mkstemp creates 0600; give what open() would have
                os.fchmod(file.fileno(), 0o666 & ~_umask())
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def write_json_atomic(path: str | os.PathLike, obj: Any, *, allow_nan: bool = False) -> Path:
    """Write ``obj`` as indented JSON (keys in insertion order), atomically.

    By default the JSON is strict: a NaN or infinite float raises ``ValueError``. With
    ``allow_nan=True`` they are written as the literals ``NaN`` / ``Infinity`` that Python's
    ``json`` module (and pandas) read back unchanged; the pipeline uses this for per-run files,
    whose values at divergence are kept as they were, never replaced.
    """
    text = json.dumps(obj, indent=2, allow_nan=allow_nan) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(path: str | os.PathLike, dataframe: pd.DataFrame) -> Path:
    """Write ``dataframe`` as CSV without its index, atomically (floats at full precision)."""
    return write_bytes_atomic(path, dataframe.to_csv(index=False).encode("utf-8"))


def write_rows_csv_atomic(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]
) -> Path:
    """Write dict rows as CSV with the given columns, atomically, without importing pandas.

    The file reads back with ``pandas.read_csv`` exactly as :func:`write_csv_atomic` would have
    written the same table: floats at full precision (``repr``), a missing key or NaN as an empty
    field, ±inf as ``inf`` / ``-inf``, booleans as ``True`` / ``False``.
    """

    def field(value: Any) -> Any:
        if value is None or (isinstance(value, float) and value != value):
            return ""
        return repr(value) if isinstance(value, float) else value

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([field(row.get(column)) for column in columns])
    return write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`write_json_atomic` (NaN / Infinity literals allowed)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_dir_atomic(target: str | os.PathLike, build: Callable[[Path], Any]) -> Path:
    """Build a whole directory with ``build(staging)`` and swap it in for ``target`` at once.

    ``staging`` is a fresh directory beside ``target`` (same file system); when ``build``
    returns, the previous ``target`` (if any) is moved aside, the staging directory renamed to
    ``target`` and the old one removed. If ``build`` raises, or the process is killed, ``target``
    is left as it was (stray ``.<name>.staging-*`` directories of earlier kills are removed
    first). The directory gets the mode ``mkdir`` would give under the umask.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.previous-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = target.parent / f".{target.name}.previous-{os.getpid()}"
    if target.exists():
        os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        if backup.exists():
            os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return target
