"""Shared test setup."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # numpy_ref


@pytest.fixture(autouse=True)
def every_step_parallel():
    """Small test shapes still run every kernel's multi-threaded path."""
    from cnnrt import _engine

    previous = _engine.set_parallel_min_work(0)
    yield
    _engine.set_parallel_min_work(previous)
