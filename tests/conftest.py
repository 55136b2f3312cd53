"""Shared test setup, and helpers for building models through real files.

The plain functions (``make_model``, ``assert_close``, ``rand``) can be
imported by test modules (``from conftest import make_model``); the
``model_from`` fixture binds ``make_model`` to the test's temporary folder.
"""
import itertools
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # numpy_ref, reference

import cnnrt  # noqa: E402
from cnnrt.format import Graph, write_model  # noqa: E402

RTOL = 1e-4

_counter = itertools.count()


@pytest.fixture(autouse=True)
def every_step_parallel():
    """Small test shapes still run every kernel's multi-threaded path."""
    from cnnrt import _engine

    previous = _engine.set_parallel_min_work(0)
    yield
    _engine.set_parallel_min_work(previous)


def assert_close(got, ref, rtol=RTOL):
    """float32 result ``got`` agrees with the float64 ``ref`` within rtol, relative to ref's scale."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"shape {got.shape}, expected {ref.shape}"
    assert np.isfinite(got).all(), "result has non-finite values"
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


def rand(rng, *shape, scale=1.0):
    """Standard-normal float32 values of the given shape."""
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def make_model(folder, nodes, input_shape, threads=None, memory_limit=None, **graph_kwargs):
    """Write a Graph of ``nodes`` with cnnrt's writer into ``folder``; load it with cnnrt.load.

    ``nodes`` may also be a ready Graph (then ``input_shape`` is ignored).
    """
    if isinstance(nodes, Graph):
        graph = nodes
    else:
        graph = Graph(list(nodes), input_shape=tuple(input_shape), **graph_kwargs)
    path = os.path.join(os.fspath(folder), f"model{next(_counter)}.h5")
    write_model(path, graph)
    return cnnrt.load(path, threads=threads, memory_limit=memory_limit)


@pytest.fixture
def model_from(tmp_path):
    """``model_from(nodes, input_shape, **kw)``: make_model into this test's tmp_path."""
    def build(nodes, input_shape=None, **kw):
        return make_model(tmp_path, nodes, input_shape, **kw)
    return build


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    """A folder for the whole session (hypothesis tests cannot use function-scoped ones)."""
    return tmp_path_factory.mktemp("models")
