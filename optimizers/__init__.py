"""hobench's optimizer library: projected higher-order derivatives and the optimizers built on them.

Importable on its own (no dependency on the ``bench`` suite).
"""

from . import partition
from .derivatives import functional_loss, num_passes, projected_derivatives
from .partitioned_newton import PartitionedNewton
from .probe import LearningRateProbe
from .subspace import SolverStatus, SubspaceStep, subspace_step

__all__ = [
    "LearningRateProbe",
    "PartitionedNewton",
    "SolverStatus",
    "SubspaceStep",
    "functional_loss",
    "num_passes",
    "partition",
    "projected_derivatives",
    "subspace_step",
]
__version__ = "0.1.0"
