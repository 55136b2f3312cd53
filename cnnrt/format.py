"""The cnnrt model format, version 1: reader, writer and validation.

This module owns the HDF5 layout described in ``docs/format.md``.  It is the
one place that answers "is this file a valid model, and what does it mean":

* ``read_model(path)`` parses a file into a :class:`Graph` and validates it;
  every problem raises :class:`cnnrt.ModelFormatError` naming the node.
* ``write_model(path, graph)`` validates a :class:`Graph` and writes it to a
  temporary file in the destination folder, then renames it into place.
* ``validate(graph)`` checks an in-memory graph and returns the shape of
  every tensor.

Nothing in a model file is executed: attributes and datasets are read as
plain numbers and strings, links to other files and external storage are
refused, and every dataset's shape and dtype are checked before its data is
read.
"""
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from math import prod
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._version import __version__
from .errors import ModelFormatError
from .ops import ACTIVATIONS, MAX_DIM, OPS, ShapeError

FORMAT_NAME = "cnnrt"
FORMAT_VERSION = 1
LAYOUTS = ("NCHW", "NHWC")

# Default ceiling on the memory a model may ask for: its weights, and the
# activations of one sample.  ``cnnrt.load(..., memory_limit=...)`` changes it.
DEFAULT_MEMORY_LIMIT = 4 << 30

PREPROCESS_KEYS = ("color", "resize", "scale", "mean", "std", "invert")


@dataclass
class Node:
    """One node of the graph: an op, its tensors, attributes and weights."""

    op: str
    name: str
    inputs: List[str]
    outputs: List[str]
    attrs: Dict[str, object] = field(default_factory=dict)
    weights: Dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Graph:
    """A whole model: nodes in execution order plus what a caller needs."""

    nodes: List[Node]
    input_shape: Tuple[int, int, int]
    inputs: List[str] = field(default_factory=lambda: ["input"])
    outputs: List[str] = field(default_factory=lambda: ["output"])
    input_layout: str = "NCHW"
    producer: str = f"cnnrt {__version__}"
    format_version: int = FORMAT_VERSION
    labels: Optional[List[str]] = None
    description: Optional[str] = None
    preprocess: Optional[Dict[str, object]] = None
    meta: Dict[str, object] = field(default_factory=dict)  # free-form /meta attributes


def _err(where, msg):
    return ModelFormatError(f"{where}: {msg}" if where else msg)


# --------------------------------------------------------------------------
# Typed attribute access
# --------------------------------------------------------------------------

def _as_str(value, where, key):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _err(where, f"attribute '{key}' is not valid UTF-8") from None
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "OSU":
        return _as_str(value.item(), where, key)
    raise _err(where, f"attribute '{key}' must be a string, got {_describe(value)}")


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype} with shape {list(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:80]


def _get_attr(attrs, key, where):
    if key not in attrs:
        raise _err(where, f"missing attribute '{key}'")
    try:
        return attrs[key]
    except Exception as exc:  # unreadable attribute (bad type, damaged file)
        raise _err(where, f"attribute '{key}' cannot be read ({exc})") from None


def read_attr(attrs, key, kind, where, length=None):
    """Read one attribute of the given kind, or raise ModelFormatError."""
    value = _get_attr(attrs, key, where)
    if kind == "string":
        return _as_str(value, where, key)
    if kind == "strings":
        arr = np.asarray(value) if isinstance(value, (list, tuple)) else value
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind not in "OSU":
            raise _err(where, f"attribute '{key}' must be a 1-D string array, got {_describe(value)}")
        return [_as_str(v, where, key) for v in arr]
    if kind == "int":
        arr = np.asarray(value)
        if arr.shape not in ((), (1,)) or arr.dtype.kind not in "iu":
            raise _err(where, f"attribute '{key}' must be an integer, got {_describe(value)}")
        return int(arr.reshape(()))
    if kind == "float":
        arr = np.asarray(value)
        if arr.shape not in ((), (1,)) or arr.dtype.kind not in "iuf":
            raise _err(where, f"attribute '{key}' must be a number, got {_describe(value)}")
        out = float(arr.reshape(()))
        if out != out:
            raise _err(where, f"attribute '{key}' is NaN")
        return out
    if kind in ("ints", "floats"):
        arr = np.asarray(value)
        kinds = "iu" if kind == "ints" else "iuf"
        if arr.ndim != 1 or arr.dtype.kind not in kinds:
            what = "integer" if kind == "ints" else "number"
            raise _err(where, f"attribute '{key}' must be a 1-D {what} array, got {_describe(value)}")
        if length is not None and arr.shape[0] != length:
            raise _err(where, f"attribute '{key}' must have {length} values, got {arr.shape[0]}")
        if kind == "ints":
            return tuple(int(v) for v in arr)
        vals = tuple(float(v) for v in arr)
        if not all(np.isfinite(vals)):
            raise _err(where, f"attribute '{key}' has a non-finite value")
        return vals
    raise AssertionError(kind)


# --------------------------------------------------------------------------
# Validation of an in-memory graph
# --------------------------------------------------------------------------

def _check_op_attrs(node, where):
    """Value checks for the op's attributes (types were checked on read)."""
    a = node.attrs
    spec = OPS[node.op]
    for s in spec.attrs:
        a[s.name] = read_attr(a, s.name, s.kind, where, s.length)
    if "kernel" in a:
        for key, lo in (("kernel", 1), ("stride", 1), ("dilation", 1), ("padding", 0)):
            if key not in a:
                continue
            vals = tuple(a[key])
            if any(v < lo for v in vals):
                what = "positive" if lo else "zero or positive"
                raise _err(where, f"attribute '{key}' must be {what}, got {list(vals)}")
            if any(v > MAX_DIM for v in vals):
                raise _err(where, f"attribute '{key}' {list(vals)} exceeds the limit {MAX_DIM}")
    if "groups" in a:
        if not 1 <= a["groups"] <= MAX_DIM:
            raise _err(where, f"attribute 'groups' must be positive, got {a['groups']}")
    if "activation" in a and a["activation"] not in ACTIVATIONS:
        raise _err(
            where,
            f"attribute 'activation' is '{a['activation']}', expected one of {', '.join(ACTIVATIONS)}",
        )
    if node.op == "avgpool2d" and a["count_include_pad"] not in (0, 1):
        raise _err(where, f"attribute 'count_include_pad' must be 0 or 1, got {a['count_include_pad']}")
    if node.op == "batchnorm2d":
        eps = a["epsilon"]
        if not (np.isfinite(eps) and eps >= 0):
            raise _err(where, f"attribute 'epsilon' must be finite and >= 0, got {eps}")
    if node.op == "leaky_relu" and not np.isfinite(a["alpha"]):
        raise _err(where, f"attribute 'alpha' must be finite, got {a['alpha']}")
    if node.op == "clip":
        for key in ("min", "max"):
            if a[key] != a[key]:
                raise _err(where, f"attribute '{key}' is NaN")


def _check_weights(node, where, spec):
    for name in spec.weights:
        if name not in node.weights:
            raise _err(where, f"missing dataset '{name}'")
    allowed = set(spec.weights) | set(spec.optional_weights)
    for name, w in node.weights.items():
        if name not in allowed:
            continue  # extra datasets are ignored (additive extensions)
        if not isinstance(w, np.ndarray) or w.dtype != np.float32:
            raise _err(where, f"dataset '{name}' must be float32, got {getattr(w, 'dtype', type(w))}")
        if not np.isfinite(w).all():
            raise _err(where, f"dataset '{name}' has non-finite values")
    if node.op == "batchnorm2d":
        var = node.weights["var"].astype(np.float64)
        if (var + node.attrs["epsilon"] <= 0).any() or (var < 0).any():
            raise _err(where, "dataset 'var' must be >= 0 and var + epsilon > 0")


def validate(graph: Graph, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> Dict[str, Tuple[int, ...]]:
    """Check a graph against the format rules and return every tensor's shape.

    Raises ModelFormatError naming the node and the problem.
    """
    if graph.format_version != FORMAT_VERSION:
        raise _err("", f"format_version {graph.format_version} is not supported (this reader reads version {FORMAT_VERSION})")
    if graph.input_layout not in LAYOUTS:
        raise _err("", f"input_layout '{graph.input_layout}' must be NCHW or NHWC")
    if len(graph.inputs) != 1:
        raise _err("", f"'inputs' must name exactly one tensor, got {len(graph.inputs)}")
    if len(graph.outputs) != 1:
        raise _err("", f"'outputs' must name exactly one tensor, got {len(graph.outputs)}")
    shape = tuple(int(v) for v in graph.input_shape)
    if len(shape) != 3:
        raise _err("", f"'input_shape' must be [C, H, W], got {list(shape)}")
    if any(v <= 0 for v in shape):
        raise _err("", f"'input_shape' {list(shape)} must be positive")
    if any(v > MAX_DIM for v in shape):
        raise _err("", f"'input_shape' {list(shape)} exceeds the limit {MAX_DIM} per axis")
    if not graph.nodes:
        raise _err("", "the graph has no nodes")

    shapes: Dict[str, Tuple[int, ...]] = {graph.inputs[0]: shape}
    act_bytes = prod(shape) * 4
    weight_bytes = 0
    names = set()
    for i, node in enumerate(graph.nodes):
        where = f"node {i:04d} '{node.name}' ({node.op})"
        spec = OPS.get(node.op)
        if spec is None:
            raise _err(where, f"unknown op '{node.op}'")
        if not node.name:
            raise _err(where, "empty name")
        if node.name in names:
            raise _err(where, f"name '{node.name}' is used by an earlier node")
        names.add(node.name)
        if not spec.min_inputs <= len(node.inputs) <= spec.max_inputs:
            want = (str(spec.min_inputs) if spec.min_inputs == spec.max_inputs
                    else f"at least {spec.min_inputs}")
            raise _err(where, f"takes {want} input(s), got {len(node.inputs)}")
        if len(node.outputs) != 1:
            raise _err(where, f"must write exactly one output tensor, got {len(node.outputs)}")
        for t in node.inputs:
            if t not in shapes:
                raise _err(where, f"reads tensor '{t}', which is not the graph input and is not written by an earlier node")
        out = node.outputs[0]
        if not out:
            raise _err(where, "empty output tensor name")
        if out in shapes:
            raise _err(where, f"writes tensor '{out}', which is already written")
        _check_op_attrs(node, where)
        _check_weights(node, where, spec)
        wshapes = {k: tuple(v.shape) for k, v in node.weights.items()}
        try:
            out_shape = spec.infer(node.attrs, [shapes[t] for t in node.inputs], wshapes)
        except ShapeError as exc:
            raise _err(where, str(exc)) from None
        if any(v > (1 << 31) - 1 for v in out_shape) or prod(out_shape) > (1 << 40):
            raise _err(where, f"output shape {list(out_shape)} is too large")
        shapes[out] = tuple(int(v) for v in out_shape)
        act_bytes += prod(out_shape) * 4
        weight_bytes += sum(w.nbytes for w in node.weights.values())
        if act_bytes > memory_limit:
            raise _err(where, f"activations need {act_bytes} bytes per sample, over the memory limit of {memory_limit} bytes")
        if weight_bytes > memory_limit:
            raise _err(where, f"weights need {weight_bytes} bytes, over the memory limit of {memory_limit} bytes")
    if graph.outputs[0] not in shapes:
        raise _err("", f"graph output '{graph.outputs[0]}' is never written")
    if graph.labels is not None:
        n_out = prod(shapes[graph.outputs[0]])
        if len(graph.labels) != n_out:
            raise _err("/meta", f"'labels' has {len(graph.labels)} names but the output has {n_out} values")
    if graph.preprocess is not None:
        _check_preprocess(graph.preprocess, shape, graph.input_layout)
    return shapes


def _check_preprocess(pre, input_shape, layout):
    where = "/meta/preprocess"
    channels = input_shape[0]
    color = pre.get("color")
    if color is not None:
        if color not in ("RGB", "L"):
            raise _err(where, f"'color' must be RGB or L, got '{color}'")
        want = 3 if color == "RGB" else 1
        if want != channels:
            raise _err(where, f"'color' {color} gives {want} channel(s) but the input has {channels}")
    resize = pre.get("resize")
    if resize is not None:
        if len(resize) != 2 or any(v <= 0 or v > MAX_DIM for v in resize):
            raise _err(where, f"'resize' must be [H, W] with positive values, got {list(resize)}")
        if tuple(resize) != tuple(input_shape[1:]):
            raise _err(where, f"'resize' {list(resize)} does not match the input size {list(input_shape[1:])}")
    scale = pre.get("scale")
    if scale is not None and not np.isfinite(scale):
        raise _err(where, f"'scale' must be finite, got {scale}")
    for key in ("mean", "std"):
        vals = pre.get(key)
        if vals is None:
            continue
        if len(vals) not in (1, channels):
            raise _err(where, f"'{key}' must have 1 or {channels} values, got {len(vals)}")
        if not all(np.isfinite(vals)):
            raise _err(where, f"'{key}' has a non-finite value")
    if pre.get("std") is not None and any(v == 0 for v in pre["std"]):
        raise _err(where, "'std' has a zero value")
    inv = pre.get("invert")
    if inv is not None and inv not in (0, 1):
        raise _err(where, f"'invert' must be 0 or 1, got {inv}")


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------

def _check_link(group, key, where):
    import h5py

    try:
        link = group.get(key, getlink=True)
    except Exception as exc:
        raise _err(where, f"'{key}' cannot be read ({exc})") from None
    if isinstance(link, h5py.ExternalLink):
        raise _err(where, f"'{key}' is an external link to {link.filename}:{link.path}; a model file must be self-contained")
    if isinstance(link, h5py.SoftLink):
        raise _err(where, f"'{key}' is a soft link to {link.path}; links are not allowed in a model file")
    return link


def _read_dataset(group, key, where, memory_limit, budget=None):
    """Read one weight dataset; ``budget`` ([bytes left]) bounds all weights together."""
    import h5py

    _check_link(group, key, where)
    try:
        ds = group[key]
    except Exception as exc:
        raise _err(where, f"dataset '{key}' cannot be opened ({exc})") from None
    if not isinstance(ds, h5py.Dataset):
        raise _err(where, f"'{key}' must be a dataset")
    if ds.is_virtual:
        raise _err(where, f"dataset '{key}' is a virtual dataset; a model file must be self-contained")
    if ds.external:
        raise _err(where, f"dataset '{key}' uses external storage; a model file must be self-contained")
    dt = ds.dtype
    if dt.kind != "f" or dt.itemsize != 4:
        raise _err(where, f"dataset '{key}' must be float32, got {dt}")
    shape = ds.shape
    if shape is None or len(shape) == 0:
        raise _err(where, f"dataset '{key}' must be an array, got a scalar")
    nbytes = prod(shape) * 4
    if nbytes > memory_limit:
        raise _err(where, f"dataset '{key}' of shape {list(shape)} needs {nbytes} bytes, over the memory limit of {memory_limit} bytes")
    if budget is not None:
        if nbytes > budget[0]:
            raise _err(where, f"dataset '{key}' brings the weights over the memory limit of "
                              f"{memory_limit} bytes")
        budget[0] -= nbytes
    try:
        data = np.empty(shape, dtype=np.float32)
        if data.size:
            ds.read_direct(data)
    except Exception as exc:
        raise _err(where, f"dataset '{key}' cannot be read ({exc})") from None
    return data


def _walk_links(group, path, seen):
    """Refuse external links anywhere in the file."""
    import h5py

    for key in group.keys():
        link = group.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise _err(f"{path}{key}", "external link; a model file must be self-contained")
        if isinstance(link, h5py.HardLink):
            obj = group[key]
            if isinstance(obj, h5py.Group):
                ident = obj.id.__hash__()
                if ident in seen:
                    continue
                seen.add(ident)
                _walk_links(obj, f"{path}{key}/", seen)


def check_isolated(path, memory_limit: int = DEFAULT_MEMORY_LIMIT, timeout: float = 60.0) -> None:
    """Read and validate ``path`` in a forked child process first.

    cnnrt validates everything it reads, but the HDF5 library itself parses
    the file's internal structures (object headers, heaps, B-trees) before
    cnnrt sees a value, and byte-level damage there can crash that library.
    In a child, such a crash (or a hang) becomes a ModelFormatError here
    instead of taking the process down.  Needs ``os.fork`` (POSIX); elsewhere
    it does nothing.
    """
    import select
    import signal

    if not hasattr(os, "fork"):
        return
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: parse, report, leave without cleanup
        code = 1
        try:
            os.close(rfd)
            try:
                read_model(path, memory_limit)
                msg = b""
                code = 0
            except ModelFormatError as exc:
                msg = str(exc).encode("utf-8", "replace")[:4000]
            except BaseException as exc:  # noqa: BLE001 - reported, parsed again in the parent
                msg = b"\0" + f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:4000]
            os.write(wfd, msg)
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            ready = select.select([rfd], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise _err(os.fspath(path), f"reading the file took longer than {timeout:.0f} s")
            data = os.read(rfd, 65536)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise _err(os.fspath(path), f"the file is damaged: the HDF5 library crashed reading it "
                                    f"(signal {os.WTERMSIG(status)})")
    msg = b"".join(chunks)
    if msg and not msg.startswith(b"\0"):
        raise ModelFormatError(msg.decode("utf-8", "replace"))
    # success, or an unexpected exception: the in-process read reports it


def read_model(path, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> Graph:
    """Read and validate a model file.  Raises ModelFormatError."""
    graph = _parse(path, memory_limit)
    validate(graph, memory_limit)
    return graph


def _parse(path, memory_limit):
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    if os.path.isdir(path):
        raise ModelFormatError(f"{path}: is a directory, not a model file")
    try:
        fh = h5py.File(path, "r", locking=False)
    except Exception as exc:
        raise ModelFormatError(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        with fh:
            return _parse_file(fh, memory_limit)
    except ModelFormatError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ModelFormatError(f"{path}: damaged or unreadable model file ({exc})") from None


def _parse_file(fh, memory_limit):
    import h5py

    budget = [memory_limit]  # bytes all weight datasets together may take
    _walk_links(fh, "/", set())
    root = fh.attrs
    fmt = read_attr(root, "format", "string", "root")
    if fmt != FORMAT_NAME:
        raise _err("root", f"attribute 'format' is '{fmt}', expected '{FORMAT_NAME}'")
    version = read_attr(root, "format_version", "int", "root")
    if version > FORMAT_VERSION:
        raise _err("root", f"format_version {version} is newer than this reader supports ({FORMAT_VERSION}); upgrade cnnrt to read it")
    if version < 1:
        raise _err("root", f"format_version {version} is not valid (expected {FORMAT_VERSION})")
    producer = read_attr(root, "producer", "string", "root")
    inputs = read_attr(root, "inputs", "strings", "root")
    outputs = read_attr(root, "outputs", "strings", "root")
    input_shape = read_attr(root, "input_shape", "ints", "root", 3)
    layout = read_attr(root, "input_layout", "string", "root")
    if layout not in LAYOUTS:
        raise _err("root", f"attribute 'input_layout' is '{layout}', expected NCHW or NHWC")

    if "nodes" not in fh:
        raise _err("root", "missing group '/nodes'")
    _check_link(fh, "nodes", "root")
    nodes_grp = fh["nodes"]
    if not isinstance(nodes_grp, h5py.Group):
        raise _err("root", "'/nodes' must be a group")
    keys = list(nodes_grp.keys())
    for k in keys:
        if not (k.isdigit() and len(k) >= 4):
            raise _err("/nodes", f"member '{k}' is not a node group name (0000, 0001, ...)")
    keys.sort(key=int)
    for i, k in enumerate(keys):
        if int(k) != i:
            raise _err("/nodes", f"node groups must be numbered 0000, 0001, ... without gaps; found '{k}' at position {i}")

    nodes = []
    for k in keys:
        _check_link(nodes_grp, k, "/nodes")
        g = nodes_grp[k]
        where = f"node {k}"
        if not isinstance(g, h5py.Group):
            raise _err(where, "must be a group")
        op = read_attr(g.attrs, "op", "string", where)
        name = read_attr(g.attrs, "name", "string", where)
        where = f"node {k} '{name}' ({op})"
        spec = OPS.get(op)
        if spec is None:
            raise _err(where, f"unknown op '{op}' (known ops: {', '.join(sorted(OPS))})")
        node_inputs = read_attr(g.attrs, "inputs", "strings", where)
        node_outputs = read_attr(g.attrs, "outputs", "strings", where)
        attrs = {s.name: read_attr(g.attrs, s.name, s.kind, where, s.length) for s in spec.attrs}
        weights = {}
        for wname in spec.weights + spec.optional_weights:
            if wname in g:
                weights[wname] = _read_dataset(g, wname, where, memory_limit, budget)
            elif wname in spec.weights:
                raise _err(where, f"missing dataset '{wname}'")
        nodes.append(Node(op, name, node_inputs, node_outputs, attrs, weights))

    labels = description = preprocess = None
    meta = {}
    if "meta" in fh:
        _check_link(fh, "meta", "root")
        mg = fh["meta"]
        if not isinstance(mg, h5py.Group):
            raise _err("root", "'/meta' must be a group")
        if "labels" in mg.attrs:
            labels = read_attr(mg.attrs, "labels", "strings", "/meta")
        if "description" in mg.attrs:
            description = read_attr(mg.attrs, "description", "string", "/meta")
        for key in mg.attrs:
            if key in ("labels", "description"):
                continue
            try:
                meta[key] = _plain(mg.attrs[key])
            except Exception:
                continue  # free-form provenance that cannot be read is ignored
        if "preprocess" in mg:
            _check_link(mg, "preprocess", "/meta")
            pg = mg["preprocess"]
            if not isinstance(pg, h5py.Group):
                raise _err("/meta", "'preprocess' must be a group")
            preprocess = _read_preprocess(pg.attrs)
    return Graph(
        nodes=nodes,
        input_shape=tuple(input_shape),
        inputs=inputs,
        outputs=outputs,
        input_layout=layout,
        producer=producer,
        format_version=version,
        labels=labels,
        description=description,
        preprocess=preprocess,
        meta=meta,
    )


def _read_preprocess(attrs):
    where = "/meta/preprocess"
    pre = {}
    if "color" in attrs:
        pre["color"] = read_attr(attrs, "color", "string", where)
    if "resize" in attrs:
        pre["resize"] = read_attr(attrs, "resize", "ints", where, 2)
    if "scale" in attrs:
        pre["scale"] = read_attr(attrs, "scale", "float", where)
    for key in ("mean", "std"):
        if key in attrs:
            value = _get_attr(attrs, key, where)
            if np.ndim(value) == 0:  # a single number for every channel
                pre[key] = (read_attr(attrs, key, "float", where),)
            else:
                pre[key] = read_attr(attrs, key, "floats", where)
    if "invert" in attrs:
        pre["invert"] = read_attr(attrs, "invert", "int", where)
    return pre


def _plain(value):
    """Turn an HDF5 attribute value into plain Python for Graph.meta."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return [_plain(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def _str_attr(attrs, key, value):
    import h5py

    attrs.create(key, value, dtype=h5py.string_dtype("utf-8"))


def _strs_attr(attrs, key, values):
    import h5py

    attrs.create(key, np.array(list(values), dtype=object), dtype=h5py.string_dtype("utf-8"))


def _ints_attr(attrs, key, values):
    attrs.create(key, np.asarray(values, dtype=np.int64).reshape(-1))


def _write_value(attrs, key, value):
    """Write an attribute of a kind inferred from the Python value."""
    if isinstance(value, str):
        _str_attr(attrs, key, value)
    elif isinstance(value, bool):
        attrs.create(key, np.int64(value))
    elif isinstance(value, (int, np.integer)):
        attrs.create(key, np.int64(value))
    elif isinstance(value, (float, np.floating)):
        attrs.create(key, np.float64(value))
    elif isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind in "OUS":
            _strs_attr(attrs, key, [str(v) for v in arr.tolist()])
        elif arr.dtype.kind in "iub":
            _ints_attr(attrs, key, arr)
        else:
            attrs.create(key, arr.astype(np.float64))
    else:
        raise ValueError(f"cannot store attribute '{key}' of type {type(value).__name__}")


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    The temporary file gets the usual permissions (0666 minus the umask) and
    is renamed into place only when the block finishes; on any exception,
    KeyboardInterrupt included, it is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cnnrt-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give it the usual mode
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_model(path, graph: Graph, compression: Optional[str] = None) -> None:
    """Validate ``graph`` and write it to ``path`` atomically.

    The file is written to a temporary name in the destination folder and
    renamed into place, so an existing file is never left half-written.
    """
    import h5py

    validate(graph, memory_limit=1 << 62)
    with atomic_path(path, ".h5.tmp") as tmp:
        with h5py.File(tmp, "w") as fh:
            a = fh.attrs
            _str_attr(a, "format", FORMAT_NAME)
            a.create("format_version", np.int64(FORMAT_VERSION))
            _str_attr(a, "producer", graph.producer)
            _strs_attr(a, "inputs", graph.inputs)
            _ints_attr(a, "input_shape", graph.input_shape)
            _str_attr(a, "input_layout", graph.input_layout)
            _strs_attr(a, "outputs", graph.outputs)
            nodes = fh.create_group("nodes")
            width = max(4, len(str(len(graph.nodes) - 1)))
            for i, node in enumerate(graph.nodes):
                g = nodes.create_group(f"{i:0{width}d}")
                _str_attr(g.attrs, "op", node.op)
                _str_attr(g.attrs, "name", node.name)
                _strs_attr(g.attrs, "inputs", node.inputs)
                _strs_attr(g.attrs, "outputs", node.outputs)
                spec = OPS[node.op]
                for s in spec.attrs:
                    v = node.attrs[s.name]
                    if s.kind == "string":
                        _str_attr(g.attrs, s.name, v)
                    elif s.kind == "int":
                        g.attrs.create(s.name, np.int64(v))
                    elif s.kind == "float":
                        g.attrs.create(s.name, np.float64(v))
                    elif s.kind == "ints":
                        _ints_attr(g.attrs, s.name, v)
                    else:
                        g.attrs.create(s.name, np.asarray(v, dtype=np.float64))
                for wname, w in node.weights.items():
                    g.create_dataset(wname, data=np.ascontiguousarray(w, dtype=np.float32),
                                     compression=compression)
            has_meta = (graph.labels is not None or graph.description is not None
                        or graph.preprocess is not None or graph.meta)
            if has_meta:
                m = fh.create_group("meta")
                if graph.labels is not None:
                    _strs_attr(m.attrs, "labels", graph.labels)
                if graph.description is not None:
                    _str_attr(m.attrs, "description", graph.description)
                for key, value in graph.meta.items():
                    if key not in ("labels", "description"):
                        _write_value(m.attrs, key, value)
                if graph.preprocess is not None:
                    p = m.create_group("preprocess")
                    pre = graph.preprocess
                    for key in PREPROCESS_KEYS:
                        if pre.get(key) is None:
                            continue
                        v = pre[key]
                        if key == "color":
                            _str_attr(p.attrs, key, v)
                        elif key in ("resize",):
                            _ints_attr(p.attrs, key, v)
                        elif key == "invert":
                            p.attrs.create(key, np.int64(v))
                        elif key == "scale":
                            p.attrs.create(key, np.float64(v))
                        else:
                            p.attrs.create(key, np.asarray(v, dtype=np.float64).reshape(-1))


def node(op: str, name: str, inputs: Sequence[str], output: str, weights=None, **attrs) -> Node:
    """Convenience constructor: ``node("relu", "relu1", ["x"], "y")``."""
    w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in (weights or {}).items() if v is not None}
    return Node(op, name, list(inputs), [output], dict(attrs), w)
