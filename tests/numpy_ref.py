"""Float64 NumPy implementations of every op of the format, for the tests.

Written from the format's definitions (docs/format.md), independently of the
compiled kernels.  ``run_graph`` evaluates a whole ``cnnrt.format.Graph``.
All functions take and return batched arrays (axis 0 is the batch).
"""
import numpy as np


def act(x, name):
    if name == "none":
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "relu6":
        return np.clip(x, 0.0, 6.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    raise ValueError(name)


def out_size(size, k, s, pa, pb, d=1):
    return (size + pa + pb - d * (k - 1) - 1) // s + 1


def conv2d(x, weight, bias, kernel, stride, padding, dilation, groups, activation="none"):
    """Cross-correlation by explicit loops over output positions and taps."""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    pt, pl, pb, pr = padding
    sh, sw = stride
    dh, dw = dilation
    h2 = out_size(h, kh, sh, pt, pb, dh)
    w2 = out_size(wd, kw, sw, pl, pr, dw)
    kg = k // groups
    out = np.zeros((n, k, h2, w2))
    for oy in range(h2):
        for ox in range(w2):
            for ky in range(kh):
                iy = oy * sh - pt + ky * dh
                if not 0 <= iy < h:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pl + kx * dw
                    if not 0 <= ix < wd:
                        continue
                    for g in range(groups):
                        xv = x[:, g * cg:(g + 1) * cg, iy, ix]            # n, cg
                        wv = w[g * kg:(g + 1) * kg, :, ky, kx]            # kg, cg
                        out[:, g * kg:(g + 1) * kg, oy, ox] += xv @ wv.T
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None, None]
    return act(out, activation)


def locally_connected2d(x, weight, bias, kernel, stride, padding, dilation, activation="none"):
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)                  # h2, w2, k, c, kh, kw
    n, c, h, wd = x.shape
    h2, w2, k, _, kh, kw = w.shape
    pt, pl, _, _ = padding
    sh, sw = stride
    dh, dw = dilation
    out = np.zeros((n, k, h2, w2))
    for oy in range(h2):
        for ox in range(w2):
            for ky in range(kh):
                iy = oy * sh - pt + ky * dh
                if not 0 <= iy < h:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pl + kx * dw
                    if 0 <= ix < wd:
                        out[:, :, oy, ox] += x[:, :, iy, ix] @ w[oy, ox, :, :, ky, kx].T
    if bias is not None:
        out += np.asarray(bias, np.float64)[None]
    return act(out, activation)


def dense(x, weight, bias, activation="none"):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    out = x @ np.asarray(weight, np.float64).T
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return act(out, activation)


def pool2d(x, kind, kernel, stride, padding, count_include_pad=0):
    x = np.asarray(x, np.float64)
    n, c, h, wd = x.shape
    kh, kw = kernel
    sh, sw = stride
    pt, pl, pb, pr = padding
    h2 = out_size(h, kh, sh, pt, pb)
    w2 = out_size(wd, kw, sw, pl, pr)
    out = np.zeros((n, c, h2, w2))
    for oy in range(h2):
        for ox in range(w2):
            y0, x0 = oy * sh - pt, ox * sw - pl
            win = x[:, :, max(y0, 0):min(y0 + kh, h), max(x0, 0):min(x0 + kw, wd)]
            if kind == "max":
                out[:, :, oy, ox] = win.max(axis=(2, 3))
            elif kind == "l2":
                out[:, :, oy, ox] = np.sqrt((win ** 2).sum(axis=(2, 3)))
            else:
                if count_include_pad:
                    cnt = (min(y0 + kh, h + pb) - y0) * (min(x0 + kw, wd + pr) - x0)
                else:
                    cnt = win.shape[2] * win.shape[3]
                out[:, :, oy, ox] = win.sum(axis=(2, 3)) / cnt
    return out


def batchnorm(x, gamma, beta, mean, var, epsilon):
    x = np.asarray(x, np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    g, b, m, v = (np.asarray(a, np.float64).reshape(shape) for a in (gamma, beta, mean, var))
    return g * (x - m) / np.sqrt(v + epsilon) + b


def softmax(x, axis):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def run_node(node, ins):
    a, w = node.attrs, node.weights
    op = node.op
    x = ins[0]
    if op == "conv2d":
        return conv2d(x, w["weight"], w.get("bias"), a["kernel"], a["stride"], a["padding"],
                      a["dilation"], a["groups"], a["activation"])
    if op == "locally_connected2d":
        return locally_connected2d(x, w["weight"], w.get("bias"), a["kernel"], a["stride"],
                                   a["padding"], a["dilation"], a["activation"])
    if op == "dense":
        return dense(x, w["weight"], w.get("bias"), a["activation"])
    if op in ("maxpool2d", "avgpool2d", "l2pool2d"):
        return pool2d(x, op[:-6], a["kernel"], a["stride"], a["padding"],
                      a.get("count_include_pad", 0))
    if op == "globalavgpool":
        return x.mean(axis=(2, 3), keepdims=True)
    if op == "globalmaxpool":
        return x.max(axis=(2, 3), keepdims=True)
    if op in ("relu", "sigmoid", "tanh"):
        return act(x, op)
    if op == "leaky_relu":
        return np.where(x > 0, x, a["alpha"] * x)
    if op == "clip":
        return np.minimum(np.maximum(x, a["min"]), a["max"])
    if op == "batchnorm2d":
        return batchnorm(x, w["gamma"], w["beta"], w["mean"], w["var"], a["epsilon"])
    if op == "softmax":
        return softmax(x, a["axis"])
    if op == "flatten":
        return x.reshape(len(x), -1)
    if op == "add":
        return sum(ins[1:], ins[0])
    if op == "concat":
        return np.concatenate(ins, axis=a["axis"])
    raise ValueError(f"no reference for op {op}")


def run_graph(graph, x):
    """Evaluate a Graph in float64 on batch x (in the graph's input layout)."""
    x = np.asarray(x, np.float64)
    if graph.input_layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    env = {graph.inputs[0]: x}
    for node in graph.nodes:
        env[node.outputs[0]] = run_node(node, [env[t] for t in node.inputs])
    return env[graph.outputs[0]]
