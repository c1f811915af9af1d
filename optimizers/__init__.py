"""hobench's optimizer library: projected higher-order derivatives and the optimizers built on them.

Importable on its own (no dependency on the ``bench`` suite).
"""

from . import partition
from .derivatives import functional_loss, num_passes, projected_derivatives

__all__ = ["functional_loss", "num_passes", "partition", "projected_derivatives"]
__version__ = "0.1.0"
