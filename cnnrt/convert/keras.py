"""Keras legacy ``.h5`` files (Keras 2 and Keras 3) to a cnnrt graph.

The file is read with h5py alone: the ``model_config`` root attribute is
parsed as JSON and the weights are read as plain arrays from
``/model_weights``.  Nothing in the file is imported or executed, and neither
Keras nor TensorFlow is needed.

Keras works in NHWC; the cnnrt runtime in NCHW.  The converted model keeps
``input_layout = "NHWC"`` (the runtime transposes the input itself), so a
caller feeds exactly what it fed Keras.  Inside the graph every weight is
rewritten to the format's layout:

* ``Conv2D`` kernels ``[kh, kw, C/groups, K]`` become ``[K, C/groups, kh, kw]``;
* ``DepthwiseConv2D`` kernels ``[kh, kw, C, M]`` become a grouped convolution
  (``groups = C``) with weights ``[C*M, 1, kh, kw]``, output channel ``c*M + m``;
* ``Dense`` kernels ``[in, out]`` become ``[out, in]``; when the Dense reads
  the output of a ``Flatten`` of an image, its rows are permuted from Keras'
  ``(H, W, C)`` flattening order to the format's ``(C, H, W)`` order.

``keras_to_graph`` returns the graph and a list of notes (what was folded).
"""
import json
import os
from typing import Dict, List, Tuple

import numpy as np

from ..errors import ModelFormatError
from ..format import Graph, node, validate
from ..ops import MAX_DIM
from .errors import ConversionError, UnsupportedOpsError

# Layers that do nothing at inference time.
_IDENTITY = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
             "AlphaDropout", "ActivityRegularization", "Identity"}

_SUPPORTED = {"InputLayer", "Conv2D", "Convolution2D", "DepthwiseConv2D", "SeparableConv2D",
              "SeparableConvolution2D", "MaxPooling2D", "MaxPool2D", "AveragePooling2D",
              "AvgPool2D", "GlobalAveragePooling2D", "GlobalAvgPool2D", "GlobalMaxPooling2D",
              "GlobalMaxPool2D", "Dense", "Flatten", "BatchNormalization", "Activation", "ReLU",
              "LeakyReLU", "ZeroPadding2D", "Add", "Concatenate", "Softmax", "Rescaling", "Normalization",
              "Reshape"} | _IDENTITY

# Keras activation names -> how cnnrt runs them.  ``fused`` ones can sit on a
# conv2d/dense node; the others become a node of their own.
_FUSED_ACTIVATIONS = {"linear": "none", "relu": "relu", "relu6": "relu6",
                      "sigmoid": "sigmoid", "tanh": "tanh"}
_NODE_ACTIVATIONS = {"softmax", "leaky_relu"}

_F32_MAX = float(np.finfo(np.float32).max)


class _Tensor:
    """A Keras tensor as seen by the converter: its cnnrt name and shape."""

    def __init__(self, name, shape, hwc=None, nonneg=False, pad=None):
        self.name = name            # cnnrt tensor name (the layer name while a pad is pending)
        self.shape = tuple(shape)   # cnnrt shape: (C, H, W) or (F,)
        self.hwc = hwc              # (C, H, W) when this 1-D tensor is an image flattened by
        #                             Keras in H, W, C order but stored in C, H, W order
        self.nonneg = nonneg        # known to hold no negative value
        self.pad = pad              # pending ZeroPadding2D: (source _Tensor, (t, l, b, r))
        self.pad_layer = None       # name of that ZeroPadding2D layer
        self.twin = None            # for a vector flattened from a 1x1 image: that image


# --------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------

def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return value


def _read_names(attrs, key):
    """A string-list attribute, also when h5py split it into ``key0``, ``key1``, ..."""
    if key in attrs:
        chunks = [attrs[key]]
    elif f"{key}0" in attrs:
        chunks = []
        while f"{key}{len(chunks)}" in attrs:
            chunks.append(attrs[f"{key}{len(chunks)}"])
    else:
        return None
    names = []
    for chunk in chunks:
        arr = np.asarray(chunk)
        if arr.size == 0:
            continue
        if arr.dtype.kind not in "OSU":
            raise ConversionError(f"attribute '{key}' is not a list of names")
        names.extend(str(_text(v)) for v in arr.reshape(-1))
    return names


def _load_config(fh, path):
    attrs = fh.attrs
    if "model_config" not in attrs:
        if "format" in attrs and _text(attrs["format"]) == "cnnrt":
            raise ConversionError(f"{path}: is already a cnnrt model file, not a Keras model")
        if "layer_names" in attrs or "layer_names0" in attrs:
            raise ConversionError(f"{path}: holds Keras weights only (save_weights); the model "
                                  "architecture is missing. Save the whole model with model.save('x.h5')")
        raise ConversionError(f"{path}: not a Keras model file (no 'model_config' attribute)")
    try:
        raw = _text(attrs["model_config"])
        if not isinstance(raw, str):
            raise TypeError("not a string")
        config = json.loads(raw)
    except (TypeError, ValueError, UnicodeDecodeError, OSError) as exc:
        raise ConversionError(f"{path}: the Keras 'model_config' attribute is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ConversionError(f"{path}: the Keras 'model_config' has no model class_name")
    return config


class _Weights:
    """The per-layer weight groups of ``/model_weights`` (Keras 2 and 3 naming)."""

    def __init__(self, fh, path):
        import h5py

        self.path = path
        root = fh["model_weights"] if "model_weights" in fh else fh
        if not isinstance(root, h5py.Group):
            raise ConversionError(f"{path}: '/model_weights' is not a group")
        self.root = root
        self.layer_names = _read_names(root.attrs, "layer_names")
        self.keras_version = str(_text(root.attrs.get("keras_version", fh.attrs.get("keras_version", "?"))))

    def get(self, call, roles):
        """The weight arrays of one layer call, one per role, in the order of ``roles``.

        ``roles`` lists the accepted variable names per weight, e.g.
        ``[("kernel",), ("bias",)]``.  Weights are matched by the last part of
        their name (``conv/kernel:0``, ``sequential/conv/kernel``); a layer's
        own group whose names say nothing (``vars/0``) is read in Keras' order.
        """
        import h5py

        where = f"{call.cls} layer '{call.name}'"
        group_name = call.name if call.group is None else call.group
        if call.group is not None:
            where += f" (in model '{call.group}')"
        if group_name not in self.root or not isinstance(self.root[group_name], h5py.Group):
            raise ConversionError(f"{self.path}: the weights of {where} are missing from the file")
        if self.layer_names is not None and group_name not in self.layer_names:
            raise ConversionError(f"{self.path}: {where} is not listed in the file's layer_names")
        group = self.root[group_name]
        names = _read_names(group.attrs, "weight_names")
        if names is None:
            raise ConversionError(f"{self.path}: {where} has no 'weight_names' attribute")
        if call.group is not None:
            # a nested model's group holds the weights of all its layers
            names = [n for n in names if n.split(":")[0].split("/")[-2:-1] == [call.name]]
        short = [n.split(":")[0].split("/")[-1] for n in names]
        picked = []
        for aliases in roles:
            hits = [n for n, sn in zip(names, short) if sn in aliases]
            if len(hits) != 1:
                break
            picked.append(hits[0])
        if len(picked) == len(roles) and len(names) == len(roles):
            names = picked
        elif call.group is not None:
            raise ConversionError(f"{self.path}: {where}: cannot tell its weights apart in the "
                                  f"weights of model '{call.group}' (expected "
                                  f"{', '.join(r[0] for r in roles)})")
        elif len(names) != len(roles):
            raise ConversionError(f"{self.path}: {where} has {len(names)} weights, expected "
                                  f"{len(roles)} ({', '.join(r[0] for r in roles)})")
        arrays = []
        for wname in names:
            ds = self._find(group, wname)
            if ds is None:
                raise ConversionError(f"{self.path}: weight '{wname}' of {where} is missing from the file")
            try:
                if ds.dtype.kind not in "fiu":
                    raise TypeError(f"dtype {ds.dtype}")
                arr = np.asarray(ds[()])
                if arr.dtype not in (np.float32, np.float64):
                    arr = arr.astype(np.float64)
            except (OSError, TypeError, ValueError) as exc:
                raise ConversionError(f"{self.path}: weight '{wname}' of {where} cannot be read ({exc})") from None
            if not np.all(np.isfinite(arr)):
                raise ConversionError(f"{self.path}: weight '{wname}' of {where} has a non-finite value")
            arrays.append(arr)
        return arrays

    @staticmethod
    def _find(group, wname):
        import h5py

        for candidate in (wname, wname.split(":")[0]):
            try:
                obj = group.get(candidate)
            except (KeyError, ValueError, OSError):
                obj = None
            if isinstance(obj, h5py.Dataset):
                if obj.file.id != group.file.id or obj.is_virtual or obj.external:
                    raise ConversionError(f"weight '{wname}' is stored outside the file (external "
                                          "link, external or virtual dataset); refused")
                return obj
        return None


# --------------------------------------------------------------------------
# The model structure: a list of layer calls in execution order
# --------------------------------------------------------------------------

class _Call:
    """One call of a Keras layer: what it reads and writes (Keras tensor ids)."""

    def __init__(self, cls, name, config, inputs, output, node_name, group=None):
        self.cls = cls
        self.name = name          # Keras layer name
        self.config = config
        self.inputs = inputs      # Keras tensor ids
        self.output = output      # Keras tensor id
        self.node_name = node_name
        self.group = group        # for a layer of a nested model: the top-level weights group


def _tensor_id(layer, node_index=0, tensor_index=0):
    return f"{layer}" if (node_index, tensor_index) == (0, 0) else f"{layer}_{node_index}_{tensor_index}"


def _history_refs(obj, out):
    """Collect Keras 3 ``__keras_tensor__`` references, in argument order."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            hist = (obj.get("config") or {}).get("keras_history")
            if not isinstance(hist, list) or len(hist) < 3:
                raise ConversionError("a layer input in the model config has no valid keras_history")
            out.append(_tensor_id(*hist[:3]))
        else:
            for v in obj.values():
                _history_refs(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _history_refs(v, out)
    return out


def _node_inputs(node_cfg):
    """Inputs of one inbound node (Keras 3 dict form or Keras 2 list form)."""
    if isinstance(node_cfg, dict):
        return _history_refs(node_cfg.get("args", []), []) + _history_refs(node_cfg.get("kwargs", {}), [])
    if isinstance(node_cfg, list):
        refs = []
        for item in node_cfg:
            if (isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str)
                    and isinstance(item[1], int)):
                refs.append(_tensor_id(item[0], item[1], item[2]))
            else:
                raise ConversionError(f"unrecognised inbound node entry {str(item)[:80]} in the model config")
        return refs
    raise ConversionError(f"unrecognised inbound node {str(node_cfg)[:80]} in the model config")


def _refs(value, what):
    """``input_layers``/``output_layers``: one [name, i, j] or a list of them."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, list) and len(v) >= 3 for v in value):
        raise ConversionError(f"the model config has no valid '{what}'")
    return [_tensor_id(*v[:3]) for v in value]


def _layer_name(layer):
    cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    return str(layer.get("name") or cfg.get("name") or "?")


_MODEL_CLASSES = ("Sequential", "Functional", "Model")


def _inline(layer, name, inputs, output, prefix, group, depth):
    """The calls of a model used as a layer, wired to the outer tensors."""
    if depth > 16:
        raise ConversionError(f"model '{name}' nests models more than 16 deep")
    calls, sub_inputs, _, sub_outputs = _calls(layer, prefix, group, depth + 1)
    if len(sub_inputs) != len(inputs):
        raise ConversionError(f"nested model '{name}' takes {len(sub_inputs)} inputs but is "
                              f"called with {len(inputs)}")
    if len(sub_outputs) != 1:
        raise ConversionError(f"nested model '{name}' has {len(sub_outputs)} outputs; only one is supported")
    if sub_outputs[0] in sub_inputs:
        raise ConversionError(f"nested model '{name}' returns its input unchanged")
    rename = dict(zip(sub_inputs, inputs))
    rename[sub_outputs[0]] = output
    for c in calls:
        c.inputs = [rename.get(t, t) for t in c.inputs]
        c.output = rename.get(c.output, c.output)
    return calls


def _calls(config, prefix="", group=None, depth=0):
    """(calls in config order, input ids, input batch shapes, output ids).

    Models used as layers are inlined: their tensors and nodes are named
    ``<model>/<layer>``, and their layers take their weights from the
    top-level weights group of the outermost one (``group``).
    """
    cls = config.get("class_name")
    body = config.get("config")
    if cls not in _MODEL_CLASSES:
        name = str(body.get("name", "?")) if isinstance(body, dict) else "?"
        raise UnsupportedOpsError("Keras", [(f"model class {cls}", name)])
    if cls == "Sequential":
        layers = body.get("layers") if isinstance(body, dict) else body
    else:
        layers = body.get("layers") if isinstance(body, dict) else None
    if not isinstance(layers, list):
        raise ConversionError(f"the {cls} model config has no layer list")
    calls, shapes = [], {}
    prev = input_name = batch_shape = None
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
            raise ConversionError(f"layer {i} of the model config is not a layer description")
        lcfg = layer["config"]
        name = _layer_name(layer)
        lcls = str(layer.get("class_name"))
        if lcls == "InputLayer":
            shapes[prefix + name] = lcfg.get("batch_shape", lcfg.get("batch_input_shape"))
            if cls == "Sequential":
                if prev is not None:
                    raise ConversionError(f"InputLayer '{name}' is not the first layer of the Sequential model")
                prev = input_name = prefix + name
            continue
        if cls == "Sequential":
            if prev is None:   # Keras 2 puts the input shape on the first layer
                prev = input_name = prefix + "input"
                shapes[prev] = lcfg.get("batch_input_shape", lcfg.get("batch_shape"))
                if shapes[prev] is None and isinstance(body, dict):
                    shapes[prev] = body.get("build_input_shape")
            nodes = [(0, [prev])]
        else:
            inbound = layer.get("inbound_nodes") or []
            if not isinstance(inbound, list):
                raise ConversionError(f"layer '{name}' has malformed inbound_nodes")
            nodes = [(k, [prefix + t for t in _node_inputs(n)]) for k, n in enumerate(inbound)]
        own_group = group if group is not None else (name if lcls in _MODEL_CLASSES else None)
        for k, ins in nodes:
            node_name = prefix + (name if k == 0 else f"{name}_{k}")
            out = prefix + _tensor_id(name, k)
            if lcls in _MODEL_CLASSES:
                calls.extend(_inline(layer, name, ins, out, node_name + "/", own_group, depth))
            else:
                calls.append(_Call(lcls, name, lcfg, ins, out, node_name, group))
            if cls == "Sequential":
                prev = out
    if cls == "Sequential":
        if input_name is None or prev == input_name:
            raise ConversionError("the Sequential model has no layers")
        return calls, [input_name], [shapes[input_name]], [prev]
    input_names = [prefix + t for t in _refs(body.get("input_layers"), "input_layers")]
    outputs = [prefix + t for t in _refs(body.get("output_layers"), "output_layers")]
    for n in input_names:
        if n not in shapes:
            raise ConversionError(f"model input '{n}' is not an InputLayer of the model config")
    return calls, input_names, [shapes[n] for n in input_names], outputs


def _order(calls, inputs):
    """Sort calls so that every tensor is produced before it is read."""
    known = set(inputs)
    pending = list(calls)
    ordered = []
    while pending:
        rest = []
        for c in pending:
            if all(t in known for t in c.inputs):
                ordered.append(c)
                known.add(c.output)
            else:
                rest.append(c)
        if len(rest) == len(pending):
            missing = sorted({t for c in rest for t in c.inputs if t not in known})
            raise ConversionError(f"layer '{rest[0].name}' reads {', '.join(missing)}, which no layer "
                                  "of the model produces")
        pending = rest
    return ordered


# --------------------------------------------------------------------------
# Layer attributes
# --------------------------------------------------------------------------

def _pair(value, what, name, low=1):
    """One or two integers from a layer config, each in ``low .. MAX_DIM``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (isinstance(value, list) and len(value) in (1, 2)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        pair = (value[0], value[-1])
        if all(low <= v <= MAX_DIM for v in pair):
            return pair
    raise ConversionError(f"layer '{name}': {what} {value!r} is not one or two integers "
                          f"from {low} to {MAX_DIM}")


def _same_pads(size, k, s, d):
    """TensorFlow 'same' padding along one axis: extra cell at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _window_pads(padding, H, W, k, s, d, name):
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        t, b = _same_pads(H, k[0], s[0], d[0])
        l, r = _same_pads(W, k[1], s[1], d[1])
        return (t, l, b, r)
    raise ConversionError(f"layer '{name}': padding {padding!r} is not supported (valid or same)")


def _activation_name(value):
    if value is None:
        return "linear"
    if isinstance(value, dict):   # Keras 3 may serialise a built-in function as a dict
        inner = value.get("config")
        value = inner if isinstance(inner, str) else value.get("class_name")
    return str(value)


# --------------------------------------------------------------------------
# The converter
# --------------------------------------------------------------------------

class _Converter:
    def __init__(self, weights: _Weights):
        self.w = weights
        self.nodes = []
        self.producer: Dict[str, int] = {}      # cnnrt tensor -> index in self.nodes
        self.readers: Dict[str, int] = {}       # Keras tensor -> number of reading layers
        #                                         (pass-through layers such as Dropout not counted)
        self.tensors: Dict[str, _Tensor] = {}   # Keras tensor -> what it became
        self.outputs = set()
        self.notes: List[str] = []
        self.names = set()

    # ------------------------------------------------------------ helpers
    def emit(self, op, name, inputs, shape, weights=None, nonneg=False, **attrs):
        base, k = name, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        self.producer[name] = len(self.nodes)
        self.nodes.append(node(op, name, [t.name for t in inputs], name, weights, **attrs))
        return _Tensor(name, shape, nonneg=nonneg)

    def materialize(self, t: _Tensor) -> _Tensor:
        """A tensor with a cnnrt name: a pending zero padding becomes a 1x1 identity conv."""
        if t.pad is None:
            return t
        src, (pt, pl, pb, pr) = t.pad
        src = self.materialize(src)
        C, H, W = src.shape
        weight = np.ones((C, 1, 1, 1), np.float32)
        out = self.emit("conv2d", t.name or "zero_padding", [src], t.shape, {"weight": weight},
                        nonneg=src.nonneg, kernel=[1, 1], stride=[1, 1], padding=[pt, pl, pb, pr],
                        dilation=[1, 1], groups=C, activation="none")
        self.notes.append(f"{out.name}: ZeroPadding2D kept as a 1x1 identity depthwise conv2d")
        t.name, t.pad, t.nonneg = out.name, None, out.nonneg
        return t

    def image(self, t, call):
        if len(t.shape) != 3:
            raise ConversionError(f"{call.cls} layer '{call.name}' needs an image input [H, W, C], "
                                  f"got a tensor of {t.shape[0]} features")
        return t

    def take_pad(self, t, call, pool_kernel=None, nonneg_needed=False):
        """Fold a pending ZeroPadding2D into this layer when it is its only reader."""
        # folding leaves the pending padding itself untouched, so other readers
        # of the padded tensor still see it (folded, or materialised once)
        if t.pad is None:
            return t, (0, 0, 0, 0)
        src, pads = t.pad
        if pool_kernel is not None:
            kh, kw = pool_kernel
            if max(pads[0], pads[2]) >= kh or max(pads[1], pads[3]) >= kw:
                return self.materialize(t), (0, 0, 0, 0)
            if nonneg_needed and not self.materialize(src).nonneg:
                return self.materialize(t), (0, 0, 0, 0)
        self.notes.append(f"{call.node_name}: ZeroPadding2D {t.pad_layer} folded into the padding")
        return self.materialize(src), pads

    def act(self, t, activation, call, name=None):
        """Apply a Keras activation as its own node (or not at all for linear)."""
        name = name or call.node_name
        if activation == "linear":
            return t
        if activation == "relu":
            return self.emit("relu", name, [t], t.shape, nonneg=True)
        if activation == "relu6":
            return self.emit("clip", name, [t], t.shape, nonneg=True, min=0.0, max=6.0)
        if activation == "sigmoid":
            return self.emit("sigmoid", name, [t], t.shape, nonneg=True)
        if activation == "tanh":
            return self.emit("tanh", name, [t], t.shape)
        if activation == "softmax":
            return self.softmax(t, -1, call, name)
        if activation == "leaky_relu":   # keras.activations.leaky_relu default slope
            return self.emit("leaky_relu", name, [t], t.shape, alpha=0.2)
        raise AssertionError(activation)

    def softmax(self, t, axis, call, name):
        rank = len(t.shape)
        if axis not in (-1, rank):
            raise ConversionError(f"Softmax layer '{call.name}': only the channel axis (-1) is "
                                  f"supported, got axis {axis}")
        return self.emit("softmax", name, [t], t.shape, nonneg=True, axis=1)

    def sole_reader(self, t):
        """True when one layer reads ``t`` (also through Dropout and other pass-through
        layers, which hand on the same tensor) and it is not the model's output."""
        aliases = [k for k, obj in self.tensors.items() if obj is t]
        return (sum(self.readers.get(k, 0) for k in aliases) == 1
                and not any(k in self.outputs for k in aliases))

    def prune(self, output):
        """Drop nodes whose result nobody reads (e.g. a flatten undone by a Reshape)."""
        needed = {output}
        keep = []
        for n in reversed(self.nodes):
            if n.outputs[0] in needed:
                keep.append(n)
                needed.update(n.inputs)
        self.nodes = keep[::-1]

    # ------------------------------------------------------------ layers
    def convert(self, call, ins):
        fn = getattr(self, "_" + _CANONICAL.get(call.cls, call.cls))
        return fn(call, call.config, ins)

    def _identity(self, call, cfg, ins):
        return ins[0]

    def _conv(self, call, cfg, ins, depthwise=False, arrays=None):
        t = self.image(ins[0], call)
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ConversionError(f"{call.cls} layer '{call.name}': data_format "
                                  f"{cfg.get('data_format')!r} is not supported (channels_last only)")
        k = _pair(cfg.get("kernel_size"), "kernel_size", call.name)
        s = _pair(cfg.get("strides", 1), "strides", call.name)
        d = _pair(cfg.get("dilation_rate", 1), "dilation_rate", call.name)
        if d != (1, 1) and s != (1, 1):
            raise ConversionError(f"{call.cls} layer '{call.name}': strides and dilation_rate "
                                  "both above 1 are not supported")
        use_bias = bool(cfg.get("use_bias", True))
        t, extra = self.take_pad(t, call)
        C, H, W = t.shape
        H += extra[0] + extra[2]
        W += extra[1] + extra[3]
        own = _window_pads(cfg.get("padding", "valid"), H, W, k, s, d, call.name)
        pads = [a + b for a, b in zip(own, extra)]
        if arrays is None:
            kernel_names = ("kernel", "depthwise_kernel") if depthwise else ("kernel",)
            arrays = self.w.get(call, [kernel_names] + [("bias",)] * use_bias)
        kernel = arrays[0]
        if depthwise:
            M = int(cfg.get("depth_multiplier", 1))
            if kernel.shape != (k[0], k[1], C, M):
                raise ConversionError(f"DepthwiseConv2D layer '{call.name}': kernel has shape "
                                      f"{list(kernel.shape)}, expected {[k[0], k[1], C, M]}")
            weight = kernel.reshape(k[0], k[1], C * M).transpose(2, 0, 1)[:, None]
            groups = C
        else:
            groups = int(cfg.get("groups", 1) or 1)
            K = int(cfg.get("filters", kernel.shape[-1] if kernel.ndim == 4 else 0))
            if groups < 1 or C % groups or kernel.shape != (k[0], k[1], C // groups, K):
                raise ConversionError(f"{call.cls} layer '{call.name}': kernel has shape "
                                      f"{list(kernel.shape)}, expected {[k[0], k[1], C // max(groups, 1), K]}")
            weight = kernel.transpose(3, 2, 0, 1)
        K = weight.shape[0]
        bias = None
        if use_bias:
            bias = arrays[1]
            if bias.shape != (K,):
                raise ConversionError(f"{call.cls} layer '{call.name}': bias has shape "
                                      f"{list(bias.shape)}, expected {[K]}")
        H2 = (H + own[0] + own[2] - d[0] * (k[0] - 1) - 1) // s[0] + 1
        W2 = (W + own[1] + own[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
        if H2 <= 0 or W2 <= 0:
            raise ConversionError(f"{call.cls} layer '{call.name}': kernel {k} leaves no output "
                                  f"on a {H}x{W} input")
        act = self.activation_of(call, cfg)
        fused = _FUSED_ACTIVATIONS.get(act)
        out = self.emit("conv2d", call.node_name, [t], (K, H2, W2),
                        {"weight": weight, "bias": bias}, nonneg=fused in ("relu", "relu6", "sigmoid"),
                        kernel=list(k), stride=list(s), padding=pads, dilation=list(d),
                        groups=groups, activation=fused or "none")
        return out if fused else self.act(out, act, call, call.node_name + "/activation")

    def _Conv2D(self, call, cfg, ins):
        return self._conv(call, cfg, ins)

    def _DepthwiseConv2D(self, call, cfg, ins):
        return self._conv(call, cfg, ins, depthwise=True)

    def _SeparableConv2D(self, call, cfg, ins):
        t = self.image(ins[0], call)
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ConversionError(f"{call.cls} layer '{call.name}': data_format "
                                  f"{cfg.get('data_format')!r} is not supported (channels_last only)")
        use_bias = bool(cfg.get("use_bias", True))
        arrays = self.w.get(call, [("depthwise_kernel",), ("pointwise_kernel",)] + [("bias",)] * use_bias)
        M = int(cfg.get("depth_multiplier", 1))
        k = _pair(cfg.get("kernel_size"), "kernel_size", call.name)
        C = t.shape[0]
        dw_cfg = dict(cfg, depth_multiplier=M, use_bias=False, activation="linear")
        dw_call = _Call("DepthwiseConv2D", call.name, dw_cfg, call.inputs, call.output,
                        call.node_name + "/depthwise")
        point = arrays[1]
        mid = self._conv(dw_call, dw_cfg, [t], depthwise=True, arrays=[arrays[0]])
        K = int(cfg.get("filters", point.shape[-1]))
        if point.shape != (1, 1, C * M, K):
            raise ConversionError(f"SeparableConv2D layer '{call.name}': pointwise kernel has shape "
                                  f"{list(point.shape)}, expected {[1, 1, C * M, K]}")
        pw_cfg = {"kernel_size": [1, 1], "filters": K, "use_bias": use_bias,
                  "activation": cfg.get("activation", "linear"), "padding": "valid"}
        pw_call = _Call("Conv2D", call.name, pw_cfg, call.inputs, call.output, call.node_name)
        return self._conv(pw_call, pw_cfg, [mid], arrays=[point] + arrays[2:])

    def activation_of(self, call, cfg):
        """The layer's activation name (unsupported ones were refused before converting)."""
        return _activation_name(cfg.get("activation", "linear"))

    def _pool(self, call, cfg, ins, op):
        t = self.image(ins[0], call)
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ConversionError(f"{call.cls} layer '{call.name}': data_format "
                                  f"{cfg.get('data_format')!r} is not supported (channels_last only)")
        k = _pair(cfg.get("pool_size", 2), "pool_size", call.name)
        s = _pair(cfg.get("strides") or k, "strides", call.name)
        padding = cfg.get("padding", "valid")
        C, H, W = t.shape
        own = _window_pads(padding, H, W, k, s, (1, 1), call.name)
        extra = (0, 0, 0, 0)
        if t.pad is not None and own == (0, 0, 0, 0):
            # Keras pools over the explicit zeros: an average counts them, and
            # a max may only ignore them when no input value is negative
            t, extra = self.take_pad(t, call, pool_kernel=k, nonneg_needed=(op == "maxpool2d"))
        t = self.materialize(t)
        pads = [a + b for a, b in zip(own, extra)]
        H2 = (H + own[0] + own[2] - k[0]) // s[0] + 1
        W2 = (W + own[1] + own[3] - k[1]) // s[1] + 1
        if H2 <= 0 or W2 <= 0:
            raise ConversionError(f"{call.cls} layer '{call.name}': pool_size {k} leaves no output "
                                  f"on a {H}x{W} input")
        attrs = dict(kernel=list(k), stride=list(s), padding=pads)
        if op == "avgpool2d":
            # Keras 'same' average pooling divides by the real cells only; an
            # explicit ZeroPadding2D folded in counts its zeros.
            attrs["count_include_pad"] = int(extra != (0, 0, 0, 0))
        return self.emit(op, call.node_name, [t], (C, H2, W2), nonneg=t.nonneg, **attrs)

    def _MaxPooling2D(self, call, cfg, ins):
        return self._pool(call, cfg, ins, "maxpool2d")

    def _AveragePooling2D(self, call, cfg, ins):
        return self._pool(call, cfg, ins, "avgpool2d")

    def _global(self, call, cfg, ins, op):
        t = self.materialize(self.image(ins[0], call))
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ConversionError(f"{call.cls} layer '{call.name}': data_format "
                                  f"{cfg.get('data_format')!r} is not supported (channels_last only)")
        C = t.shape[0]
        out = self.emit(op, call.node_name, [t], (C, 1, 1), nonneg=t.nonneg)
        if cfg.get("keepdims", False):
            return out
        flat = self.emit("flatten", call.node_name + "/flatten", [out], (C,), nonneg=t.nonneg)
        flat.twin = out
        return flat

    def _GlobalAveragePooling2D(self, call, cfg, ins):
        return self._global(call, cfg, ins, "globalavgpool")

    def _GlobalMaxPooling2D(self, call, cfg, ins):
        return self._global(call, cfg, ins, "globalmaxpool")

    def _Flatten(self, call, cfg, ins):
        t = self.materialize(ins[0])
        if len(t.shape) == 1:
            return t
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ConversionError(f"Flatten layer '{call.name}': data_format "
                                  f"{cfg.get('data_format')!r} is not supported (channels_last only)")
        C, H, W = t.shape
        out = self.emit("flatten", call.node_name, [t], (C * H * W,), nonneg=t.nonneg)
        if H * W > 1 and C > 1:
            out.hwc = (C, H, W)
        elif H * W == 1:
            out.twin = t
        return out

    def _Dense(self, call, cfg, ins):
        t = self.materialize(ins[0])
        use_bias = bool(cfg.get("use_bias", True))
        arrays = self.w.get(call, [("kernel",)] + [("bias",)] * use_bias)
        kernel = arrays[0]
        n_in = t.shape[0] if len(t.shape) == 1 else t.shape[0]
        units = int(cfg.get("units", kernel.shape[-1] if kernel.ndim == 2 else 0))
        if kernel.shape != (n_in, units):
            raise ConversionError(f"Dense layer '{call.name}': kernel has shape {list(kernel.shape)}, "
                                  f"expected {[n_in, units]}")
        bias = arrays[1] if use_bias else None
        if bias is not None and bias.shape != (units,):
            raise ConversionError(f"Dense layer '{call.name}': bias has shape {list(bias.shape)}, "
                                  f"expected {[units]}")
        act = self.activation_of(call, cfg)
        fused = _FUSED_ACTIVATIONS.get(act)
        nonneg = fused in ("relu", "relu6", "sigmoid")
        if len(t.shape) == 3:
            # Dense on an image acts on the channel axis of every pixel: a 1x1 conv
            C, H, W = t.shape
            out = self.emit("conv2d", call.node_name, [t], (units, H, W),
                            {"weight": kernel.T[:, :, None, None], "bias": bias}, nonneg=nonneg,
                            kernel=[1, 1], stride=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1],
                            groups=1, activation=fused or "none")
            self.notes.append(f"{out.name}: Dense on an image tensor written as a 1x1 conv2d")
        else:
            if t.hwc is not None:
                C, H, W = t.hwc
                kernel = kernel.reshape(H, W, C, units).transpose(2, 0, 1, 3).reshape(n_in, units)
                self.notes.append(f"{call.node_name}: Dense weights permuted from Keras' (H, W, C) "
                                  "flattening order to (C, H, W)")
            out = self.emit("dense", call.node_name, [t], (units,), {"weight": kernel.T, "bias": bias},
                            nonneg=nonneg, activation=fused or "none")
        return out if fused else self.act(out, act, call, call.node_name + "/activation")

    def _BatchNormalization(self, call, cfg, ins):
        t = self.materialize(ins[0])
        axis = cfg.get("axis", -1)
        if isinstance(axis, list) and len(axis) == 1:
            axis = axis[0]
        rank = len(t.shape) + 1
        if axis not in (-1, rank - 1):
            raise ConversionError(f"BatchNormalization layer '{call.name}': only the channel axis "
                                  f"(-1) is supported, got axis {axis}")
        scale, center = bool(cfg.get("scale", True)), bool(cfg.get("center", True))
        roles = [("gamma",)] * scale + [("beta",)] * center + [("moving_mean",), ("moving_variance",)]
        arrays = [a.astype(np.float64) for a in self.w.get(call, roles)]
        C = t.shape[0]
        for a in arrays:
            if a.shape != (C,):
                raise ConversionError(f"BatchNormalization layer '{call.name}': a weight has shape "
                                      f"{list(a.shape)}, expected {[C]}")
        i = 0
        gamma = arrays[i] if scale else np.ones(C)
        i += scale
        beta = arrays[i] if center else np.zeros(C)
        i += center
        mean, var = arrays[i], arrays[i + 1]
        eps = float(cfg.get("epsilon", 1e-3))
        if np.any(var + eps <= 0):
            raise ConversionError(f"BatchNormalization layer '{call.name}': moving variance plus "
                                  "epsilon is not positive")
        if t.hwc is not None:
            # per-feature statistics of a flattened image: Keras order (H, W, C) -> (C, H, W)
            Cc, H, W = t.hwc
            gamma, beta, mean, var = (a.reshape(H, W, Cc).transpose(2, 0, 1).reshape(-1)
                                      for a in (gamma, beta, mean, var))
        j = self.producer.get(t.name)
        prev = self.nodes[j] if j is not None else None
        if (prev is not None and prev.op in ("conv2d", "dense") and prev.attrs["activation"] == "none"
                and self.sole_reader(t)):
            factor = gamma / np.sqrt(var + eps)
            w = prev.weights["weight"].astype(np.float64)
            b = prev.weights.get("bias")
            b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
            if prev.op == "conv2d":
                prev.weights["weight"] = (w * factor[:, None, None, None]).astype(np.float32)
            else:
                prev.weights["weight"] = (w * factor[:, None]).astype(np.float32)
            prev.weights["bias"] = ((b - mean) * factor + beta).astype(np.float32)
            self.notes.append(f"{call.node_name}: BatchNormalization folded into {prev.op} '{prev.name}'")
            return _Tensor(t.name, t.shape, hwc=t.hwc)
        out = self.emit("batchnorm2d", call.node_name, [t], t.shape,
                        {"gamma": gamma, "beta": beta, "mean": mean, "var": var}, epsilon=eps)
        out.hwc = t.hwc
        return out

    def _Activation(self, call, cfg, ins):
        t = self.materialize(ins[0])
        out = self.act(t, _activation_name(cfg.get("activation")), call)
        if out is not t:
            out.hwc = t.hwc
        return out

    def _ReLU(self, call, cfg, ins):
        t = self.materialize(ins[0])
        max_value = cfg.get("max_value")
        slope = float(cfg.get("negative_slope", 0.0) or 0.0)
        if slope == 0 and max_value is None:
            out = self.emit("relu", call.node_name, [t], t.shape, nonneg=True)
        elif slope == 0:
            out = self.emit("clip", call.node_name, [t], t.shape, nonneg=True, min=0.0, max=float(max_value))
        else:
            out = self.emit("leaky_relu", call.node_name, [t], t.shape, alpha=slope)
            if max_value is not None:
                out = self.emit("clip", call.node_name + "/max", [out], t.shape,
                                min=-_F32_MAX, max=float(max_value))
        out.hwc = t.hwc
        return out

    def _LeakyReLU(self, call, cfg, ins):
        t = self.materialize(ins[0])
        alpha = cfg.get("negative_slope", cfg.get("alpha", 0.3))
        out = self.emit("leaky_relu", call.node_name, [t], t.shape, alpha=float(alpha))
        out.hwc = t.hwc
        return out

    def _Softmax(self, call, cfg, ins):
        t = self.materialize(ins[0])
        axis = cfg.get("axis", -1)
        if isinstance(axis, list) and len(axis) == 1:
            axis = axis[0]
        out = self.softmax(t, axis, call, call.node_name)
        out.hwc = t.hwc   # a softmax over every feature does not depend on their order
        return out

    def _ZeroPadding2D(self, call, cfg, ins):
        t = self.image(ins[0], call)
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ConversionError(f"ZeroPadding2D layer '{call.name}': data_format "
                                  f"{cfg.get('data_format')!r} is not supported (channels_last only)")
        p = cfg.get("padding", 1)
        if isinstance(p, list) and len(p) == 2 and all(isinstance(v, list) for v in p):
            (t_, b_), (l_, r_) = (_pair(v, "padding", call.name, low=0) for v in p)
            pads = (t_, l_, b_, r_)
        else:
            ph, pw = _pair(p, "padding", call.name, low=0)
            pads = (ph, pw, ph, pw)
        C, H, W = t.shape
        out = _Tensor(call.node_name, (C, H + pads[0] + pads[2], W + pads[1] + pads[3]), pad=(t, pads))
        out.pad_layer = call.name
        return out

    def _per_channel(self, call, key, value, C):
        v = np.asarray(value, dtype=np.float64).reshape(-1)
        if v.size not in (1, C) or not np.all(np.isfinite(v)):
            raise ConversionError(f"{call.cls} layer '{call.name}': {key} must be one number or "
                                  f"one per channel ({C}), got {value!r}")
        return np.broadcast_to(v, (C,))

    def _affine(self, call, t, scale, offset, what):
        """``x * scale + offset`` per channel, as a 1x1 depthwise conv2d."""
        C = t.shape[0]
        out = self.emit("conv2d", call.node_name, [t], t.shape,
                        {"weight": scale.reshape(C, 1, 1, 1), "bias": offset},
                        nonneg=bool(t.nonneg and np.all(scale >= 0) and np.all(offset >= 0)),
                        kernel=[1, 1], stride=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1],
                        groups=C, activation="none")
        self.notes.append(f"{out.name}: {what} written as a 1x1 depthwise conv2d")
        return out

    def _Rescaling(self, call, cfg, ins):
        t = self.materialize(ins[0])
        if len(t.shape) != 3:
            raise ConversionError(f"Rescaling layer '{call.name}' is only supported on an image input")
        C = t.shape[0]
        scale = self._per_channel(call, "scale", cfg.get("scale", 1.0), C)
        offset = self._per_channel(call, "offset", cfg.get("offset", 0.0), C)
        return self._affine(call, t, scale, offset, "Rescaling (x * scale + offset)")

    def _Normalization(self, call, cfg, ins):
        t = self.materialize(ins[0])
        if len(t.shape) != 3:
            raise ConversionError(f"Normalization layer '{call.name}' is only supported on an image input")
        axis = cfg.get("axis", -1)
        if axis not in (-1, 3, [-1], [3]):
            raise ConversionError(f"Normalization layer '{call.name}': only the channel axis (-1) "
                                  f"is supported, got axis {axis!r}")
        C = t.shape[0]
        if cfg.get("mean") is not None and cfg.get("variance") is not None:
            mean, var = cfg["mean"], cfg["variance"]
        else:   # statistics from adapt(): stored as weights
            mean, var = self.w.get(call, [("mean",), ("variance",), ("count",)])[:2]
        mean = self._per_channel(call, "mean", mean, C)
        var = self._per_channel(call, "variance", var, C)
        std = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-7)   # Keras divides by max(sqrt(var), eps)
        if cfg.get("invert", False):
            return self._affine(call, t, std, mean, "Normalization (inverted)")
        return self._affine(call, t, 1.0 / std, -mean / std, "Normalization ((x - mean) / std)")

    def _Reshape(self, call, cfg, ins):
        """Reshapes that keep the element order: image <-> vector around 1x1 images, or a flatten."""
        t = self.materialize(ins[0])
        target = cfg.get("target_shape")
        if not isinstance(target, list) or not all(isinstance(v, int) for v in target):
            raise ConversionError(f"Reshape layer '{call.name}': target_shape {target!r} is not a list of integers")
        size = int(np.prod(t.shape))
        if target.count(-1) == 1:
            known = int(np.prod([v for v in target if v != -1]))
            if known <= 0 or size % known:
                raise ConversionError(f"Reshape layer '{call.name}': cannot reshape {size} values to {target}")
            target = [size // known if v == -1 else v for v in target]
        if int(np.prod(target)) != size or any(v <= 0 for v in target):
            raise ConversionError(f"Reshape layer '{call.name}': cannot reshape {size} values to {target}")
        image = len(t.shape) == 3
        if len(target) == 1:
            if image:
                return self._Flatten(call, {}, [t])
            return t
        if len(target) == 3 and target[0] * target[1] == 1:
            if image:   # (1, 1, C) -> (1, 1, C)
                return t
            if t.twin is not None:   # the vector was flattened from this 1x1 image
                return t.twin
        shown = "x".join(str(v) for v in (t.shape[1:] + t.shape[:1] if image else t.shape))
        raise ConversionError(f"Reshape layer '{call.name}': reshaping {shown} to {target} is not "
                              "supported (only flattening, and a vector back to the 1x1 image it "
                              "was flattened from)")

    def _Add(self, call, cfg, ins):
        ts = [self.materialize(t) for t in ins]
        if len(ts) < 2:
            raise ConversionError(f"Add layer '{call.name}' needs at least two inputs")
        shapes = {t.shape for t in ts}
        if len(shapes) != 1:
            raise ConversionError(f"Add layer '{call.name}': inputs of different shapes "
                                  f"{[list(t.shape) for t in ts]} (broadcasting is not supported)")
        if len({t.hwc for t in ts}) != 1:
            raise ConversionError(f"Add layer '{call.name}' mixes flattened images and other vectors")
        out = self.emit("add", call.node_name, ts, ts[0].shape, nonneg=all(t.nonneg for t in ts))
        out.hwc = ts[0].hwc
        return out

    def _Concatenate(self, call, cfg, ins):
        ts = [self.materialize(t) for t in ins]
        axis = cfg.get("axis", -1)
        rank = len(ts[0].shape) + 1
        if axis not in (-1, rank - 1):
            raise ConversionError(f"Concatenate layer '{call.name}': only the channel axis (-1) is "
                                  f"supported, got axis {axis}")
        if any(t.hwc is not None for t in ts):
            raise ConversionError(f"Concatenate layer '{call.name}' on flattened images is not supported")
        if any(len(t.shape) != len(ts[0].shape) or t.shape[1:] != ts[0].shape[1:] for t in ts):
            raise ConversionError(f"Concatenate layer '{call.name}': inputs "
                                  f"{[list(t.shape) for t in ts]} do not agree outside the channel axis")
        shape = (sum(t.shape[0] for t in ts),) + ts[0].shape[1:]
        return self.emit("concat", call.node_name, ts, shape, nonneg=all(t.nonneg for t in ts), axis=1)


_CANONICAL = {"Convolution2D": "Conv2D", "SeparableConvolution2D": "SeparableConv2D",
              "MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D",
              "GlobalAvgPool2D": "GlobalAveragePooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D"}
_CANONICAL.update({name: "identity" for name in _IDENTITY})

def _unsupported(calls):
    """Every layer (class, name) the converter cannot express, checked up front."""
    bad = []
    for c in calls:
        cfg = c.config
        if c.cls not in _SUPPORTED:
            bad.append((c.cls, c.name))
            continue
        if "activation" in cfg and c.cls != "Activation":
            act = _activation_name(cfg.get("activation"))
            if act not in _FUSED_ACTIVATIONS and act not in _NODE_ACTIVATIONS:
                bad.append((f"{c.cls} with activation '{act}'", c.name))
        if c.cls == "Activation":
            act = _activation_name(cfg.get("activation"))
            if act not in _FUSED_ACTIVATIONS and act not in _NODE_ACTIVATIONS:
                bad.append((f"Activation '{act}'", c.name))
        if c.cls == "ReLU" and float(cfg.get("threshold", 0.0) or 0.0) != 0.0:
            bad.append(("ReLU with a non-zero threshold", c.name))
        if cfg.get("data_format") not in (None, "channels_last"):
            bad.append((f"{c.cls} with data_format {cfg.get('data_format')}", c.name))
    return bad


def is_keras_file(path) -> bool:
    """True when ``path`` is an HDF5 file written by Keras' ``model.save`` (never raises)."""
    try:
        import h5py

        with h5py.File(os.fspath(path), "r", locking=False) as fh:
            return "model_config" in fh.attrs and "model_weights" in fh
    except Exception:
        return False


def keras_to_graph(path) -> Tuple[Graph, List[str]]:
    """Read a Keras legacy ``.h5`` model and return ``(graph, notes)``.

    Raises :class:`UnsupportedOpsError` listing every layer cnnrt cannot run,
    and :class:`ConversionError` for a file that is not a readable Keras model.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConversionError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ConversionError(f"{path}: is a directory, not a Keras .h5 file")
    try:
        with open(path, "rb") as raw:
            magic = raw.read(4)
    except OSError as exc:
        raise ConversionError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if magic == b"PK\x03\x04":
        raise ConversionError(f"{path}: is a zip archive (the native .keras format or a SavedModel "
                              "archive); load it in Keras and save it with model.save('name.h5')")
    try:
        fh = h5py.File(path, "r", locking=False)
    except Exception as exc:
        raise ConversionError(f"{path}: not a readable HDF5 file ({exc}); a Keras model must be "
                              "saved with model.save('name.h5')") from None
    try:
        with fh:
            return _convert_file(fh, path)
    except ConversionError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ConversionError(f"{path}: damaged or unreadable Keras model file ({type(exc).__name__}: {exc})") from None


def _convert_file(fh, path):
    config = _load_config(fh, path)
    if "model_weights" not in fh:
        raise ConversionError(f"{path}: no '/model_weights' group; the file holds no trained weights")
    weights = _Weights(fh, path)
    try:
        calls, input_ids, batch_shapes, output_ids = _calls(config)
    except ConversionError as exc:
        if isinstance(exc, UnsupportedOpsError):
            raise
        raise ConversionError(f"{path}: {exc}") from None
    bad = _unsupported(calls)
    if bad:
        raise UnsupportedOpsError("Keras", bad)
    if len(input_ids) != 1:
        raise ConversionError(f"{path}: the model has {len(input_ids)} inputs; cnnrt models have one")
    if len(output_ids) != 1:
        raise ConversionError(f"{path}: the model has {len(output_ids)} outputs; cnnrt models have one")
    shape = batch_shapes[0]
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(v, int) and v > 0 for v in shape[1:])):
        raise ConversionError(f"{path}: the model input shape {shape} is not a fixed image shape "
                              "(batch, height, width, channels)")
    _, H, W, C = shape
    calls = _order(calls, input_ids)

    conv = _Converter(weights)
    for c in calls:
        if c.cls not in _IDENTITY:
            for t in c.inputs:
                conv.readers[t] = conv.readers.get(t, 0) + 1
    conv.outputs = set(output_ids)
    in_name = input_ids[0]
    conv.names.add(in_name)
    tensors = conv.tensors
    tensors[in_name] = _Tensor(in_name, (C, H, W))
    for c in calls:
        ins = [tensors[tid] for tid in c.inputs]
        if not ins:
            raise ConversionError(f"{path}: layer '{c.name}' has no input")
        tensors[c.output] = conv.convert(c, ins)
    if output_ids[0] not in tensors:
        raise ConversionError(f"{path}: the model output '{output_ids[0]}' is not produced by any layer")
    out = conv.materialize(tensors[output_ids[0]])
    if out.name == in_name:
        raise ConversionError(f"{path}: the model does nothing (its output is its input)")
    if out.hwc is not None:
        raise ConversionError(f"{path}: the model output is a flattened image; its element order "
                              "would differ from Keras (end the model with a Dense or a pooling layer)")
    conv.prune(out.name)
    graph = Graph(nodes=conv.nodes, input_shape=(C, H, W), inputs=[in_name], outputs=[out.name],
                  input_layout="NHWC")
    try:
        validate(graph)
    except ModelFormatError as exc:
        raise ConversionError(f"{path}: the model does not convert to a valid cnnrt graph: {exc}") from None
    graph.meta["keras_version"] = weights.keras_version
    name = config.get("config", {}).get("name") if isinstance(config.get("config"), dict) else None
    if name:
        graph.description = f"Keras model '{name}'"
    if len(out.shape) == 3 and out.shape[1:] != (1, 1):
        conv.notes.append("the output is an image tensor: cnnrt returns it as N, C, H, W "
                          "(Keras returns N, H, W, C)")
    return graph, conv.notes
