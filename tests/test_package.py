"""The library's public names, and its independence from the benchmark suite."""

from __future__ import annotations

import subprocess
import sys


def test_public_names_import_and_bench_is_not_needed():
    code = (
        "import sys, optimizers, optimizers.registry;"
        "from optimizers import (PartitionedNewton, LearningRateProbe, projected_derivatives,"
        " subspace_step, SubspaceStep, SolverStatus, functional_loss, partition);"
        "assert not [m for m in sys.modules if m == 'bench' or m.startswith('bench.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
