"""The command line: ``cnnrt-run`` and ``cnnrt-inspect``.

``cnnrt-run MODEL IMAGE [IMAGE ...] [--top K] [--json] [--threads N]``
classifies images with a model file and prints, per image, the best label
and its probability (``score`` when the model does not end in a softmax),
the K best with ``--top K``, or one JSON object per line with ``--json``::

    {"image": "cat.png", "top": [{"index": 3, "label": "cat", "score": 0.97}]}

``cnnrt-inspect MODEL`` prints what a model file holds: input and output
shapes, layout, labels, preprocessing, provenance and the node table.

Both are thin layers over the Python API (``cnnrt.load``,
``Model.predict_image``).  Every error is one line on stderr,
``<command>: error: <message>``, never a traceback.  Exit status: 0 on
success, 1 when the model or any image could not be used (the other images
are still classified), 2 for a bad command line.
"""
import argparse
import json
import math
import os
import sys
from typing import List, Optional

import numpy as np

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2."""

    def error(self, message):
        raise _UsageError(" ".join(message.split()))


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _fail(prog, message):
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()


def _error_message(exc, path):
    """One-line message for an exception about ``path`` (model or image)."""
    if isinstance(exc, FileNotFoundError):
        text = exc.strerror if exc.filename else _one_line(exc)
        if exc.filename and path not in text:
            return f"{path}: {text}"
        return text
    if isinstance(exc, OSError) and exc.strerror:
        return f"{path}: {exc.strerror}"
    if isinstance(exc, MemoryError):
        return f"{path}: out of memory"
    text = _one_line(exc)
    if path not in text:
        text = f"{path}: {text}"
    return text


def _load_model(prog, path, threads=None):
    """cnnrt.load, or None after printing one line."""
    import cnnrt

    try:
        return cnnrt.load(path, threads=threads, isolate=True)  # a file from anywhere
    except cnnrt.ModelFormatError as exc:
        msg = _one_line(exc)
        _fail(prog, msg if path in msg else f"{path}: {msg}")
    except (OSError, ValueError, MemoryError) as exc:
        _fail(prog, _error_message(exc, path))
    return None


def _output_node(graph):
    """The node that writes the graph's output tensor."""
    out = graph.outputs[0]
    for node in reversed(graph.nodes):
        if out in node.outputs:
            return node
    return None


def _output_op(graph):
    node = _output_node(graph)
    return node.op if node is not None else None


def _top(scores, k):
    """Indices of the k largest scores, best first (ties: lower index first; NaN last)."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    key = np.where(np.isnan(flat), -np.inf, flat)
    order = np.argsort(-key, kind="stable")
    return flat, order[:min(k, flat.size)]


def _json_number(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _run_parser():
    p = _Parser(
        prog="cnnrt-run",
        description="Classify images with a cnnrt model file.",
        epilog="Exit status: 0 success, 1 a model or image could not be used, 2 bad arguments.",
    )
    p.add_argument("model", metavar="MODEL", help="model file (.h5)")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files (PNG, JPEG, ...) or folders (searched recursively)")
    p.add_argument("--top", metavar="K", type=_positive_int, default=1,
                   help="print the K best classes (default 1)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per image: {"image", "top": [{"index", "label", "score"}]}')
    p.add_argument("--threads", metavar="N", type=_positive_int, default=None,
                   help="kernel threads (default: every core)")
    p.add_argument("--batch", metavar="B", type=_positive_int, default=16,
                   help="images decoded (in parallel) and run together (default 16)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write one row per image to FILE (.csv or .jsonl) instead of printing")
    p.add_argument("--profile", action="store_true",
                   help="after classifying, time every node on the first image and print "
                        "the table (to stderr)")
    return p


def _parse(parser, argv):
    """Parse argv; returns (namespace, None) or (None, exit code)."""
    try:
        return parser.parse_args(argv), None
    except _UsageError as exc:
        _fail(parser.prog, f"{exc} (see {parser.prog} --help)")
        return None, EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return None, exc.code if isinstance(exc.code, int) else EXIT_OK


def _guard(prog, body):
    """Run ``body()``; turn interrupts, closed pipes and surprises into one line."""
    try:
        return body()
    except KeyboardInterrupt:
        _fail(prog, "interrupted")
        return 130
    except BrokenPipeError:
        # the reader of our output went away (``| head``): stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_FAILURE
    except Exception as exc:  # a bug in cnnrt: still one line, never a traceback
        _fail(prog, f"internal error: {type(exc).__name__}: {_one_line(exc)}")
        return EXIT_FAILURE


def main_run(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``cnnrt-run``; returns the exit status."""
    parser = _run_parser()
    args, code = _parse(parser, argv)
    if args is None:
        return code
    return _guard(parser.prog, lambda: _run(parser.prog, args))


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm")


def _expand(paths):
    """Files as given; folders replaced by their image files (recursive, sorted)."""
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(os.path.join(root, f) for f in files
                             if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
            yield from sorted(found)
        else:
            yield path


class _Rows:
    """Rows of --out, written to a temporary file renamed into place at the end."""

    def __init__(self, path, top):
        import tempfile

        ext = os.path.splitext(path)[1].lower()
        if ext not in (".csv", ".jsonl"):
            raise ValueError(f"--out must end in .csv or .jsonl, got {path!r}")
        self.path, self.jsonl, self.top = path, ext == ".jsonl", top
        folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=".cnnrt-", suffix=ext + ".tmp", dir=folder)
        self.fh = os.fdopen(fd, "w", encoding="utf-8", newline="")
        if not self.jsonl:
            import csv

            self.csv = csv.writer(self.fh)
            head = ["path", "label", "score", "index"]
            for k in range(2, top + 1):
                head += [f"label_{k}", f"score_{k}", f"index_{k}"]
            self.csv.writerow(head)

    def write(self, path, ranked):
        if self.jsonl:
            self.fh.write(json.dumps({"path": path, "top": [{"index": i, "label": l, "score": s}
                                                             for i, l, s in ranked]},
                                     ensure_ascii=False, allow_nan=False) + "\n")
        else:
            row = [path]
            for i, l, s in ranked:
                row += [l, "" if s is None else f"{s:.6g}", i]
            self.csv.writerow(row)

    def close(self, keep):
        from .format import _umask

        self.fh.close()
        if keep:
            os.chmod(self.tmp, 0o666 & ~_umask())
            os.replace(self.tmp, self.path)
        else:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


def _progress(total):
    """A tqdm bar on stderr when it is a terminal and tqdm is installed, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="img", file=sys.stderr, leave=False)


def _run(prog, args):
    from concurrent.futures import ThreadPoolExecutor

    from .image import ImageError, load_image
    from .model import get_num_threads

    model = _load_model(prog, args.model, args.threads)
    if model is None:
        return EXIT_FAILURE
    labels = model.labels
    kind = "probability" if _output_op(model.graph) == "softmax" else "score"
    shape, layout, pre = model.graph.input_shape, model.input_layout, model.preprocess
    failed = 0
    paths = []
    for path in _expand(args.images):
        paths.append(path)
    if not paths:
        _fail(prog, "no image files found")
        return EXIT_FAILURE
    rows = None
    if args.out is not None:
        try:
            rows = _Rows(args.out, args.top)
        except (ValueError, OSError) as exc:
            _fail(prog, f"{args.out}: {_one_line(exc)}")
            return EXIT_FAILURE
    bar = _progress(len(paths)) if rows is not None else None

    def label(i):
        return labels[i] if labels is not None and i < len(labels) else str(i)

    def decode(path):
        try:
            return load_image(path, shape, layout, pre), None
        except (ImageError, OSError, ValueError, MemoryError) as exc:
            return None, exc

    profiled = None
    ok = False
    try:
        with ThreadPoolExecutor(max(1, min(8, get_num_threads()))) as pool:
            for start in range(0, len(paths), args.batch):
                chunk = paths[start:start + args.batch]
                decoded = list(pool.map(decode, chunk))
                good = [x for x, err in decoded if err is None]
                scores = model.predict(np.stack(good)) if good else None
                j = 0
                for path, (x, err) in zip(chunk, decoded):
                    if err is not None:
                        _fail(prog, _error_message(err, path))
                        failed += 1
                        continue
                    flat, best = _top(scores[j], args.top)
                    j += 1
                    if rows is not None:
                        rows.write(path, [(int(i), label(i), _json_number(flat[i])) for i in best])
                    elif args.json:
                        record = {"image": path,
                                  "top": [{"index": int(i), "label": label(i),
                                           "score": _json_number(flat[i])} for i in best]}
                        print(json.dumps(record, ensure_ascii=False, allow_nan=False))
                    elif args.top == 1:
                        i = best[0]
                        print(f"{path}: {label(i)} ({kind} {flat[i]:.4f})")
                    else:
                        print(f"{path}:")
                        width = max(len(label(i)) for i in best)
                        for i in best:
                            print(f"  {label(i):<{width}}  ({kind} {flat[i]:.4f})")
                    if args.profile and profiled is None:
                        profiled = path
                        _print_profile(model, path)
                if rows is None:
                    sys.stdout.flush()
                if bar is not None:
                    bar.update(len(chunk))
        ok = True
    finally:
        if bar is not None:
            bar.close()
        if rows is not None:
            rows.close(keep=ok)
    if rows is not None:
        done = len(paths) - failed
        sys.stderr.write(f"{prog}: wrote {done} row(s) to {args.out}"
                         + (f"; {failed} image(s) failed" if failed else "") + "\n")
    return EXIT_FAILURE if failed else EXIT_OK


def _print_profile(model, path):
    """Per-node times on one image, slowest first, on stderr."""
    from .image import load_image

    x = load_image(path, model.graph.input_shape, model.input_layout, model.preprocess)[None]
    rows = model.profile(x, repeats=20)
    total = sum(r["ms"] for r in rows)
    width = max(len(r["name"]) for r in rows)
    out = [f"profile of {path} ({model.threads} threads, mean of 20 runs):"]
    for r in rows:
        out.append(f"  {r['name']:<{width}}  {r['op']:<24} {r['ms']:9.3f} ms  {100 * r['share']:5.1f}%")
    out.append(f"  {'total':<{width}}  {'':<24} {total:9.3f} ms")
    sys.stderr.write("\n".join(out) + "\n")


# --------------------------------------------------------------------------
# cnnrt-inspect
# --------------------------------------------------------------------------

def _inspect_parser():
    p = _Parser(prog="cnnrt-inspect",
                description="Describe a cnnrt model file: shapes, labels, preprocessing, nodes.")
    p.add_argument("model", metavar="MODEL", help="model file (.h5)")
    p.add_argument("--labels", metavar="N", type=_positive_int, default=10,
                   help="how many labels to list (default 10)")
    return p


def main_inspect(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``cnnrt-inspect``; returns the exit status."""
    parser = _inspect_parser()
    args, code = _parse(parser, argv)
    if args is None:
        return code
    return _guard(parser.prog, lambda: _inspect(parser.prog, args))


def _format_value(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, np.ndarray):
        return _format_value(value.tolist())
    return str(value)


def _inspect(prog, args):
    model = _load_model(prog, args.model, threads=1)
    if model is None:
        return EXIT_FAILURE
    g = model.graph
    c, h, w = g.input_shape
    lines = [
        f"model:        {args.model}",
        f"format:       cnnrt version {g.format_version}",
        f"producer:     {g.producer}",
    ]
    if g.description:
        lines.append(f"description:  {' '.join(g.description.split())}")
    batch = "x".join(map(str, ("N",) + tuple(model.input_shape)))
    lines.append(f"input:        '{g.inputs[0]}' [C, H, W] = [{c}, {h}, {w}], "
                 f"layout {g.input_layout} (predict takes {batch})")
    out_shape = list(model.output_shape)
    last = _output_node(g)
    lines.append(f"output:       '{g.outputs[0]}' {out_shape} "
                 f"(written by {last.op} node '{last.name}')")
    if g.labels is None:
        lines.append("labels:       none (classes are shown by index)")
    else:
        shown = ", ".join(g.labels[:args.labels])
        more = f", ... ({len(g.labels) - args.labels} more)" if len(g.labels) > args.labels else ""
        lines.append(f"labels:       {len(g.labels)}: {shown}{more}")
    if g.preprocess:
        parts = [f"{k}={_format_value(v)}" for k, v in g.preprocess.items()]
        lines.append(f"preprocess:   {', '.join(parts)}")
    else:
        lines.append("preprocess:   none (L or RGB by channel count, resized to the input, 0..255)")
    for key in sorted(g.meta):
        lines.append(f"meta {key}: {_format_value(g.meta[key])}")
    lines.append("")
    lines.append(model.summary())
    print("\n".join(lines))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main_run())
