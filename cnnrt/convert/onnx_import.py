"""ONNX -> cnnrt graph.

The importer walks the ONNX graph once, in its (topological) node order.
Every tensor is either a *constant* (an initializer, a Constant node, or
anything computed only from constants and from the static shapes of
activations) or an *activation* (a per-sample tensor computed from the
model input).  Constant subgraphs, such as the Shape/Gather/Slice/Concat
chains exporters emit to compute "same" padding at run time, are evaluated
here with NumPy, so the operators that consume them see plain numbers.
Activations become cnnrt nodes.  Along the way:

- Pad (zero, constant mode) is folded into the Conv or pool that reads it;
- BatchNormalization is folded into the Conv (or Gemm/MatMul) before it when
  that is its only reader, otherwise it becomes a ``batchnorm2d`` node;
- MatMul + Add of constants becomes one ``dense`` node, and Add/Sub/Mul/Div by
  per-channel constants fold into the bias and weights before them or become
  a ``batchnorm2d`` scale-and-shift;
- Identity, Dropout and shape-preserving Reshapes disappear.

Every unsupported operator is collected, and one UnsupportedOpsError lists
them all.
"""
from typing import Dict, List, Tuple

import numpy as np

from ..format import Graph, Node
from .errors import ConversionError, UnsupportedOpsError

MIN_OPSET = 9
MAX_OPSET = 21
BATCH = 1  # the batch size Shape reports for activations while folding constants
_FLT_MAX = float(np.finfo(np.float32).max)


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError('reading ONNX files needs the onnx package: pip install "cnnrt[convert]"') from None
    return onnx, numpy_helper


def load_onnx(src):
    """An onnx.ModelProto from a path, bytes or a ModelProto."""
    onnx, _ = _onnx()
    if isinstance(src, onnx.ModelProto):
        return src
    try:
        if isinstance(src, (bytes, bytearray)):
            return onnx.load_from_string(bytes(src))
        return onnx.load(src, load_external_data=False)
    except FileNotFoundError:
        raise ConversionError(f"no such file: {src}") from None
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ConversionError(f"not an ONNX model ({' '.join(str(exc).split())})") from None


class _Act:
    """An activation: its per-sample shape."""

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = tuple(int(d) for d in shape)


class _Pad:
    """A zero-padded activation not yet materialised: folded into its reader."""

    __slots__ = ("src", "pads", "name")

    def __init__(self, src, pads, name):
        self.src, self.pads, self.name = src, tuple(pads), name


def _attrs(node):
    onnx, numpy_helper = _onnx()
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif a.type == onnx.AttributeProto.TENSOR:
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def _same_pads(size, k, s, d, upper):
    """Total 'same' padding of one axis, split as ONNX's SAME_UPPER/SAME_LOWER do."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


class _Importer:
    def __init__(self, model, input_shape):
        self.model = model
        self.graph = model.graph
        self.opset = self._opset()
        self.consts: Dict[str, np.ndarray] = {}
        self.values: Dict[str, object] = {}   # activation tensors: _Act or _Pad
        self.alias: Dict[str, str] = {}
        self.nodes: List[Node] = []
        self.producer: Dict[str, int] = {}     # tensor -> index in self.nodes
        self.readers: Dict[str, int] = {}      # ONNX tensor -> number of ONNX readers
        self.unsupported: List[Tuple[str, str]] = []
        self.notes: List[str] = []
        self.folded_consts = 0
        self.names = set()
        self.input_name, self.input_shape = self._input(input_shape)

    # ---------------------------------------------------------------- setup
    def _opset(self):
        version = None
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                version = imp.version
        if version is None:
            raise ConversionError("the model imports no version of the default ONNX operator set")
        if not MIN_OPSET <= version <= MAX_OPSET:
            raise ConversionError(f"ONNX opset {version} is not supported (supported: "
                                  f"{MIN_OPSET} to {MAX_OPSET})")
        return version

    def _input(self, input_shape):
        _, numpy_helper = _onnx()
        for init in self.graph.initializer:
            if init.data_location == 1:  # EXTERNAL
                raise ConversionError(f"initializer '{init.name}' is stored in an external file; "
                                      "save the model with its weights inside")
            self.consts[init.name] = numpy_helper.to_array(init)
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ConversionError(f"the model has {len(inputs)} inputs "
                                  f"({', '.join(i.name for i in inputs)}); cnnrt models take one image tensor")
        inp = inputs[0]
        ttype = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if ttype.elem_type not in (1, 10, 11):  # float, float16, double
            raise ConversionError(f"input '{inp.name}' is not a floating-point tensor")
        if input_shape is not None:
            shape = tuple(int(v) for v in input_shape)
            if len(shape) != 3 or min(shape) <= 0:
                raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
            if dims and len(dims) != 4:
                raise ConversionError(f"input '{inp.name}' has rank {len(dims)}; expected N,C,H,W")
            for have, want, axis in zip(dims[1:], shape, "CHW"):
                if have not in (None, 0) and have != want:
                    raise ConversionError(f"input_shape {list(shape)} disagrees with the model's "
                                          f"input '{inp.name}' {dims} on axis {axis}")
        else:
            if len(dims) != 4:
                raise ConversionError(f"input '{inp.name}' has shape {dims}; expected a 4-D N,C,H,W "
                                      "image tensor (or give input_shape)")
            if any(d in (None, 0) for d in dims[1:]):
                raise ConversionError(f"input '{inp.name}' has a dynamic shape {dims}: give the static "
                                      "input_shape (C, H, W), e.g. --input-shape 3,224,224")
            shape = tuple(dims[1:])
        self.values[inp.name] = _Act(shape)
        return inp.name, shape

    # ------------------------------------------------------------ helpers
    def resolve(self, name):
        while name in self.alias:
            name = self.alias[name]
        return name

    def is_const(self, name):
        return name == "" or self.resolve(name) in self.consts

    def const(self, name, what="input"):
        name = self.resolve(name)
        if name not in self.consts:
            raise ConversionError(f"{what} '{name}' must be a constant (it depends on the model input)")
        return self.consts[name]

    def act(self, name, node, allow_pad=False):
        name = self.resolve(name)
        v = self.values.get(name)
        if v is None:
            raise ConversionError(f"node '{node.name}' ({node.op_type}) reads '{name}', which is "
                                  "neither a constant nor computed from the input")
        if isinstance(v, _Pad) and not allow_pad:
            raise ConversionError(f"Pad '{v.name}' feeds {node.op_type} '{node.name}': cnnrt can "
                                  "only fold zero padding into a following Conv or pool")
        return name, v

    def node_name(self, node, default):
        base = node.name or default
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def emit(self, op, name, inputs, output, weights=None, **attrs):
        w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in (weights or {}).items()
             if v is not None}
        self.nodes.append(Node(op, name, list(inputs), [output], dict(attrs), w))
        self.producer[output] = len(self.nodes) - 1
        return self.nodes[-1]

    def sole_reader(self, tensor):
        """Whether ``tensor`` (an activation written by a cnnrt node) has one reader only."""
        return self.readers.get(tensor, 0) == 1 and tensor not in self.graph_outputs

    # ---------------------------------------------------------------- run
    def run(self):
        for n in self.graph.node:
            for i in n.input:
                if i:
                    self.readers[i] = self.readers.get(i, 0) + 1
        self.graph_outputs = {o.name for o in self.graph.output}
        for n in self.graph.node:
            if n.domain not in ("", "ai.onnx"):
                self.unsupported.append((f"{n.domain}.{n.op_type}", n.name or n.output[0]))
                self._mark_unknown(n)
                continue
            try:
                self.visit(n)
            except _Unsupported:
                self.unsupported.append((n.op_type, n.name or n.output[0]))
                self._mark_unknown(n)
        if self.unsupported:
            raise UnsupportedOpsError("ONNX", self.unsupported)
        if len(self.graph.output) != 1:
            raise ConversionError(f"the model has {len(self.graph.output)} outputs; cnnrt models have one")
        out = self.resolve(self.graph.output[0].name)
        if out in self.consts:
            raise ConversionError("the model's output does not depend on its input")
        if isinstance(self.values.get(out), _Pad):
            raise ConversionError("the model's output is a Pad that no Conv or pool reads")
        if out == self.input_name:
            raise ConversionError("the model's output is its input")
        if self.folded_consts:
            self.notes.insert(0, f"evaluated {self.folded_consts} constant nodes (shape arithmetic, "
                                 "Constant, casts) at conversion")
        graph = Graph(self.nodes, input_shape=self.input_shape, inputs=[self.input_name],
                      outputs=[out])
        props = {p.key: p.value for p in self.model.metadata_props}
        if "labels" in props:  # written by cnnrt's to_onnx
            graph.labels = props["labels"].split("\n")
        return _prune(graph), self.notes

    def _mark_unknown(self, n):
        for o in n.output:
            if o:
                self.values[o] = _Act((1,))

    def visit(self, n):
        op = n.op_type
        ins = list(n.input)
        # constant folding: every input known
        if op in _CONST_OPS and all(self.is_const(i) for i in ins):
            outs = _CONST_OPS[op](self, n, [self.consts[self.resolve(i)] if i else None for i in ins])
            for name, value in zip(n.output, outs):
                if name:
                    self.consts[name] = np.asarray(value)
            self.folded_consts += 1
            return
        if op == "Shape":
            _, v = self.act(ins[0], n, allow_pad=True)
            shape = self._full_shape(v)
            a = _attrs(n)
            start, end = a.get("start", 0), a.get("end", None)
            self.consts[n.output[0]] = np.array(shape[start:end], dtype=np.int64)
            self.folded_consts += 1
            return
        if op == "Size":
            _, v = self.act(ins[0], n, allow_pad=True)
            self.consts[n.output[0]] = np.array(int(np.prod(self._full_shape(v))), dtype=np.int64)
            self.folded_consts += 1
            return
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            raise _Unsupported()
        handler(n, _attrs(n))

    def _full_shape(self, v):
        if isinstance(v, _Pad):
            t, l, b, r = v.pads
            c, h, w = self.values[v.src].shape
            return [BATCH, c, h + t + b, w + l + r]
        return [BATCH] + list(v.shape)

    # ------------------------------------------------------------- ops
    def op_Identity(self, n, a):
        self.alias[n.output[0]] = self.resolve(n.input[0])

    def op_Dropout(self, n, a):
        if len(n.output) > 1 and n.output[1] and self.readers.get(n.output[1]):
            raise ConversionError(f"Dropout '{n.name}': its mask output is used")
        self.alias[n.output[0]] = self.resolve(n.input[0])

    def _simple(self, n, op, **attrs):
        src, _ = self.act(n.input[0], n)
        v = self.values[src]
        self.emit(op, self.node_name(n, op), [src], n.output[0], **attrs)
        self.values[n.output[0]] = _Act(v.shape)

    def op_Relu(self, n, a):
        self._simple(n, "relu")

    def op_Sigmoid(self, n, a):
        self._simple(n, "sigmoid")

    def op_Tanh(self, n, a):
        self._simple(n, "tanh")

    def op_LeakyRelu(self, n, a):
        self._simple(n, "leaky_relu", alpha=float(a.get("alpha", 0.01)))

    def op_Clip(self, n, a):
        if self.opset < 11:
            lo, hi = a.get("min", -_FLT_MAX), a.get("max", _FLT_MAX)
        else:
            lo = float(self.const(n.input[1], "Clip min")) if len(n.input) > 1 and n.input[1] else -_FLT_MAX
            hi = float(self.const(n.input[2], "Clip max")) if len(n.input) > 2 and n.input[2] else _FLT_MAX
        lo, hi = max(float(lo), -_FLT_MAX), min(float(hi), _FLT_MAX)
        if lo == 0.0 and hi >= _FLT_MAX:
            self._simple(n, "relu")
        else:
            self._simple(n, "clip", min=lo, max=hi)

    def op_Softmax(self, n, a):
        src, v = self.act(n.input[0], n)
        rank = len(v.shape) + 1
        axis = a.get("axis", 1 if self.opset < 13 else -1)
        if axis < 0:
            axis += rank
        if not 1 <= axis < rank:
            raise ConversionError(f"Softmax '{n.name}': axis {a.get('axis')} is the batch axis or out of range")
        if self.opset < 13 and axis != rank - 1:
            # before opset 13 Softmax normalises over every axis from `axis` on
            raise ConversionError(f"Softmax '{n.name}' (opset {self.opset}) normalises over axes "
                                  f"{axis}..{rank - 1} of a rank-{rank} tensor; flatten it first")
        self._simple(n, "softmax", axis=int(axis))

    def op_Flatten(self, n, a):
        src, v = self.act(n.input[0], n)
        axis = a.get("axis", 1)
        rank = len(v.shape) + 1
        if axis < 0:
            axis += rank
        if axis != 1 and not all(d == 1 for d in v.shape[:axis - 1]):
            raise ConversionError(f"Flatten '{n.name}': axis {a.get('axis')} would mix the batch "
                                  "axis into the features")
        self._flatten(n, src, v)

    def _flatten(self, n, src, v):
        if len(v.shape) == 1:
            self.alias[n.output[0]] = src
            return
        self.emit("flatten", self.node_name(n, "flatten"), [src], n.output[0])
        self.values[n.output[0]] = _Act((int(np.prod(v.shape)),))

    def op_Reshape(self, n, a):
        src, v = self.act(n.input[0], n)
        target = [int(x) for x in self.const(n.input[1], "Reshape shape").reshape(-1)]
        allowzero = a.get("allowzero", 0)
        full = [BATCH] + list(v.shape)
        out = []
        for i, d in enumerate(target):
            out.append(full[i] if (d == 0 and not allowzero and i < len(full)) else d)
        total = int(np.prod(full))
        if out.count(-1) == 1:
            known = int(np.prod([d for d in out if d != -1]))
            if known == 0 or total % known:
                raise ConversionError(f"Reshape '{n.name}': cannot reshape {full} to {target}")
            out[out.index(-1)] = total // known
        if int(np.prod(out)) != total or out[0] != BATCH:
            raise ConversionError(f"Reshape '{n.name}' to {target} changes the batch axis; cnnrt "
                                  "keeps the batch axis first")
        rest = tuple(out[1:])
        if rest == v.shape:
            self.alias[n.output[0]] = src
        elif len(rest) == 1:
            self._flatten(n, src, v)
        else:
            raise ConversionError(f"Reshape '{n.name}' from {list(v.shape)} to {list(rest)} per "
                                  "sample is not supported (only flattening)")

    def op_Squeeze(self, n, a):
        self._squeeze_like(n, a)

    def op_Unsqueeze(self, n, a):
        self._squeeze_like(n, a)

    def _squeeze_like(self, n, a):
        src, v = self.act(n.input[0], n)
        if n.op_type == "Squeeze" and len(v.shape) == 3 and v.shape[1:] == (1, 1):
            self.emit("flatten", self.node_name(n, "flatten"), [src], n.output[0])
            self.values[n.output[0]] = _Act((v.shape[0],))
            return
        raise ConversionError(f"{n.op_type} '{n.name}' on an activation of shape {list(v.shape)} "
                              "is not supported")

    def _window(self, n, a, shape, kernel, dil=(1, 1)):
        _, h, w = shape
        strides = tuple(a.get("strides", [1, 1]))
        auto = a.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            up = auto == "SAME_UPPER"
            t, b = _same_pads(h, kernel[0], strides[0], dil[0], up)
            l, r = _same_pads(w, kernel[1], strides[1], dil[1], up)
            pads = (t, l, b, r)
        elif auto == "VALID":
            pads = (0, 0, 0, 0)
        elif auto in ("NOTSET", ""):
            p = list(a.get("pads", [0, 0, 0, 0]))
            if len(p) != 4:
                raise ConversionError(f"{n.op_type} '{n.name}': pads {p} is not 2-D")
            pads = (p[0], p[1], p[2], p[3])
        else:
            raise ConversionError(f"{n.op_type} '{n.name}': unknown auto_pad '{auto}'")
        if len(kernel) != 2 or len(strides) != 2:
            raise ConversionError(f"{n.op_type} '{n.name}': only 2-D windows are supported")
        return strides, pads

    def _padded_input(self, n, allow):
        name, v = self.act(n.input[0], n, allow_pad=allow)
        extra = (0, 0, 0, 0)
        if isinstance(v, _Pad):
            extra = v.pads
            self.notes.append(f"folded Pad '{v.name}' into {n.op_type} '{n.name}'")
            name = v.src
            v = self.values[name]
        if len(v.shape) != 3:
            raise ConversionError(f"{n.op_type} '{n.name}' needs an image input, got shape {list(v.shape)}")
        return name, v, extra

    def op_Conv(self, n, a):
        src, v, extra = self._padded_input(n, True)
        W = self.const(n.input[1], "Conv weight").astype(np.float32)
        if W.ndim != 4:
            raise ConversionError(f"Conv '{n.name}': only 2-D convolutions are supported")
        B = self.const(n.input[2], "Conv bias") if len(n.input) > 2 and n.input[2] else None
        kernel = tuple(a.get("kernel_shape", W.shape[2:]))
        dil = tuple(a.get("dilations", [1, 1]))
        group = int(a.get("group", 1))
        c, h, w = v.shape
        h_in, w_in = h + extra[0] + extra[2], w + extra[1] + extra[3]
        strides, pads = self._window(n, a, (c, h_in, w_in), kernel, dil)
        pads = tuple(p + e for p, e in zip(pads, extra))
        K = W.shape[0]
        if c % group or K % group or W.shape[1] != c // group:
            raise ConversionError(f"Conv '{n.name}': weight {list(W.shape)} does not fit {c} input "
                                  f"channels in {group} groups")
        self.emit("conv2d", self.node_name(n, "conv"), [src], n.output[0],
                  {"weight": W, "bias": B}, kernel=kernel, stride=strides, padding=pads,
                  dilation=dil, groups=group, activation="none")
        h2 = (h + pads[0] + pads[2] - dil[0] * (kernel[0] - 1) - 1) // strides[0] + 1
        w2 = (w + pads[1] + pads[3] - dil[1] * (kernel[1] - 1) - 1) // strides[1] + 1
        if h2 < 1 or w2 < 1:
            raise ConversionError(f"Conv '{n.name}' leaves no output on a {h}x{w} input")
        self.values[n.output[0]] = _Act((K, h2, w2))

    def _pool(self, n, a, op):
        if len(n.output) > 1 and n.output[1] and self.readers.get(n.output[1]):
            raise ConversionError(f"{n.op_type} '{n.name}': the indices output is not supported")
        src, v, extra = self._padded_input(n, op != "maxpool2d")
        kernel = tuple(a["kernel_shape"])
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise ConversionError(f"{n.op_type} '{n.name}': dilated pooling is not supported")
        c, h, w = v.shape
        strides, pads = self._window(n, a, (c, h + extra[0] + extra[2], w + extra[1] + extra[3]), kernel)
        include = int(a.get("count_include_pad", 0)) if op == "avgpool2d" else 0
        if any(extra):
            if op == "avgpool2d":
                if any(pads) and not include:
                    raise ConversionError(f"AveragePool '{n.name}': a folded Pad would count in the "
                                          "average but the pool's own padding would not")
                include = 1
            pads = tuple(p + e for p, e in zip(pads, extra))
        t, l, b, r = pads
        hs, ws = h + t + b - kernel[0], w + l + r - kernel[1]
        if hs < 0 or ws < 0:
            raise ConversionError(f"{n.op_type} '{n.name}': the window is larger than the input")
        if a.get("ceil_mode", 0):
            # ceil_mode: one more window where the last one starts inside the input
            # or its start padding; that window's overhang becomes end padding
            h_out = -(-hs // strides[0]) + 1
            w_out = -(-ws // strides[1]) + 1
            if (h_out - 1) * strides[0] >= h + t:
                h_out -= 1
            if (w_out - 1) * strides[1] >= w + l:
                w_out -= 1
            eb = max((h_out - 1) * strides[0] + kernel[0] - (h + t + b), 0)
            er = max((w_out - 1) * strides[1] + kernel[1] - (w + l + r), 0)
            if (eb or er) and include and not any((t, l, b, r)):
                include = 0  # no padding to count: the average is over the cells inside
            if (eb or er) and include:
                raise ConversionError(f"AveragePool '{n.name}': ceil_mode with count_include_pad=1 "
                                      "is not supported")
            b, r = b + eb, r + er
        pads = (t, l, b, r)
        if max(t, b) >= kernel[0] or max(l, r) >= kernel[1]:
            raise ConversionError(f"{n.op_type} '{n.name}': padding {list(pads)} is not smaller than "
                                  f"the window {list(kernel)}")
        attrs = dict(kernel=kernel, stride=strides, padding=pads)
        if op == "avgpool2d":
            attrs["count_include_pad"] = include
        self.emit(op, self.node_name(n, op), [src], n.output[0], **attrs)
        h2 = (h + t + b - kernel[0]) // strides[0] + 1
        w2 = (w + l + r - kernel[1]) // strides[1] + 1
        self.values[n.output[0]] = _Act((c, h2, w2))

    def op_MaxPool(self, n, a):
        if a.get("storage_order", 0):
            raise ConversionError(f"MaxPool '{n.name}': storage_order 1 is not supported")
        self._pool(n, a, "maxpool2d")

    def op_AveragePool(self, n, a):
        self._pool(n, a, "avgpool2d")

    def op_LpPool(self, n, a):
        if int(a.get("p", 2)) != 2:
            raise ConversionError(f"LpPool '{n.name}': only p=2 is supported, got p={a.get('p')}")
        self._pool(n, a, "l2pool2d")

    def _global(self, n, op):
        src, v = self.act(n.input[0], n)
        if len(v.shape) != 3:
            raise ConversionError(f"{n.op_type} '{n.name}' needs an image input")
        self.emit(op, self.node_name(n, op), [src], n.output[0])
        self.values[n.output[0]] = _Act((v.shape[0], 1, 1))

    def op_GlobalAveragePool(self, n, a):
        self._global(n, "globalavgpool")

    def op_GlobalMaxPool(self, n, a):
        self._global(n, "globalmaxpool")

    def op_ReduceMean(self, n, a):
        # x.mean((2, 3), keepdim=True) is a global average pool
        src, v = self.act(n.input[0], n)
        axes = a.get("axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            axes = [int(x) for x in self.const(n.input[1], "ReduceMean axes").reshape(-1)]
        axes = sorted(x % 4 for x in (axes or []))
        if len(v.shape) != 3 or axes != [2, 3]:
            raise ConversionError(f"ReduceMean '{n.name}': only the mean over H and W is supported")
        self.emit("globalavgpool", self.node_name(n, "globalavgpool"), [src], n.output[0])
        if a.get("keepdims", 1):
            self.values[n.output[0]] = _Act((v.shape[0], 1, 1))
        else:
            mid = n.output[0] + ":pooled"
            self.nodes[-1].outputs = [mid]
            self.producer[mid] = self.producer.pop(n.output[0])
            self.values[mid] = _Act((v.shape[0], 1, 1))
            self.emit("flatten", self.node_name(n, "flatten"), [mid], n.output[0])
            self.values[n.output[0]] = _Act((v.shape[0],))

    def op_Gemm(self, n, a):
        src, v = self.act(n.input[0], n)
        if a.get("transA", 0):
            raise ConversionError(f"Gemm '{n.name}': transA=1 on an activation is not supported")
        Bm = self.const(n.input[1], "Gemm B").astype(np.float64)
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        Wt = Bm if a.get("transB", 0) else Bm.T
        Wt = alpha * Wt
        n_in = int(np.prod(v.shape))
        if Wt.ndim != 2 or Wt.shape[1] != n_in:
            raise ConversionError(f"Gemm '{n.name}': B {list(Bm.shape)} does not fit {n_in} inputs")
        bias = None
        if len(n.input) > 2 and n.input[2]:
            C = self.const(n.input[2], "Gemm C").astype(np.float64)
            if C.size not in (1, Wt.shape[0]) or (C.ndim == 2 and C.shape[0] != 1):
                raise ConversionError(f"Gemm '{n.name}': C of shape {list(C.shape)} is not a bias")
            bias = beta * np.broadcast_to(C.reshape(-1), (Wt.shape[0],))
        self.emit("dense", self.node_name(n, "dense"), [src], n.output[0],
                  {"weight": Wt, "bias": bias}, activation="none")
        self.values[n.output[0]] = _Act((Wt.shape[0],))

    def op_MatMul(self, n, a):
        if self.is_const(n.input[0]):
            raise ConversionError(f"MatMul '{n.name}': the constant must be the right operand")
        src, v = self.act(n.input[0], n)
        Bm = self.const(n.input[1], "MatMul B")
        if len(v.shape) != 1 or Bm.ndim != 2 or Bm.shape[0] != v.shape[0]:
            raise ConversionError(f"MatMul '{n.name}' of {list(v.shape)} by {list(Bm.shape)} per "
                                  "sample is not supported (only [F] @ [F, out])")
        self.emit("dense", self.node_name(n, "dense"), [src], n.output[0],
                  {"weight": Bm.T}, activation="none")
        self.values[n.output[0]] = _Act((Bm.shape[1],))

    def op_BatchNormalization(self, n, a):
        src, v = self.act(n.input[0], n)
        if a.get("training_mode", 0) or any(o and self.readers.get(o) for o in n.output[1:]):
            raise ConversionError(f"BatchNormalization '{n.name}' in training mode is not supported")
        gamma, beta, mean, var = (self.const(n.input[i], "BatchNormalization parameter")
                                  .astype(np.float64).reshape(-1) for i in range(1, 5))
        eps = float(a.get("epsilon", 1e-5))
        C = v.shape[0]
        if any(x.size != C for x in (gamma, beta, mean, var)):
            raise ConversionError(f"BatchNormalization '{n.name}': parameters do not have {C} values")
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        if self._fold_affine(n, src, v, scale, shift, "BatchNormalization"):
            return
        self.emit("batchnorm2d", self.node_name(n, "batchnorm"), [src], n.output[0],
                  {"gamma": gamma, "beta": beta, "mean": mean, "var": var}, epsilon=eps)
        self.values[n.output[0]] = _Act(v.shape)

    def _fold_affine(self, n, src, v, scale, shift, what):
        """y = x * scale + shift per channel, folded into the conv/dense writing x."""
        idx = self.producer.get(src)
        if idx is None or not self.sole_reader(src):
            return False
        prev = self.nodes[idx]
        if prev.op not in ("conv2d", "dense") or prev.attrs.get("activation", "none") != "none":
            return False
        w = prev.weights["weight"].astype(np.float64)
        k = w.shape[0]
        if scale.size not in (1, k) or shift.size not in (1, k):
            return False
        scale = np.broadcast_to(scale, (k,))
        shift = np.broadcast_to(shift, (k,))
        b = prev.weights.get("bias")
        b = np.zeros(k) if b is None else b.astype(np.float64)
        prev.weights["weight"] = (w * scale.reshape((k,) + (1,) * (w.ndim - 1))).astype(np.float32)
        prev.weights["bias"] = (b * scale + shift).astype(np.float32)
        prev.outputs = [n.output[0]]
        self.producer[n.output[0]] = idx
        del self.producer[src]
        self.values[n.output[0]] = _Act(v.shape)
        self.notes.append(f"folded {what} '{n.name}' into {prev.op} '{prev.name}'")
        return True

    def _binary(self, n, kind):
        a_const, b_const = self.is_const(n.input[0]), self.is_const(n.input[1])
        if not a_const and not b_const:
            if kind != "add":
                raise ConversionError(f"{n.op_type} '{n.name}' of two activations is not supported "
                                      "(only Add)")
            x, vx = self.act(n.input[0], n)
            y, vy = self.act(n.input[1], n)
            if vx.shape != vy.shape:
                raise ConversionError(f"Add '{n.name}' of shapes {list(vx.shape)} and {list(vy.shape)}: "
                                      "broadcasting is not supported")
            self.emit("add", self.node_name(n, "add"), [x, y], n.output[0])
            self.values[n.output[0]] = _Act(vx.shape)
            return
        if a_const and b_const:  # handled by constant folding
            raise _Unsupported()
        x_first = not a_const
        src, v = self.act(n.input[0 if x_first else 1], n)
        c = self.const(n.input[1 if x_first else 0]).astype(np.float64)
        C = v.shape[0]
        # constants broadcast per channel: scalar, [C], [C,1,1], [1,C,1,1] (image) or [F], [1,F] (flat)
        full = (1,) + v.shape
        if c.ndim > len(full):
            raise ConversionError(f"{n.op_type} '{n.name}': constant of shape {list(c.shape)} "
                                  "has more axes than the activation")
        cs = c.reshape((1,) * (len(full) - c.ndim) + c.shape)
        if cs.shape[0] != 1 or any(d not in (1, f) for d, f in zip(cs.shape, full)):
            raise ConversionError(f"{n.op_type} '{n.name}': constant of shape {list(c.shape)} does not "
                                  f"broadcast onto {list(v.shape)}")
        if len(v.shape) == 3 and any(d != 1 for d in cs.shape[2:]):
            raise ConversionError(f"{n.op_type} '{n.name}': only per-channel constants are supported, "
                                  f"got shape {list(c.shape)}")
        per = np.broadcast_to(cs.reshape(cs.shape[1]) if cs.shape[1] > 1 else cs.reshape(1), (C,))
        if kind == "add":
            scale, shift = np.ones(C), per
        elif kind == "sub":
            scale, shift = (np.ones(C), -per) if x_first else (-np.ones(C), per)
        elif kind == "mul":
            scale, shift = per, np.zeros(C)
        else:  # div
            if not x_first:
                raise ConversionError(f"Div '{n.name}': a constant divided by an activation is not supported")
            if np.any(per == 0):
                raise ConversionError(f"Div '{n.name}' by zero")
            scale, shift = 1.0 / per, np.zeros(C)
        if self._fold_affine(n, src, v, scale, shift, n.op_type):
            return
        self.emit("batchnorm2d", self.node_name(n, n.op_type.lower()), [src], n.output[0],
                  {"gamma": scale, "beta": shift, "mean": np.zeros(C), "var": np.ones(C)}, epsilon=0.0)
        self.values[n.output[0]] = _Act(v.shape)

    def op_Add(self, n, a):
        self._binary(n, "add")

    def op_Sub(self, n, a):
        self._binary(n, "sub")

    def op_Mul(self, n, a):
        self._binary(n, "mul")

    def op_Div(self, n, a):
        self._binary(n, "div")

    def op_Sum(self, n, a):
        names, shapes = [], set()
        for i in n.input:
            s, v = self.act(i, n)
            names.append(s)
            shapes.add(v.shape)
        if len(shapes) != 1:
            raise ConversionError(f"Sum '{n.name}': inputs of different shapes")
        if len(names) == 1:
            self.alias[n.output[0]] = names[0]
            return
        self.emit("add", self.node_name(n, "add"), names, n.output[0])
        self.values[n.output[0]] = _Act(shapes.pop())

    def op_Concat(self, n, a):
        names, shapes = [], []
        for i in n.input:
            s, v = self.act(i, n)
            names.append(s)
            shapes.append(v.shape)
        rank = len(shapes[0]) + 1
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += rank
        if axis < 1 or axis >= rank:
            raise ConversionError(f"Concat '{n.name}': axis {a.get('axis')} is the batch axis or out of range")
        out = list(shapes[0])
        for s in shapes[1:]:
            if len(s) != len(out):
                raise ConversionError(f"Concat '{n.name}': inputs of different ranks")
            out[axis - 1] += s[axis - 1]
        self.emit("concat", self.node_name(n, "concat"), names, n.output[0], axis=axis)
        self.values[n.output[0]] = _Act(out)

    def op_Pad(self, n, a):
        src, v = self.act(n.input[0], n)
        if a.get("mode", "constant") != "constant":
            raise ConversionError(f"Pad '{n.name}': mode '{a.get('mode')}' is not supported (only constant zeros)")
        if self.opset < 11:
            pads = list(a.get("pads", a.get("paddings", [])))
            value = float(a.get("value", 0.0))
        else:
            pads = [int(x) for x in self.const(n.input[1], "Pad pads").reshape(-1)]
            value = float(self.const(n.input[2], "Pad value").reshape(-1)[0]) \
                if len(n.input) > 2 and n.input[2] else 0.0
            if len(n.input) > 3 and n.input[3]:
                axes = [int(x) % 4 for x in self.const(n.input[3], "Pad axes").reshape(-1)]
                full = [0] * 8
                for i, ax in enumerate(axes):
                    full[ax], full[4 + ax] = pads[i], pads[len(axes) + i]
                pads = full
        if value != 0.0:
            raise ConversionError(f"Pad '{n.name}': padding value {value} is not supported (only zeros)")
        if len(v.shape) != 3 or len(pads) != 8:
            raise ConversionError(f"Pad '{n.name}': only 4-D image padding is supported")
        if pads[0] or pads[1] or pads[4] or pads[5]:
            raise ConversionError(f"Pad '{n.name}' pads the batch or channel axis")
        if min(pads) < 0:
            raise ConversionError(f"Pad '{n.name}': negative padding (cropping) is not supported")
        t, l, b, r = pads[2], pads[3], pads[6], pads[7]
        if isinstance(self.values.get(src), _Pad):
            raise ConversionError(f"Pad '{n.name}' of a padded tensor is not supported")
        self.values[n.output[0]] = _Pad(src, (t, l, b, r), n.name or n.output[0])


class _Unsupported(Exception):
    pass


# ---------------------------------------------------------------- constant evaluation

def _attr_or_input(imp, n, vals, attr, index):
    a = _attrs(n)
    if attr in a:
        return a[attr]
    if len(vals) > index and vals[index] is not None:
        return [int(x) for x in np.asarray(vals[index]).reshape(-1)]
    return None


def _c_slice(imp, n, v):
    x = v[0]
    a = _attrs(n)
    if imp.opset < 10:
        starts, ends, axes = a["starts"], a["ends"], a.get("axes")
        steps = None
    else:
        starts, ends = list(v[1].reshape(-1)), list(v[2].reshape(-1))
        axes = list(v[3].reshape(-1)) if len(v) > 3 and v[3] is not None else None
        steps = list(v[4].reshape(-1)) if len(v) > 4 and v[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    sl = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        s, e, st = int(s), int(e), int(st)
        e = max(min(e, np.iinfo(np.int64).max), np.iinfo(np.int64).min)
        sl[int(ax)] = slice(s, e, st)
    return [x[tuple(sl)]]


def _c_gather(imp, n, v):
    axis = _attrs(n).get("axis", 0)
    return [np.take(v[0], v[1].astype(np.int64), axis=axis)]


def _c_concat(imp, n, v):
    return [np.concatenate([np.atleast_1d(x) if x.ndim == 0 else x for x in v], axis=_attrs(n)["axis"])]


def _c_unsqueeze(imp, n, v):
    axes = _attr_or_input(imp, n, v, "axes", 1)
    x = v[0]
    out_rank = x.ndim + len(axes)
    for ax in sorted(a % out_rank for a in axes):
        x = np.expand_dims(x, ax)
    return [x]


def _c_squeeze(imp, n, v):
    axes = _attr_or_input(imp, n, v, "axes", 1)
    x = v[0]
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


def _c_cast(imp, n, v):
    onnx, _ = _onnx()
    to = _attrs(n)["to"]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(to)
    return [v[0].astype(dtype)]


def _c_constant(imp, n, v):
    _, numpy_helper = _onnx()
    a = _attrs(n)
    if "value" in a:
        return [np.asarray(a["value"])]
    for key, dt in (("value_float", np.float32), ("value_int", np.int64)):
        if key in a:
            return [np.array(a[key], dtype=dt)]
    for key, dt in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return [np.array(a[key], dtype=dt)]
    raise ConversionError(f"Constant '{n.name}': unsupported value kind {sorted(a)}")


def _c_const_of_shape(imp, n, v):
    a = _attrs(n)
    value = np.asarray(a.get("value", np.zeros(1, np.float32))).reshape(-1)
    return [np.full([int(d) for d in v[0].reshape(-1)], value[0], dtype=value.dtype)]


def _c_reshape(imp, n, v):
    shape = [int(d) for d in v[1].reshape(-1)]
    shape = [v[0].shape[i] if d == 0 and not _attrs(n).get("allowzero", 0) else d
             for i, d in enumerate(shape)]
    return [v[0].reshape(shape)]


def _c_binary(fn):
    return lambda imp, n, v: [np.asarray(fn(v[0], v[1]))]


def _c_div(imp, n, v):
    a, b = v
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return [np.asarray(np.trunc(a / b).astype(np.result_type(a, b)))]
    return [np.asarray(a / b)]


def _c_unary(fn):
    return lambda imp, n, v: [np.asarray(fn(v[0]))]


def _c_range(imp, n, v):
    return [np.arange(v[0].item(), v[1].item(), v[2].item()).astype(v[0].dtype)]


def _c_transpose(imp, n, v):
    return [np.transpose(v[0], _attrs(n).get("perm"))]


def _c_expand(imp, n, v):
    return [v[0] * np.ones([int(d) for d in v[1].reshape(-1)], dtype=v[0].dtype)]


def _c_where(imp, n, v):
    return [np.where(v[0], v[1], v[2])]


def _c_reduce(fn):
    def f(imp, n, v):
        a = _attrs(n)
        axes = a.get("axes")
        if axes is None and len(v) > 1 and v[1] is not None:
            axes = [int(x) for x in v[1].reshape(-1)]
        keep = bool(a.get("keepdims", 1))
        return [np.asarray(fn(v[0], axis=None if not axes else tuple(axes), keepdims=keep))]
    return f


def _c_identity(imp, n, v):
    return [v[0]]


def _c_shape(imp, n, v):
    a = _attrs(n)
    return [np.array(v[0].shape[a.get("start", 0):a.get("end", None)], dtype=np.int64)]


_CONST_OPS = {
    "Constant": _c_constant, "Identity": _c_identity, "Shape": _c_shape,
    "Size": lambda imp, n, v: [np.array(v[0].size, dtype=np.int64)], "Gather": _c_gather, "Slice": _c_slice,
    "Concat": _c_concat, "Unsqueeze": _c_unsqueeze, "Squeeze": _c_squeeze, "Cast": _c_cast,
    "ConstantOfShape": _c_const_of_shape, "Reshape": _c_reshape, "Range": _c_range,
    "Add": _c_binary(np.add), "Sub": _c_binary(np.subtract), "Mul": _c_binary(np.multiply),
    "Div": _c_div, "Mod": _c_binary(np.mod), "Pow": _c_binary(np.power),
    "Max": lambda imp, n, v: [np.asarray(np.maximum.reduce(v))],
    "Min": lambda imp, n, v: [np.asarray(np.minimum.reduce(v))],
    "Equal": _c_binary(np.equal), "Less": _c_binary(np.less), "Greater": _c_binary(np.greater),
    "Not": _c_unary(np.logical_not), "Neg": _c_unary(np.negative), "Abs": _c_unary(np.abs),
    "Floor": _c_unary(np.floor), "Ceil": _c_unary(np.ceil), "Sqrt": _c_unary(np.sqrt),
    "Relu": _c_unary(lambda x: np.maximum(x, 0)), "Transpose": _c_transpose,
    "Expand": _c_expand, "Where": _c_where, "Flatten": None, "Dropout": _c_identity,
    "ReduceProd": _c_reduce(np.prod), "ReduceSum": _c_reduce(np.sum),
    "ReduceMax": _c_reduce(np.max), "ReduceMin": _c_reduce(np.min),
}
_CONST_OPS = {k: v for k, v in _CONST_OPS.items() if v is not None}


def _prune(graph):
    """Drop nodes whose outputs nothing reads (left behind by folding)."""
    live = set(graph.outputs)
    keep = []
    for node in reversed(graph.nodes):
        if node.outputs[0] in live:
            keep.append(node)
            live.update(node.inputs)
    graph.nodes = list(reversed(keep))
    return graph


def onnx_to_graph(src, input_shape=None):
    """Convert an ONNX model (path, bytes or ModelProto) to a cnnrt Graph; returns (graph, notes)."""
    model = load_onnx(src)
    imp = _Importer(model, input_shape)
    return imp.run()
