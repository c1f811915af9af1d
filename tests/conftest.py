"""Shared fixtures: a fresh, replayable seed per test, and single-threaded torch for tiny tensors.

``seed``: drawn from os.urandom for every test, or fixed by ``HOBENCH_SEED=<int>`` to replay a
failure. It is printed in the report of every failing test that used it.
"""

from __future__ import annotations

import pytest
import torch
from reference import fresh_seed


@pytest.fixture
def seed(request) -> int:
    value = fresh_seed()
    request.node.hobench_seed = value
    return value


@pytest.fixture
def single_thread():
    """torch on one thread for the test: the tests use tensors of a few dozen entries, for
    which intra-op threads on busy cores cost far more than they give (measured ~50x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    value = getattr(item, "hobench_seed", None)
    if report.failed and value is not None:
        report.sections.append(("seed", f"replay with HOBENCH_SEED={value}"))
    return report
