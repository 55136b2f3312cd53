"""cnnrt: a CNN inference runtime for Python.

Models are HDF5 files (see ``docs/format.md``); ``cnnrt.load`` validates a
file, plans its execution once, and returns a :class:`Model` whose
``predict`` runs the whole graph in compiled kernels with the GIL released.
"""
import os as _os

# OpenMP worker threads spin after a parallel loop before they sleep.  A
# thread that sleeps between the kernels of a call must be woken by the next
# one, and on virtual machines waking an idle virtual CPU can take
# milliseconds; 300000 spins (libgomp's own default) keep the
# team awake through a call and between back-to-back calls.  Set
# GOMP_SPINCOUNT to override (lower where other busy processes share the
# cores); it is read when the OpenMP runtime loads.
_os.environ.setdefault("GOMP_SPINCOUNT", "300000")

from ._version import __version__
from .errors import ModelFormatError
from .model import Model, get_isa, get_num_threads, load, set_isa

__all__ = ["__version__", "ModelFormatError", "Model", "load", "get_num_threads",
           "get_isa", "set_isa"]
