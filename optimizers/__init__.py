"""hobench's optimizer library: projected higher-order derivatives and the optimizers built on them.

Importable on its own: it needs torch, numpy and scipy only, never the ``bench`` suite. The
registry's kfac, adahessian and shampoo entries wrap optional packages, imported when such an
optimizer is built: ``pip install 'hobench[baselines]'`` (tests/test_library_imports.py).
"""

from . import flatness, partition
from .derivatives import functional_loss, num_passes, projected_derivatives
from .flatness import projected_derivatives_with_flatness
from .partitioned_newton import PartitionedNewton
from .probe import LearningRateProbe
from .subspace import SolverStatus, SubspaceStep, subspace_step

__all__ = [
    "LearningRateProbe",
    "PartitionedNewton",
    "SolverStatus",
    "SubspaceStep",
    "flatness",
    "functional_loss",
    "num_passes",
    "partition",
    "projected_derivatives",
    "projected_derivatives_with_flatness",
    "subspace_step",
]
__version__ = "0.1.0"
