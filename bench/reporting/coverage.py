"""What K-FAC preconditions on a problem's model, in one sentence of the report.

K-FAC (the registry's ``kfac``, :class:`optimizers.baselines.KfacOptimizer`, through ASDL)
preconditions only the modules ASDL supports; every other trainable parameter takes a plain
momentum-SGD step. :func:`kfac_coverage` builds the problem's model (its architecture: the
seed does not change it) and the optimizer on it and reads
:attr:`~optimizers.baselines.KfacOptimizer.coverage`; nothing is hard-coded per problem.
"""

from __future__ import annotations

import warnings

import torch.nn.functional as F

from bench.problems import get_problem
from optimizers.baselines import KfacCoverage, MissingDependencyError
from optimizers.registry import make

KFAC = "kfac"  # the registry name whose results get the sentence
# ASDL's Fisher is told by the criterion's kind only (cross-entropy or MSE); which modules it
# preconditions does not depend on it, so each problem loss maps to the plain function.
CRITERIA = {"cross_entropy": F.cross_entropy}


def kfac_coverage(problem: str) -> KfacCoverage | None:
    """The coverage of K-FAC on ``problem``'s model (None when ASDL is not installed)."""
    spec = get_problem(problem)
    if spec.loss not in CRITERIA:
        raise ValueError(f"problem {problem!r}: no K-FAC criterion for its loss {spec.loss!r}")
    model = spec.make_model(0)
    try:
        with warnings.catch_warnings():  # ASDL warns once per module class it does not support
            warnings.simplefilter("ignore")
            optimizer = make(KFAC, model, {}, criterion=CRITERIA[spec.loss])
    except MissingDependencyError:
        return None
    return optimizer.coverage


def _tensors(count: int) -> str:
    return f"{count} tensor{'s' * (count != 1)}"


def coverage_sentence(problem: str, coverage: KfacCoverage | None) -> str:
    """'K-FAC preconditions 26 of 26 parameter tensors of `p` (…% of its weights): Kronecker
    factors for Conv2d, Linear (…); none takes plain momentum-SGD steps.'"""
    if coverage is None:
        return f"K-FAC coverage of `{problem}`: unknown (ASDL, the package K-FAC needs, is absent)."
    total = len(coverage.module_types)
    sizes = dict(coverage.sizes)
    share = sum(sizes[name] for name in coverage.preconditioned) / max(sum(sizes.values()), 1)
    kinds = [
        f"Kronecker factors for {', '.join(coverage.types_of(coverage.kronecker))} "
        f"({_tensors(len(coverage.kronecker))})"
        if coverage.kronecker
        else "",
        f"one 2×2 block per unit for {', '.join(coverage.types_of(coverage.unit_wise))} "
        f"({_tensors(len(coverage.unit_wise))})"
        if coverage.unit_wise
        else "",
    ]
    how = ", ".join(kind for kind in kinds if kind)
    plain = coverage.plain
    rest = (
        "none takes plain momentum-SGD steps"
        if not plain
        else f"the {_tensors(len(plain))} of {', '.join(coverage.types_of(plain))} "
        f"({', '.join(f'`{name}`' for name in plain)}) take plain momentum-SGD steps, "
        "not preconditioned"
    )
    return (
        f"K-FAC preconditions {len(coverage.preconditioned)} of {total} parameter tensors of "
        f"`{problem}` ({share:.1%} of its weights)" + (f": {how}" if how else "") + f"; {rest}."
    )
