"""Keep ``dvc repro`` runnable after a kill: a last good dvc.lock, restored when the current one is
broken.

DVC rewrites dvc.lock in place after every stage; a ``dvc repro`` killed during that write leaves
it empty or cut mid-entry, and every later ``dvc repro`` fails on it until it is repaired by hand.
``make repro`` runs

    python -m bench.lockfile guard     # before dvc repro: a broken dvc.lock is restored
    dvc repro
    python -m bench.lockfile save      # after it: this dvc.lock is the last good one

(``make repro PROFILE=ci`` passes ``--pipeline profiles/ci/dvc.yaml``: that profile's lock,
``profiles/ci/dvc.lock``, with its own last good copy.)

``guard`` checks that dvc.lock is a complete lock file (YAML that parses, schema 2.0, every stage
entry with its command and every dependency and output with a path and a whole MD5). When it is
not, it puts back, in this order, the last good copy saved by ``save``
(``.dvc/tmp/hobench/dvc.lock.good``), the committed one (``git show HEAD:dvc.lock``), or removes
it (DVC then reruns every stage), and says which. The stages the killed run had finished since
the last good lock rerun; their outputs were written atomically, so nothing else is lost.
With plain ``dvc repro``, do the same by hand: ``python -m bench.lockfile guard``, or
``git checkout dvc.lock``.

``guard`` then drops the entries of stages that are no longer in the pipeline (``prune``): DVC
keeps them forever, and it parses and rewrites the whole lock several times per stage it runs,
so a lock grown by earlier grids slows every stage (measured: a 135-entry lock of 404 KB, of
which 41 entries were the current pipeline's, made one ``dvc repro -s`` of a digits train cell
take 18.4 s against 13.8 s once pruned, the command alone about 8 s).
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.cli import ArgumentParser, run
from bench.io import write_bytes_atomic

LOCK = Path("dvc.lock")  # of the default pipeline; a profile's is profiles/<name>/dvc.lock
GOOD = Path(".dvc/tmp/hobench/dvc.lock.good")


def lock_paths(pipeline: str | Path = "dvc.yaml") -> tuple[Path, Path]:
    """(the dvc.lock beside ``pipeline``, where its last good copy is kept), project-relative:
    each profile's pipeline (bench/pipeline.py) has its own lock and its own good copy."""
    folder = Path(pipeline).parent
    if folder == Path("."):
        return LOCK, GOOD
    return folder / LOCK, GOOD.with_name(f"{'-'.join(folder.parts)}.dvc.lock.good")


LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the lock is ~200 KB
MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


def problem(text: str) -> str | None:
    """Why ``text`` is not a usable dvc.lock, or None when it is one.

    DVC writes whole lines and ends the file with a newline, so a file cut by a kill ends
    mid-line (caught here) or at the end of a line: then every entry that is there is checked
    whole (a dependency or output with its path, full MD5 and size), and what is missing after
    it (later stages, the rest of a stage's entry) only makes DVC rerun those stages."""
    if not text.endswith("\n"):
        return "empty" if not text else "cut mid-line"
    try:
        lock = yaml.load(text, Loader=LOADER)
    except yaml.YAMLError as error:
        return f"not valid YAML ({str(error).splitlines()[0]})"
    if not isinstance(lock, dict) or lock.get("schema") != "2.0":
        return "no 'schema: 2.0' lock file"
    stages = lock.get("stages")
    if not isinstance(stages, dict):
        return "no stages"
    for name, entry in stages.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("cmd"), str):
            return f"stage {name} has no command"
        for kind in ("deps", "outs"):
            for item in entry.get(kind) or []:
                if not _complete(item):
                    return f"stage {name}: incomplete {kind} entry {item!r}"
    return None


def _complete(item: Any) -> bool:
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        return False
    md5, size = item.get("md5"), item.get("size")
    if not (isinstance(md5, str) and MD5.match(md5) and isinstance(size, int)):
        return False
    return not md5.endswith(".dir") or isinstance(item.get("nfiles"), int)


def _committed(root: Path, lock: Path = LOCK) -> str | None:
    completed = subprocess.run(
        ["git", "show", f"HEAD:{lock.as_posix()}"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return completed.stdout if completed.returncode == 0 else None


def guard(root: Path = Path("."), pipeline: str | Path = "dvc.yaml") -> str:
    """Make the dvc.lock of ``root/pipeline`` complete (see the module docstring); what was
    done, in words."""
    relative_lock, relative_good = lock_paths(pipeline)
    lock = root / relative_lock
    if not lock.exists():
        return "no dvc.lock yet"
    why = problem(lock.read_text(encoding="utf-8", errors="replace"))
    if why is None:
        return "dvc.lock is complete"
    good = root / relative_good
    if good.is_file() and problem(good.read_text(encoding="utf-8")) is None:
        write_bytes_atomic(lock, good.read_bytes())
        return f"dvc.lock was broken ({why}): restored the last good copy ({relative_good})"
    committed = _committed(root, relative_lock)
    if committed is not None and problem(committed) is None:
        write_bytes_atomic(lock, committed.encode("utf-8"))
        return f"dvc.lock was broken ({why}): restored the committed one (git HEAD)"
    lock.unlink()
    return f"dvc.lock was broken ({why}) and no good copy exists: removed (every stage reruns)"


def stage_names(pipeline: dict[str, Any]) -> set[str] | None:
    """The names DVC gives the stages of a parsed dvc.yaml (``name``, ``name@a-b`` for a
    ``matrix``, ``name@key`` for a ``foreach``), or None when they cannot be told without DVC
    (a templated ``foreach``/``matrix``, values that are not plain scalars)."""
    names: set[str] = set()
    for name, stage in (pipeline.get("stages") or {}).items():
        if not isinstance(stage, dict):
            return None
        if "matrix" in stage:
            axes = stage["matrix"]
            if not isinstance(axes, dict) or not all(
                isinstance(values, list) and all(_plain(v) for v in values)
                for values in axes.values()
            ):
                return None
            for combination in itertools.product(*axes.values()):
                names.add(f"{name}@{'-'.join(map(str, combination))}")
        elif "foreach" in stage:
            items = stage["foreach"]
            if isinstance(items, list) and all(_plain(v) for v in items):
                names.update(f"{name}@{v}" for v in items)
            elif isinstance(items, dict):
                names.update(f"{name}@{key}" for key in items)
            else:
                return None
        else:
            names.add(name)
    return names


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and "${" not in str(value)


STAGE_KEY = re.compile(r"^  (\S.*):\s*$")  # a stage entry's first line, under `stages:`


def prune(root: Path = Path("."), pipeline: str | Path = "dvc.yaml") -> str:
    """Drop the dvc.lock entries of stages that ``root/pipeline`` no longer has (see the
    module docstring); what was done, in words. The other entries are kept byte for byte; a
    lock that is not complete, or a pipeline whose stage names need DVC, is left alone."""
    relative_lock, _ = lock_paths(pipeline)
    lock, source = root / relative_lock, root / pipeline
    if not lock.is_file() or not source.is_file():
        return "nothing to prune"
    text = lock.read_text(encoding="utf-8")
    if problem(text) is not None:
        return "dvc.lock is incomplete: not pruned"
    names = stage_names(yaml.load(source.read_text(encoding="utf-8"), Loader=LOADER) or {})
    if names is None:
        return f"stage names of {pipeline} need DVC: not pruned"
    kept: list[str] = []
    dropped: list[str] = []
    keep = True
    for line in text.splitlines(keepends=True):
        match = STAGE_KEY.match(line)
        if match:
            (name,) = yaml.load(f"{match.group(1)}: 0", Loader=LOADER)  # a quoted key unquoted
            keep = name in names
            if not keep:
                dropped.append(name)
        elif not line.startswith("  "):
            keep = True  # `schema:`, `stages:` and anything else at the top level
        if keep:
            kept.append(line)
    if not dropped:
        return "no stale entries"
    pruned = "".join(kept)
    before, after = (yaml.load(t, Loader=LOADER)["stages"] for t in (text, pruned))
    if problem(pruned) is not None or after != {k: v for k, v in before.items() if k in names}:
        return "dvc.lock has a layout this pruner does not know: not pruned"
    write_bytes_atomic(lock, pruned.encode("utf-8"))
    return f"dropped {len(dropped)} entries of stages no longer in {pipeline}"


def save(root: Path = Path("."), pipeline: str | Path = "dvc.yaml") -> str:
    """Keep a copy of a complete dvc.lock of ``root/pipeline`` as the last good one."""
    relative_lock, relative_good = lock_paths(pipeline)
    lock = root / relative_lock
    if not lock.is_file() or problem(lock.read_text(encoding="utf-8")) is not None:
        return "dvc.lock is absent or incomplete: the last good copy is kept"
    write_bytes_atomic(root / relative_good, lock.read_bytes())
    return f"saved {relative_lock} as the last good copy ({relative_good})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("guard", "save", "check"))
    parser.add_argument("--root", type=Path, default=Path("."), help="the project folder")
    parser.add_argument(
        "--pipeline", type=Path, default=Path("dvc.yaml"), help="whose dvc.lock (project-relative)"
    )
    args = parser.parse_args(argv)
    if args.action == "check":
        lock = args.root / lock_paths(args.pipeline)[0]
        why = problem(lock.read_text()) if lock.exists() else None
        print(f"lockfile: {why or 'complete'}")
        return 1 if why else 0
    if args.action == "save":
        print(f"lockfile: {save(args.root, args.pipeline)}", file=sys.stderr)
        return 0
    print(f"lockfile: {guard(args.root, args.pipeline)}", file=sys.stderr)
    print(f"lockfile: {prune(args.root, args.pipeline)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
