"""A second float64 NumPy reference for every op of the format, vectorised.

Written from the format's definitions alone, without looking at the compiled
kernels or at ``numpy_ref.py`` (the loop-based reference): the window ops
here gather every tap of every output position with index arrays and a
validity mask, so that padding is never materialised and each padding rule
of the format ("padding cells never win a max and add 0 to an L2 sum", the
two ``count_include_pad`` divisors) is one explicit line.  Being vectorised,
it is fast enough for full-size layers (e.g. a 227x227 input with 96 filters).

Every function takes and returns batched float64 arrays (axis 0 is the
batch); ``run_graph`` evaluates a whole :class:`cnnrt.format.Graph`.
"""
import numpy as np

ACTIVATIONS = ("none", "relu", "relu6", "sigmoid", "tanh")


# --------------------------------------------------------------- helpers

def _f64(a):
    return np.asarray(a, dtype=np.float64)


def out_len(size, k, s, pad_a, pad_b, dil=1):
    """Number of window positions along one axis (floor, as the format says)."""
    span = dil * (k - 1) + 1  # input cells covered by one window
    return (size + pad_a + pad_b - span) // s + 1


def _taps(size, k, s, pad_a, pad_b, dil):
    """Input index of every (tap, output position) on one axis, and whether it is real.

    Returns (index, valid), both of shape (k, n_out); ``index`` is clamped
    into range where ``valid`` is False so it can be used for gathering.
    """
    n_out = out_len(size, k, s, pad_a, pad_b, dil)
    if n_out < 1:
        raise ValueError(f"window leaves no output on an axis of {size}")
    pos = np.arange(n_out)[None, :] * s - pad_a + np.arange(k)[:, None] * dil
    valid = (pos >= 0) & (pos < size)
    return np.clip(pos, 0, size - 1), valid


def windows(x, kernel, stride, padding, dilation=(1, 1)):
    """All windows of a batch x [N, C, H, W].

    Returns (patches, valid): patches [N, C, kh, kw, H2, W2] (padding cells
    hold arbitrary real values) and the mask valid [kh, kw, H2, W2] that is
    True on real input cells.
    """
    _, _, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    pt, pl, pb, pr = padding
    dh, dw = dilation
    iy, vy = _taps(h, kh, sh, pt, pb, dh)  # [kh, H2]
    ix, vx = _taps(w, kw, sw, pl, pr, dw)  # [kw, W2]
    # x[:, :, iy[a, i], ix[b, j]] -> [N, C, kh, H2, kw, W2]
    p = x[:, :, iy[:, :, None, None], ix[None, None, :, :]]
    p = p.transpose(0, 1, 2, 4, 3, 5)
    valid = vy[:, None, :, None] & vx[None, :, None, :]  # [kh, kw, H2, W2]
    return p, valid


def activation(x, name):
    """The fused activation of conv2d / locally_connected2d / dense."""
    if name == "none":
        return x
    if name == "relu":
        return relu(x)
    if name == "relu6":
        return clip(x, 0.0, 6.0)
    if name == "sigmoid":
        return sigmoid(x)
    if name == "tanh":
        return tanh(x)
    raise ValueError(f"unknown activation {name!r}")


# ------------------------------------------------------- weighted layers

def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
           groups=1, activation_name="none"):
    """Grouped, dilated cross-correlation with zero padding.  x [N, C, H, W]."""
    x = _f64(x)
    w = _f64(weight)
    n, c, _, _ = x.shape
    k, cg, kh, kw = w.shape
    assert c == cg * groups and k % groups == 0, (x.shape, w.shape, groups)
    p, valid = windows(x, (kh, kw), stride, padding, dilation)
    p = np.where(valid, p, 0.0)
    h2, w2 = p.shape[-2:]
    p = p.reshape(n, groups, cg, kh, kw, h2, w2)
    wg = w.reshape(groups, k // groups, cg, kh, kw)
    out = np.einsum("ngcabyx,gocab->ngoyx", p, wg, optimize=True).reshape(n, k, h2, w2)
    if bias is not None:
        out = out + _f64(bias)[None, :, None, None]
    return activation(out, activation_name)


def locally_connected2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0),
                        dilation=(1, 1), activation_name="none"):
    """Like conv2d, but weight [H2, W2, K, C, kh, kw]: one filter per output position."""
    x = _f64(x)
    w = _f64(weight)
    kh, kw = w.shape[4:]
    p, valid = windows(x, (kh, kw), stride, padding, dilation)
    p = np.where(valid, p, 0.0)
    assert p.shape[-2:] == w.shape[:2], (p.shape, w.shape)
    out = np.einsum("ncabyx,yxkcab->nkyx", p, w, optimize=True)
    if bias is not None:
        out = out + _f64(bias)[None]
    return activation(out, activation_name)


def dense(x, weight, bias=None, activation_name="none"):
    """Fully connected; each sample is flattened in C, H, W order first."""
    x = _f64(x)
    flat = x.reshape(x.shape[0], -1)
    out = np.einsum("ni,oi->no", flat, _f64(weight))
    if bias is not None:
        out = out + _f64(bias)[None, :]
    return activation(out, activation_name)


# ---------------------------------------------------------------- pools

def maxpool2d(x, kernel, stride, padding):
    p, valid = windows(_f64(x), kernel, stride, padding)
    return np.where(valid, p, -np.inf).max(axis=(2, 3))


def avgpool2d(x, kernel, stride, padding, count_include_pad=0):
    p, valid = windows(_f64(x), kernel, stride, padding)
    total = np.where(valid, p, 0.0).sum(axis=(2, 3))
    if count_include_pad:
        count = kernel[0] * kernel[1]
    else:
        count = valid.sum(axis=(0, 1))  # real cells of each window, [H2, W2]
    return total / count


def l2pool2d(x, kernel, stride, padding):
    p, valid = windows(_f64(x), kernel, stride, padding)
    return np.sqrt(np.where(valid, p * p, 0.0).sum(axis=(2, 3)))


def globalavgpool(x):
    x = _f64(x)
    return x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2)[:, :, None, None]


def globalmaxpool(x):
    x = _f64(x)
    return x.reshape(x.shape[0], x.shape[1], -1).max(axis=2)[:, :, None, None]


# ----------------------------------------------------------- elementwise

def relu(x):
    x = _f64(x)
    return np.where(x > 0, x, 0.0)


def sigmoid(x):
    x = _f64(x)
    # exp of a non-positive number only: no overflow for any input
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def tanh(x):
    return np.tanh(_f64(x))


def leaky_relu(x, alpha):
    x = _f64(x)
    return np.where(x > 0, x, alpha * x)


def clip(x, lo, hi):
    return np.minimum(np.maximum(_f64(x), lo), hi)


def batchnorm2d(x, gamma, beta, mean, var, epsilon):
    """Inference batch norm over axis 1 of x [N, C, H, W] or [N, C]."""
    x = _f64(x)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    g, b, m, v = (_f64(a).reshape(shape) for a in (gamma, beta, mean, var))
    return g * (x - m) / np.sqrt(v + epsilon) + b


def _batched_axis(axis, ndim):
    """A format axis (batch counted as 0, negatives Python-style) as a NumPy axis."""
    a = axis + ndim if axis < 0 else axis
    if not 1 <= a < ndim:
        raise ValueError(f"axis {axis} is not a sample axis of a rank-{ndim} batch")
    return a


def softmax(x, axis):
    x = _f64(x)
    a = _batched_axis(axis, x.ndim)
    z = x - x.max(axis=a, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=a, keepdims=True)


def flatten(x):
    x = _f64(x)
    return x.reshape(x.shape[0], -1)


def add(*xs):
    assert len(xs) >= 2
    out = _f64(xs[0]).copy()
    for t in xs[1:]:
        assert t.shape == out.shape
        out += _f64(t)
    return out


def concat(xs, axis):
    xs = [_f64(t) for t in xs]
    return np.concatenate(xs, axis=_batched_axis(axis, xs[0].ndim))


# ---------------------------------------------------------------- graphs

def run_node(node, ins):
    """Evaluate one cnnrt.format.Node on its batched float64 inputs."""
    a, w, op = node.attrs, node.weights, node.op
    x = ins[0]
    if op == "conv2d":
        return conv2d(x, w["weight"], w.get("bias"), a["stride"], a["padding"], a["dilation"],
                      a["groups"], a["activation"])
    if op == "locally_connected2d":
        assert a["groups"] == 1
        return locally_connected2d(x, w["weight"], w.get("bias"), a["stride"], a["padding"],
                                   a["dilation"], a["activation"])
    if op == "dense":
        return dense(x, w["weight"], w.get("bias"), a["activation"])
    if op == "maxpool2d":
        return maxpool2d(x, a["kernel"], a["stride"], a["padding"])
    if op == "avgpool2d":
        return avgpool2d(x, a["kernel"], a["stride"], a["padding"], a["count_include_pad"])
    if op == "l2pool2d":
        return l2pool2d(x, a["kernel"], a["stride"], a["padding"])
    if op == "globalavgpool":
        return globalavgpool(x)
    if op == "globalmaxpool":
        return globalmaxpool(x)
    if op == "relu":
        return relu(x)
    if op == "sigmoid":
        return sigmoid(x)
    if op == "tanh":
        return tanh(x)
    if op == "leaky_relu":
        return leaky_relu(x, a["alpha"])
    if op == "clip":
        return clip(x, a["min"], a["max"])
    if op == "batchnorm2d":
        return batchnorm2d(x, w["gamma"], w["beta"], w["mean"], w["var"], a["epsilon"])
    if op == "softmax":
        return softmax(x, a["axis"])
    if op == "flatten":
        return flatten(x)
    if op == "add":
        return add(*ins)
    if op == "concat":
        return concat(ins, a["axis"])
    raise ValueError(f"no reference for op {op!r}")


def run_graph(graph, x):
    """Evaluate a Graph in float64 on a batch x given in the graph's input layout."""
    x = _f64(x)
    if graph.input_layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    assert x.shape[1:] == tuple(graph.input_shape), (x.shape, graph.input_shape)
    env = {graph.inputs[0]: x}
    for nd in graph.nodes:
        env[nd.outputs[0]] = run_node(nd, [env[t] for t in nd.inputs])
    return env[graph.outputs[0]]
