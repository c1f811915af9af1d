"""A dvc.lock left empty or cut by a killed ``dvc repro`` is repaired by ``make repro`` itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import lockfile

ROOT = Path(__file__).resolve().parents[1]
GOOD = (ROOT / "dvc.lock").read_text()


def _project(tmp_path: Path, *, saved: bool, committed: bool) -> Path:
    (tmp_path / "dvc.lock").write_text(GOOD)
    if saved:
        assert "saved" in lockfile.save(tmp_path)
    if committed:
        run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
        run("init", "-q")
        run("add", "dvc.lock")
        run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")
    return tmp_path


def _cuts() -> list[int]:
    """Byte offsets a kill may cut dvc.lock at: empty, inside lines (an MD5, a size, a command,
    the schema line), and the line ends right after the first of them."""
    inside = [GOOD.index(word) + len(word) + 3 for word in ("md5: ", "size: ", "cmd: ")]
    return [0, 5, *inside, len(GOOD) - 2]


@pytest.mark.parametrize("cut", _cuts())
@pytest.mark.parametrize(("saved", "committed"), [(True, False), (False, True)])
def test_a_lock_cut_mid_line_is_restored(tmp_path, cut, saved, committed):
    project = _project(tmp_path, saved=saved, committed=committed)
    (project / "dvc.lock").write_text(GOOD[:cut])
    assert lockfile.problem(GOOD[:cut]) is not None
    message = lockfile.guard(project)
    assert ("restored the last good copy" if saved else "committed") in message
    assert (project / "dvc.lock").read_text() == GOOD


def test_a_lock_cut_at_a_line_end_is_usable_or_restored(tmp_path):
    project = _project(tmp_path, saved=True, committed=False)
    for fraction in (0.2, 0.6):
        end = GOOD.index("\n", int(fraction * len(GOOD))) + 1
        (project / "dvc.lock").write_text(GOOD[:end])
        lockfile.guard(project)
        text = (project / "dvc.lock").read_text()
        assert lockfile.problem(text) is None and GOOD.startswith(text)


def test_a_complete_lock_is_left_alone_and_no_copy_means_removal(tmp_path):
    project = _project(tmp_path, saved=False, committed=False)
    assert lockfile.guard(project) == "dvc.lock is complete"
    (project / "dvc.lock").write_text(GOOD[: len(GOOD) // 2])
    assert "removed" in lockfile.guard(project)
    assert not (project / "dvc.lock").exists()


def test_an_incomplete_hash_is_a_problem():
    cut = GOOD.index("md5: ") + len("md5: ") + 10
    assert "incomplete" in lockfile.problem(GOOD[:cut] + "\n")
    assert lockfile.problem(GOOD) is None
