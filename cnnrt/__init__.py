"""cnnrt: a CNN inference runtime for Python.

Models are HDF5 files (see ``docs/format.md``); ``cnnrt.load`` validates a
file, plans its execution once, and returns a :class:`Model` whose
``predict`` runs the whole graph in compiled kernels with the GIL released.
"""
from ._version import __version__
from .errors import ModelFormatError
from .model import Model, get_isa, get_num_threads, load, set_isa

__all__ = ["__version__", "ModelFormatError", "Model", "load", "get_num_threads",
           "get_isa", "set_isa"]
