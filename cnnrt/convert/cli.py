"""``cnnrt-convert SRC DST``: bring a model into the cnnrt format, or out to ONNX.

The source format is detected from the file's content, not its name:

- an ONNX protobuf -> a cnnrt model (:func:`cnnrt.convert.from_onnx`);
- a Keras legacy ``.h5`` (``model_config`` and ``/model_weights``) -> a cnnrt
  model (:func:`cnnrt.convert.from_keras`);
- a cnnrt model with a DST ending in ``.onnx`` -> ONNX (:func:`cnnrt.convert.to_onnx`).

Labels (a text file, one per line) and preprocessing metadata (a preset name)
are attached to the result.  On success a summary of the model and of what
was folded is printed; on failure one line on stderr, no output file, exit
status 1 (2 for a bad command line).
"""
import os
import sys
from typing import List, Optional

from ..cli import EXIT_FAILURE, EXIT_OK, _fail, _guard, _one_line, _parse, _Parser
from .common import PREPROCESS_PRESETS


def _shape(text):
    import argparse

    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. 3,224,224), got {text!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W with positive sizes, got {text!r}")
    return dims


def _parser():
    p = _Parser(
        prog="cnnrt-convert",
        description="Convert an ONNX or Keras .h5 model to a cnnrt model file, "
                    "or a cnnrt model to ONNX (DST ending in .onnx).",
        epilog="Exit status: 0 success, 1 the model could not be converted, 2 bad arguments.",
    )
    p.add_argument("src", metavar="SRC", help="ONNX file, Keras .h5 file, or cnnrt model file")
    p.add_argument("dst", metavar="DST", help="the file to write (.h5, or .onnx to export)")
    p.add_argument("--input-shape", metavar="C,H,W", type=_shape, default=None,
                   help="static input size for an ONNX model whose input size is dynamic")
    p.add_argument("--labels", metavar="FILE", default=None,
                   help="text file with one class label per line")
    p.add_argument("--preprocess", metavar="NAME", default=None,
                   choices=sorted(PREPROCESS_PRESETS),
                   help="preprocessing recorded in the model: " + ", ".join(sorted(PREPROCESS_PRESETS)))
    p.add_argument("--opset", type=int, default=17, help="ONNX opset when exporting (13..21, default 17)")
    return p


def _kind(path):
    """'onnx', 'keras', 'cnnrt', or None."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        from .keras import is_keras_file

        if is_keras_file(path):
            return "keras"
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                if "format" in fh.attrs:
                    return "cnnrt"
        except Exception:
            return None
        return None
    if head.startswith(b"PK"):
        return "keras-archive"
    return "onnx"  # protobuf has no magic number: let the ONNX reader decide


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``cnnrt-convert``; returns the exit status."""
    parser = _parser()
    args, code = _parse(parser, argv)
    if args is None:
        return code
    return _guard(parser.prog, lambda: _convert(parser.prog, args))


def _convert(prog, args):
    from . import from_keras, from_onnx, to_onnx
    from ..errors import ModelFormatError

    if not os.path.isfile(args.src):
        _fail(prog, f"{args.src}: no such file")
        return EXIT_FAILURE
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        _fail(prog, "SRC and DST are the same file")
        return EXIT_FAILURE
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.dst))):
        _fail(prog, f"{args.dst}: the folder does not exist")
        return EXIT_FAILURE
    try:
        kind = _kind(args.src)
        if kind == "keras-archive":
            raise ValueError("a Keras 3 .keras archive: save the model as .h5 "
                             "(model.save('model.h5')) to convert it")
        if kind is None:
            raise ValueError("an HDF5 file that is neither a Keras model nor a cnnrt model")
        if kind == "cnnrt":
            if not args.dst.lower().endswith(".onnx"):
                raise ValueError("SRC is already a cnnrt model; give a DST ending in .onnx to export it")
            to_onnx(args.src, args.dst, opset=args.opset)
            print(f"exported {args.src} to ONNX opset {args.opset}: {args.dst}")
            return EXIT_OK
        if args.dst.lower().endswith(".onnx"):
            raise ValueError("DST ends in .onnx but SRC is not a cnnrt model: convert it to .h5 first")
        if kind == "keras":
            if args.input_shape is not None:
                raise ValueError("--input-shape applies to ONNX models only")
            report = from_keras(args.src, args.dst, labels=args.labels, preprocess=args.preprocess)
        else:
            report = from_onnx(args.src, args.dst, input_shape=args.input_shape,
                               labels=args.labels, preprocess=args.preprocess)
    except (ValueError, ModelFormatError, OSError, ImportError) as exc:
        _fail(prog, f"{args.src}: {_one_line(exc)}")
        return EXIT_FAILURE
    print(report.summary())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
