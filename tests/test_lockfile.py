"""A dvc.lock left empty or cut by a killed ``dvc repro`` is repaired by ``make repro`` itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


# ------------------------------------------------------------------ stale entries
PIPELINE = """stages:
  prepare:
    cmd: python -m bench.prepare
  tune:
    matrix:
      problem: [p1, p2]
      optimizer: [sgd, adam]
    cmd: python -m bench.tune --problem ${item.problem} --optimizer ${item.optimizer}
  invariance:
    foreach: [p1, p2]
    do:
      cmd: python -m bench.invariance --problem ${item}
"""


def _entry(name: str, n: int) -> str:
    md5 = f"abcdef{n:026x}"
    return (f"  {name}:\n    cmd: python -m x {n}\n    deps:\n    - path: a/{n}.py\n"
            f"      hash: md5\n      md5: {md5}\n      size: {n}\n")  # fmt: skip


def _lock(names: list[str]) -> str:
    return "schema: '2.0'\nstages:\n" + "".join(_entry(n, i) for i, n in enumerate(names, 1))


def test_stage_names_of_matrix_and_foreach_stages():
    names = lockfile.stage_names(yaml.safe_load(PIPELINE))
    assert names == {"prepare", "tune@p1-sgd", "tune@p1-adam", "tune@p2-sgd", "tune@p2-adam",
                     "invariance@p1", "invariance@p2"}  # fmt: skip
    templated = PIPELINE.replace("[p1, p2]\n      optimizer", "${problems}\n      optimizer")
    assert lockfile.stage_names(yaml.safe_load(templated)) is None


def test_prune_drops_the_entries_of_removed_stages_and_keeps_the_rest_byte_for_byte(tmp_path):
    current = ["prepare", "tune@p1-sgd", "tune@p2-adam", "invariance@p2"]
    stale = ["tune@p3-sgd", "train@p1-sgd-0", "'odd: name'", "invariance@p9"]
    order = [stale[0], current[0], stale[1], current[1], current[2], stale[2], current[3], stale[3]]
    text = _lock(order)
    assert lockfile.problem(text) is None
    (tmp_path / "dvc.yaml").write_text(PIPELINE)
    (tmp_path / "dvc.lock").write_text(text)
    assert lockfile.prune(tmp_path) == "dropped 4 entries of stages no longer in dvc.yaml"
    pruned = (tmp_path / "dvc.lock").read_text()
    expected = "schema: '2.0'\nstages:\n" + "".join(
        _entry(n, i) for i, n in enumerate(order, 1) if n in current
    )
    assert pruned == expected
    assert lockfile.prune(tmp_path) == "no stale entries"
    assert (tmp_path / "dvc.lock").read_text() == expected


def test_prune_leaves_a_lock_alone_when_it_cannot_be_sure(tmp_path):
    text = _lock(["prepare", "tune@p3-sgd"])
    (tmp_path / "dvc.lock").write_text(text)
    assert lockfile.prune(tmp_path) == "nothing to prune"  # no dvc.yaml
    templated = PIPELINE.replace("[p1, p2]\n      optimizer", "${problems}\n      optimizer")
    (tmp_path / "dvc.yaml").write_text(templated)
    assert "need DVC: not pruned" in lockfile.prune(tmp_path)
    (tmp_path / "dvc.yaml").write_text(PIPELINE)
    (tmp_path / "dvc.lock").write_text(text[:-10])  # cut: guard's business, not prune's
    assert lockfile.prune(tmp_path) == "dvc.lock is incomplete: not pruned"
    assert (tmp_path / "dvc.lock").read_text() == text[:-10]


def test_the_committed_locks_have_no_stale_entries():
    """make repro prunes before dvc repro; the committed locks are what it left."""
    for pipeline in ("dvc.yaml", "profiles/ci/dvc.yaml"):
        lock = yaml.safe_load((ROOT / lockfile.lock_paths(pipeline)[0]).read_text())["stages"]
        names = lockfile.stage_names(yaml.safe_load((ROOT / pipeline).read_text()))
        assert names is not None and set(lock) <= names, sorted(set(lock) - names)


def test_make_repro_prunes_through_guard(tmp_path):
    (tmp_path / "dvc.yaml").write_text(PIPELINE)
    (tmp_path / "dvc.lock").write_text(_lock(["prepare", "tune@p3-sgd"]))
    completed = subprocess.run(
        [sys.executable, "-m", "bench.lockfile", "guard", "--root", str(tmp_path)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert "dropped 1 entries" in completed.stderr
    assert set(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == {"prepare"}
    makefile = (ROOT / "Makefile").read_text()
    assert "-m bench.lockfile guard --pipeline $(PIPELINE)" in makefile
