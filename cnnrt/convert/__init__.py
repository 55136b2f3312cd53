"""Converters between cnnrt model files and other frameworks.

Each ``from_*`` function reads a trained model, rewrites it into cnnrt's
operators (folding what can be folded), checks the result against the
format's rules and writes it atomically to ``dst``; it returns a
:class:`ConversionReport`. Nothing is written when the conversion fails.
The source frameworks are optional: ``onnx`` for ONNX files, ``torch`` for
PyTorch modules; Keras ``.h5`` files are read with h5py alone.
"""
from .common import PREPROCESS_PRESETS, ConversionReport
from .errors import ConversionError, UnsupportedOpsError

__all__ = ["from_onnx", "from_keras", "from_torch", "to_onnx", "ConversionError",
           "UnsupportedOpsError", "ConversionReport", "PREPROCESS_PRESETS"]


def from_keras(src, dst, labels=None, preprocess=None) -> ConversionReport:
    """Convert a Keras legacy ``.h5`` model file (Keras 2 or 3) to a cnnrt model at ``dst``.

    The input stays NHWC (``input_layout`` of the file), so callers feed what
    they fed Keras. No Keras or TensorFlow is needed; nothing in the file is run.
    """
    from .common import finish
    from .keras import keras_to_graph

    graph, notes = keras_to_graph(src)
    return finish(graph, dst, "keras", notes, labels=labels, preprocess=preprocess)
