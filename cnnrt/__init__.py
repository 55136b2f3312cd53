"""cnnrt: a CNN inference runtime for Python.

Models are HDF5 files (see ``docs/format.md``); ``cnnrt.load`` validates a
file, plans its execution once, and returns a :class:`Model` whose
``predict`` runs the whole graph in compiled kernels with the GIL released.
"""
import os as _os

# OpenMP worker threads spin this long after a parallel loop before they
# sleep, so they are awake for the next kernel of the same predict call
# (sleeping and waking between kernels costs more than the kernels of small
# layers) but go idle soon after a call.  Set GOMP_SPINCOUNT to override;
# it is read when the OpenMP runtime loads.
_os.environ.setdefault("GOMP_SPINCOUNT", "100000")

from ._version import __version__
from .errors import ModelFormatError
from .model import Model, get_isa, get_num_threads, load, set_isa

__all__ = ["__version__", "ModelFormatError", "Model", "load", "get_num_threads",
           "get_isa", "set_isa"]
