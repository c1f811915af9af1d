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


# -- profiles: one params file and one generated pipeline (with its own dvc.lock) each ---------
DEFAULT_PARAMS, DEFAULT_PIPELINE, PROFILES = "params.yaml", "dvc.yaml", "profiles"
PROJECT_MARKERS = (".dvc", ".git")  # a folder holding one of these is a project's root


def profile_params(profile: str | None) -> Path:
    """The params file of a profile, relative to the project: ``params.yaml`` for the default
    (``None`` or ``"default"``), ``profiles/<profile>.yaml`` for any other."""
    if profile in (None, "default"):
        return Path(DEFAULT_PARAMS)
    return Path(PROFILES) / f"{profile}.yaml"


def pipeline_path(params: str | Path, root: str | Path) -> Path:
    """The generated dvc.yaml of a params file: ``dvc.yaml`` beside a project-level
    ``params.yaml``; ``<folder>/<name>/dvc.yaml`` for ``<folder>/<name>.yaml`` (DVC keeps a
    pipeline's dvc.lock beside its dvc.yaml, so each profile gets its own lock)."""
    params = Path(params).resolve()
    if params.parent == Path(root).resolve() and params.name == DEFAULT_PARAMS:
        return params.parent / DEFAULT_PIPELINE
    return params.parent / params.stem / DEFAULT_PIPELINE


def project_root(params: str | Path) -> Path:
    """The project a params file belongs to: the nearest folder, from the params file's own up,
    that holds ``.dvc`` or ``.git`` (``profiles/ci.yaml`` belongs to the checkout above it);
    the params file's folder when none does."""
    folder = Path(params).resolve().parent
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).exists() for marker in PROJECT_MARKERS):
            return candidate
    return folder
