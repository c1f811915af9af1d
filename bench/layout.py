"""Where the pipeline's files go: one function per kind of file, relative to a root.

    results/<profile>/data/<dataset>.npz                     prepare
    results/<profile>/tune/<problem>/<optimizer>.json        tune
    results/<profile>/runs/<problem>/<optimizer>/<seed>/     train (see bench.schema)
    results/<profile>/invariance/<problem>.json              invariance
    results/<profile>/timing/                                timing
    results/<profile>/summary.{csv,json}                     aggregate
    reports/<profile>/                                       report
    <runtime.checkpoint_dir>/<profile>/<problem>/<optimizer>/<seed>.pt   resumable train state

Every profile writes under its own ``<profile>`` folders, so profiles never overwrite each other.
:class:`bench.config.Config` exposes these as methods for its profile.
"""

from __future__ import annotations

from pathlib import Path

RESULTS, REPORTS = "results", "reports"


def valid_profile(name: str) -> bool:
    """A profile is a non-empty name of letters, digits, '-' and '_' (it names folders)."""
    return bool(name) and name.replace("-", "").replace("_", "").isalnum()


def results_dir(profile: str, root: str | Path = RESULTS) -> Path:
    return Path(root) / profile


def data_path(profile: str, dataset: str, root: str | Path = RESULTS) -> Path:
    return results_dir(profile, root) / "data" / f"{dataset}.npz"


def tune_path(profile: str, problem: str, optimizer: str, root: str | Path = RESULTS) -> Path:
    return results_dir(profile, root) / "tune" / problem / f"{optimizer}.json"


def runs_dir(profile: str, root: str | Path = RESULTS) -> Path:
    return results_dir(profile, root) / "runs"


def run_dir(
    profile: str, problem: str, optimizer: str, seed: int, root: str | Path = RESULTS
) -> Path:
    return runs_dir(profile, root) / problem / optimizer / str(seed)


def invariance_dir(profile: str, root: str | Path = RESULTS) -> Path:
    return results_dir(profile, root) / "invariance"


def invariance_path(profile: str, problem: str, root: str | Path = RESULTS) -> Path:
    return invariance_dir(profile, root) / f"{problem}.json"


def timing_dir(profile: str, root: str | Path = RESULTS) -> Path:
    return results_dir(profile, root) / "timing"


def summary_paths(profile: str, root: str | Path = RESULTS) -> tuple[Path, Path]:
    """(summary.csv, summary.json) of the aggregate stage."""
    base = results_dir(profile, root)
    return base / "summary.csv", base / "summary.json"


def report_dir(profile: str, root: str | Path = REPORTS) -> Path:
    return Path(root) / profile


def checkpoint_path(
    checkpoint_dir: str | Path, profile: str, problem: str, optimizer: str, seed: int
) -> Path:
    return Path(checkpoint_dir) / profile / problem / optimizer / f"{seed}.pt"
