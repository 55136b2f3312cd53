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


def from_onnx(src, dst, input_shape=None, labels=None, preprocess=None) -> ConversionReport:
    """Convert an ONNX model (a path, bytes or an ``onnx.ModelProto``) to a cnnrt model at ``dst``.

    Opsets 9 to 21. ``input_shape`` (C, H, W) fixes an input whose size the
    file leaves dynamic; with a static shape, constant subgraphs (shape
    arithmetic for run-time "same" padding, ...) are evaluated at conversion.
    Needs the ``onnx`` package (``pip install "cnnrt[convert]"``).
    """
    from .common import finish
    from .onnx_import import onnx_to_graph

    graph, notes = onnx_to_graph(src, input_shape)
    return finish(graph, dst, "onnx", notes, labels=labels, preprocess=preprocess)


def from_torch(module, example_input, dst, labels=None, preprocess=None,
               opset: int = 17) -> ConversionReport:
    """Convert a PyTorch module to a cnnrt model at ``dst``.

    The module is exported with ``torch.onnx.export`` (the TorchScript
    exporter, in eval mode, on ``example_input`` of shape (N, C, H, W)) and
    the ONNX model is converted by :func:`from_onnx`.
    """
    import io

    try:
        import torch
    except ImportError:
        raise ImportError("from_torch needs PyTorch: pip install torch") from None
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    x = torch.as_tensor(example_input)
    if x.ndim != 4:
        raise ValueError(f"example_input must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    was_training = module.training
    module.eval()
    buf = io.BytesIO()
    try:
        import warnings
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
                              do_constant_folding=True)
    except Exception as exc:
        raise ConversionError(f"torch.onnx.export failed: {exc}".splitlines()[0]) from None
    finally:
        module.train(was_training)
    from .common import finish
    from .onnx_import import onnx_to_graph

    graph, notes = onnx_to_graph(buf.getvalue(), tuple(x.shape[1:]))
    return finish(graph, dst, "torch", notes, labels=labels, preprocess=preprocess)


def to_onnx(src, dst, opset: int = 17):
    """Export the cnnrt model file ``src`` to an ONNX file ``dst`` (checked with onnx.checker)."""
    from .onnx_export import export_onnx

    return export_onnx(src, dst, opset)
