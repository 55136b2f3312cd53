"""The op table: every op of the format, its attributes, datasets and shape rule.

One entry per op name of the format.  The reader (``cnnrt.format``) uses the
table to type-check attributes and datasets; the planner uses it to infer
output shapes and count parameters and multiply-adds.  An op that is not in
``OPS`` is unknown and refused.

Shapes never include the batch dimension: an image tensor is ``(C, H, W)``,
a feature vector ``(F,)``.
"""
from dataclasses import dataclass, field
from math import prod
from typing import Callable, Dict, Optional, Tuple

ACTIVATIONS = ("none", "relu", "relu6", "sigmoid", "tanh")

# Largest value accepted for any size-like integer attribute (kernel, stride,
# padding, dilation, groups).  Anything larger is certainly not a real model
# and would risk overflow in index arithmetic.
MAX_DIM = 1 << 20


class ShapeError(Exception):
    """Raised by a shape rule; the reader turns it into ModelFormatError."""


@dataclass(frozen=True)
class AttrSpec:
    name: str
    kind: str  # "int", "float", "string", "ints", "floats"
    length: Optional[int] = None  # for "ints"


@dataclass(frozen=True)
class OpSpec:
    name: str
    attrs: Tuple[AttrSpec, ...]
    weights: Tuple[str, ...] = ()  # dataset names, all required ...
    optional_weights: Tuple[str, ...] = ()  # ... except these
    min_inputs: int = 1
    max_inputs: int = 1
    infer: Callable = None  # (attrs, in_shapes, weights_shapes) -> out_shape
    macs: Callable = field(default=None)  # (attrs, in_shapes, out_shape) -> int


# --------------------------------------------------------------------------
# Shape rules
# --------------------------------------------------------------------------

def window_out(size, k, s, pad_a, pad_b, dil=1):
    """Output length of a sliding window along one axis (format formula)."""
    return (size + pad_a + pad_b - dil * (k - 1) - 1) // s + 1


def _need_image(shape, what="input"):
    if len(shape) != 3:
        raise ShapeError(f"{what} must be an image tensor [C, H, W], got {list(shape)}")


def _check_window(attrs, C, H, W, dil=(1, 1)):
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    pt, pl, pb, pr = attrs["padding"]
    H2 = window_out(H, kh, sh, pt, pb, dil[0])
    W2 = window_out(W, kw, sw, pl, pr, dil[1])
    if H2 <= 0 or W2 <= 0:
        raise ShapeError(
            f"kernel {kh}x{kw} (dilation {dil[0]}x{dil[1]}, padding {pt},{pl},{pb},{pr}) "
            f"leaves no output on a {H}x{W} input"
        )
    return H2, W2


def _weight_shape(wshapes, name, expected):
    got = wshapes.get(name)
    if got is None:
        return
    if tuple(got) != tuple(expected):
        raise ShapeError(f"dataset '{name}' has shape {list(got)}, expected {list(expected)}")


def _infer_conv(attrs, ins, wshapes):
    (shape,) = ins
    _need_image(shape)
    C, H, W = shape
    g = attrs["groups"]
    kh, kw = attrs["kernel"]
    wshape = wshapes["weight"]
    if len(wshape) != 4:
        raise ShapeError(f"dataset 'weight' must be 4-D [K, C/groups, kh, kw], got {list(wshape)}")
    K = wshape[0]
    if K <= 0:
        raise ShapeError("dataset 'weight' has no output channels")
    if C % g or K % g:
        raise ShapeError(f"channels (in {C}, out {K}) are not divisible by groups={g}")
    _weight_shape(wshapes, "weight", (K, C // g, kh, kw))
    _weight_shape(wshapes, "bias", (K,))
    H2, W2 = _check_window(attrs, C, H, W, attrs["dilation"])
    return (K, H2, W2)


def _macs_conv(attrs, ins, out):
    C = ins[0][0]
    kh, kw = attrs["kernel"]
    return prod(out) * (C // attrs["groups"]) * kh * kw


def _infer_lc(attrs, ins, wshapes):
    (shape,) = ins
    _need_image(shape)
    C, H, W = shape
    if attrs["groups"] != 1:
        raise ShapeError(f"locally_connected2d needs groups=1, got {attrs['groups']}")
    kh, kw = attrs["kernel"]
    H2, W2 = _check_window(attrs, C, H, W, attrs["dilation"])
    wshape = wshapes["weight"]
    if len(wshape) != 6:
        raise ShapeError(
            f"dataset 'weight' must be 6-D [H2, W2, K, C, kh, kw], got {list(wshape)}"
        )
    K = wshape[2]
    if K <= 0:
        raise ShapeError("dataset 'weight' has no output channels")
    _weight_shape(wshapes, "weight", (H2, W2, K, C, kh, kw))
    _weight_shape(wshapes, "bias", (K, H2, W2))
    return (K, H2, W2)


def _macs_lc(attrs, ins, out):
    kh, kw = attrs["kernel"]
    return prod(out) * ins[0][0] * kh * kw


def _infer_dense(attrs, ins, wshapes):
    (shape,) = ins
    n_in = prod(shape)
    wshape = wshapes["weight"]
    if len(wshape) != 2:
        raise ShapeError(f"dataset 'weight' must be 2-D [out, in], got {list(wshape)}")
    n_out = wshape[0]
    if n_out <= 0:
        raise ShapeError("dataset 'weight' has no outputs")
    if wshape[1] != n_in:
        raise ShapeError(
            f"dataset 'weight' expects {wshape[1]} inputs but the input "
            f"{list(shape)} has {n_in} values"
        )
    _weight_shape(wshapes, "bias", (n_out,))
    return (n_out,)


def _macs_dense(attrs, ins, out):
    return prod(ins[0]) * out[0]


def _infer_pool(attrs, ins, wshapes):
    (shape,) = ins
    _need_image(shape)
    C, H, W = shape
    kh, kw = attrs["kernel"]
    pt, pl, pb, pr = attrs["padding"]
    if max(pt, pb) >= kh or max(pl, pr) >= kw:
        raise ShapeError(
            f"padding {pt},{pl},{pb},{pr} must be smaller than the kernel {kh}x{kw}: "
            "a window made only of padding has no value"
        )
    H2, W2 = _check_window(attrs, C, H, W)
    return (C, H2, W2)


def _infer_global(attrs, ins, wshapes):
    (shape,) = ins
    _need_image(shape)
    return (shape[0], 1, 1)


def _infer_same(attrs, ins, wshapes):
    return tuple(ins[0])


def _infer_batchnorm(attrs, ins, wshapes):
    (shape,) = ins
    if len(shape) not in (1, 3):
        raise ShapeError(f"input must be [C, H, W] or [C], got {list(shape)}")
    for name in ("gamma", "beta", "mean", "var"):
        _weight_shape(wshapes, name, (shape[0],))
    return tuple(shape)


def _norm_axis(axis, rank):
    """Format axes count the batch axis as 0; return the axis within a sample."""
    a = axis + rank + 1 if axis < 0 else axis
    if not 1 <= a <= rank:
        raise ShapeError(
            f"axis {axis} is out of range for a tensor of rank {rank + 1} (batch axis "
            f"included): expected 1..{rank} or -{rank}..-1; the batch axis 0 cannot be used"
        )
    return a - 1


def _infer_softmax(attrs, ins, wshapes):
    (shape,) = ins
    _norm_axis(attrs["axis"], len(shape))
    return tuple(shape)


def _infer_flatten(attrs, ins, wshapes):
    return (prod(ins[0]),)


def _infer_add(attrs, ins, wshapes):
    first = tuple(ins[0])
    for s in ins[1:]:
        if tuple(s) != first:
            raise ShapeError(
                "add needs inputs of equal shape, got " + ", ".join(str(list(x)) for x in ins)
            )
    return first


def _infer_concat(attrs, ins, wshapes):
    rank = len(ins[0])
    ax = _norm_axis(attrs["axis"], rank)
    out = list(ins[0])
    for s in ins[1:]:
        if len(s) != rank or any(s[i] != out[i] for i in range(rank) if i != ax):
            raise ShapeError(
                f"concat on axis {attrs['axis']} needs inputs equal in every other axis, got "
                + ", ".join(str(list(x)) for x in ins)
            )
        out[ax] += s[ax]
    return tuple(out)


def _no_macs(attrs, ins, out):
    return 0


def _elem_macs(attrs, ins, out):
    return prod(out)


_WINDOW = (
    AttrSpec("kernel", "ints", 2),
    AttrSpec("stride", "ints", 2),
    AttrSpec("padding", "ints", 4),
)
_CONV_ATTRS = _WINDOW + (
    AttrSpec("dilation", "ints", 2),
    AttrSpec("groups", "int"),
    AttrSpec("activation", "string"),
)

_SPECS = [
    OpSpec("conv2d", _CONV_ATTRS, ("weight",), ("bias",), infer=_infer_conv, macs=_macs_conv),
    OpSpec("locally_connected2d", _CONV_ATTRS, ("weight",), ("bias",),
           infer=_infer_lc, macs=_macs_lc),
    OpSpec("dense", (AttrSpec("activation", "string"),), ("weight",), ("bias",),
           infer=_infer_dense, macs=_macs_dense),
    OpSpec("maxpool2d", _WINDOW, infer=_infer_pool, macs=_no_macs),
    OpSpec("avgpool2d", _WINDOW + (AttrSpec("count_include_pad", "int"),),
           infer=_infer_pool, macs=_no_macs),
    OpSpec("l2pool2d", _WINDOW, infer=_infer_pool, macs=_no_macs),
    OpSpec("globalavgpool", (), infer=_infer_global, macs=_no_macs),
    OpSpec("globalmaxpool", (), infer=_infer_global, macs=_no_macs),
    OpSpec("relu", (), infer=_infer_same, macs=_no_macs),
    OpSpec("sigmoid", (), infer=_infer_same, macs=_no_macs),
    OpSpec("tanh", (), infer=_infer_same, macs=_no_macs),
    OpSpec("leaky_relu", (AttrSpec("alpha", "float"),), infer=_infer_same, macs=_no_macs),
    OpSpec("clip", (AttrSpec("min", "float"), AttrSpec("max", "float")),
           infer=_infer_same, macs=_no_macs),
    OpSpec("batchnorm2d", (AttrSpec("epsilon", "float"),), ("gamma", "beta", "mean", "var"),
           infer=_infer_batchnorm, macs=_elem_macs),
    OpSpec("softmax", (AttrSpec("axis", "int"),), infer=_infer_softmax, macs=_no_macs),
    OpSpec("flatten", (), infer=_infer_flatten, macs=_no_macs),
    OpSpec("add", (), min_inputs=2, max_inputs=1 << 16, infer=_infer_add, macs=_no_macs),
    OpSpec("concat", (AttrSpec("axis", "int"),), min_inputs=1, max_inputs=1 << 16,
           infer=_infer_concat, macs=_no_macs),
]

OPS: Dict[str, OpSpec] = {spec.name: spec for spec in _SPECS}


def softmax_axis(axis, rank):
    """Index of a format ``axis`` inside a sample of the given rank."""
    return _norm_axis(axis, rank)
