"""cnnrt: a CNN inference runtime for Python.

Models are HDF5 files (see ``docs/format.md``); ``cnnrt.load`` validates a
file, plans its execution once, and returns a :class:`Model` whose
``predict`` runs the whole graph in compiled kernels with the GIL released.
"""
import os as _os

# OpenMP worker threads spin briefly after a parallel loop before they sleep:
# long enough to stay awake between the kernels of one predict call, short
# enough that a thread waiting for a peer the OS has descheduled (cores
# shared with other processes) soon gives its core up instead of burning it,
# and that workers go idle right after a call.  Set GOMP_SPINCOUNT to
# override; it is read when the OpenMP runtime loads.
_os.environ.setdefault("GOMP_SPINCOUNT", "5000")

from ._version import __version__
from .errors import ModelFormatError
from .model import Model, get_isa, get_num_threads, load, set_isa

__all__ = ["__version__", "ModelFormatError", "Model", "load", "get_num_threads",
           "get_isa", "set_isa"]
