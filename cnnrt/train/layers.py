"""Layers of ``cnnrt.train``: parameters, forward and backward passes.

Every layer runs its forward and backward passes in the compiled kernels of
``cnnrt._train`` (nogil, OpenMP).  A layer works in float32 (training) or
float64 (gradient checks); the dtype is fixed when the network is built.

Life of a layer:

* ``build(in_shape, dtype, rng)`` fixes the per-sample input shape
  (``(C, H, W)`` or ``(F,)``), creates and initialises the parameters and
  returns the output shape;
* ``forward(x, training)`` computes the output of a batch and keeps what
  the backward pass needs;
* ``backward(dy, need_dx)`` fills ``grads`` (same keys as ``params``) and
  returns the gradient with respect to the input (None if not needed);
* ``config()`` gives the constructor arguments (plain JSON data), so
  ``layer_from_config`` can rebuild it (checkpoints store architectures
  this way, never as pickles).
"""
import math
from typing import Dict, Optional, Tuple

import numpy as np

from .. import _train as K

__all__ = [
    "Layer", "Conv2d", "Dense", "MaxPool2d", "AvgPool2d", "ReLU", "Dropout",
    "BatchNorm2d", "Flatten", "SoftmaxCrossEntropy", "layer_from_config", "LAYERS",
]

INITS = ("he", "glorot")


def _pair(value, what):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value), int(value))
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer or a pair of integers, got {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (a, b)):
        raise ValueError(f"{what} must be an integer or a pair of integers, got {value!r}")
    return (int(a), int(b))


def _positive_pair(value, what):
    pair = _pair(value, what)
    if min(pair) < 1:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return pair


def _padding(value, kernel, dilation, what="padding"):
    """Padding as (top, left, bottom, right); 'same' keeps the size at stride 1."""
    if isinstance(value, str):
        if value == "valid":
            return (0, 0, 0, 0)
        if value != "same":
            raise ValueError(f"{what} must be 'same', 'valid', an integer, a pair or 4 integers, got {value!r}")
        th = dilation[0] * (kernel[0] - 1)
        tw = dilation[1] * (kernel[1] - 1)
        return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        p = int(value)
        pads = (p, p, p, p)
    else:
        try:
            vals = tuple(value)
        except TypeError:
            raise ValueError(f"{what} must be 'same', 'valid', an integer, a pair or 4 integers, got {value!r}") from None
        if len(vals) == 2:
            pads = (vals[0], vals[1], vals[0], vals[1])
        elif len(vals) == 4:
            pads = vals
        else:
            raise ValueError(f"{what} must be 'same', 'valid', an integer, a pair or 4 integers, got {value!r}")
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pads):
            raise ValueError(f"{what} must be integers, got {value!r}")
        pads = tuple(int(v) for v in pads)
    if min(pads) < 0:
        raise ValueError(f"{what} must be >= 0, got {value!r}")
    return pads


def _window_out(size, k, s, pa, pb, d=1):
    return (size + pa + pb - d * (k - 1) - 1) // s + 1


def _image_shape(layer, in_shape):
    if len(in_shape) != 3:
        raise ValueError(f"{layer.name}: expects an image input (C, H, W), got shape {tuple(in_shape)}")
    return tuple(in_shape)


class Layer:
    """Base class: no parameters, identity shape."""

    kind = "layer"
    trainable = True

    def __init__(self, name: Optional[str] = None):
        self.name = name
        self.params: Dict[str, np.ndarray] = {}
        self.grads: Dict[str, np.ndarray] = {}
        self.buffers: Dict[str, np.ndarray] = {}
        self.in_shape = None
        self.out_shape = None
        self.dtype = np.float32
        self.threads = 0
        self._bufs = {}

    # -- construction -------------------------------------------------------
    def build(self, in_shape, dtype, rng) -> Tuple[int, ...]:
        self.in_shape = tuple(int(v) for v in in_shape)
        self.dtype = np.dtype(dtype).type
        self.out_shape = self._build(self.in_shape, rng)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        return self.out_shape

    def _build(self, in_shape, rng):
        return in_shape

    def config(self) -> dict:
        return {}

    # -- computation --------------------------------------------------------
    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        raise NotImplementedError

    def _empty(self, shape, key="out", dtype=None):
        """A work array of this shape, reused from call to call.

        Reusing buffers (one per role and shape) avoids the page faults of
        fresh large allocations on every step.  An array returned by forward
        stays valid until the next forward pass of the same layer."""
        dtype = np.dtype(dtype or self.dtype)
        k = (key, tuple(shape), dtype.char)
        buf = self._bufs.get(k)
        if buf is None:
            if len(self._bufs) > 32:
                self._bufs.clear()
            buf = self._bufs[k] = np.empty(shape, dtype=dtype)
        return buf

    def n_params(self):
        return int(sum(p.size for p in self.params.values()))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------
# Convolution and dense
# --------------------------------------------------------------------------

def _init_weight(rng, shape, fan_in, fan_out, init, dtype):
    if init == "he":
        w = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    elif init == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, size=shape)
    else:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    return np.ascontiguousarray(w, dtype=dtype)


class Conv2d(Layer):
    """2-D cross-correlation, as the format's ``conv2d`` (and PyTorch's Conv2d).

    ``filters`` output channels, ``kernel_size`` k or (kh, kw), ``stride``,
    ``padding`` (integer, pair, (top, left, bottom, right), 'same' or
    'valid'), ``dilation``, ``groups``; ``init`` 'he' (normal, std
    sqrt(2/fan_in), for ReLU nets) or 'glorot' (uniform); biases start at 0.
    """

    kind = "conv"

    def __init__(self, filters, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, init="he", name=None):
        super().__init__(name)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}")
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.filters = int(filters)
        self.kernel = _positive_pair(kernel_size, "kernel_size")
        self.stride = _positive_pair(stride, "stride")
        self.dilation = _positive_pair(dilation, "dilation")
        self.padding = _padding(padding, self.kernel, self.dilation)
        self.groups = int(groups)
        self.use_bias = bool(bias)
        self.init = init
        if self.filters % self.groups:
            raise ValueError(f"filters ({self.filters}) must be divisible by groups ({self.groups})")

    def config(self):
        return {"filters": self.filters, "kernel_size": list(self.kernel),
                "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups,
                "bias": self.use_bias, "init": self.init}

    def _build(self, in_shape, rng):
        C, H, W = _image_shape(self, in_shape)
        if C % self.groups:
            raise ValueError(f"{self.name}: input channels ({C}) must be divisible by groups ({self.groups})")
        kh, kw = self.kernel
        pt, pl, pb, pr = self.padding
        H2 = _window_out(H, kh, self.stride[0], pt, pb, self.dilation[0])
        W2 = _window_out(W, kw, self.stride[1], pl, pr, self.dilation[1])
        if H2 < 1 or W2 < 1:
            raise ValueError(f"{self.name}: kernel {kh}x{kw} leaves no output on a {H}x{W} input")
        cg = C // self.groups
        fan_in = cg * kh * kw
        fan_out = self.filters // self.groups * kh * kw
        self.params["weight"] = _init_weight(rng, (self.filters, cg, kh, kw), fan_in, fan_out,
                                             self.init, self.dtype)
        if self.use_bias:
            self.params["bias"] = np.zeros(self.filters, dtype=self.dtype)
        self._zero_bias = np.zeros(self.filters, dtype=self.dtype)
        return (self.filters, H2, W2)

    def _bias(self):
        return self.params["bias"] if self.use_bias else self._zero_bias

    def forward(self, x, training=False):
        self._x = x
        y = self._empty((x.shape[0],) + self.out_shape)
        K.conv2d_forward(x, self.params["weight"], self._bias(), y, self.stride, self.padding,
                         self.dilation, self.groups, self.threads)
        return y

    def backward(self, dy, need_dx=True):
        x = self._x
        dx = self._empty(x.shape, "grad") if need_dx else self._empty((0, 0, 0, 0), "grad")
        db = self.grads["bias"] if self.use_bias else np.empty(self.filters, dtype=self.dtype)
        K.conv2d_backward(x, self.params["weight"], dy, dx, self.grads["weight"], db,
                          self.stride, self.padding, self.dilation, self.groups, need_dx,
                          self.threads)
        return dx if need_dx else None


class Dense(Layer):
    """Fully connected: y = x @ W^T + b, W [units, inputs]; an image input is
    flattened in (C, H, W) order first, as the format's ``dense`` does."""

    kind = "fc"

    def __init__(self, units, bias=True, init="he", name=None):
        super().__init__(name)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.units = int(units)
        self.use_bias = bool(bias)
        self.init = init

    def config(self):
        return {"units": self.units, "bias": self.use_bias, "init": self.init}

    def _build(self, in_shape, rng):
        n_in = int(np.prod(in_shape))
        self.params["weight"] = _init_weight(rng, (self.units, n_in), n_in, self.units,
                                             self.init, self.dtype)
        if self.use_bias:
            self.params["bias"] = np.zeros(self.units, dtype=self.dtype)
        self._zero_bias = np.zeros(self.units, dtype=self.dtype)
        return (self.units,)

    def forward(self, x, training=False):
        x2 = x.reshape(x.shape[0], -1)
        self._x = x2
        y = self._empty((x.shape[0], self.units))
        K.dense_forward(x2, self.params["weight"], self.params["bias"] if self.use_bias
                        else self._zero_bias, y, self.threads)
        return y

    def backward(self, dy, need_dx=True):
        x2 = self._x
        dx = self._empty(x2.shape, "grad") if need_dx else self._empty((0, 0), "grad")
        db = self.grads["bias"] if self.use_bias else np.empty(self.units, dtype=self.dtype)
        K.dense_backward(x2, self.params["weight"], dy, dx, self.grads["weight"], db, need_dx,
                         self.threads)
        return dx.reshape((dx.shape[0],) + self.in_shape) if need_dx else None


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

class _Pool(Layer):
    kind = "pool"

    def __init__(self, kernel_size, stride=None, padding=0, name=None):
        super().__init__(name)
        self.kernel = _positive_pair(kernel_size, "kernel_size")
        self.stride = self.kernel if stride is None else _positive_pair(stride, "stride")
        self.padding = _padding(padding, self.kernel, (1, 1))
        kh, kw = self.kernel
        pt, pl, pb, pr = self.padding
        if max(pt, pb) > kh // 2 or max(pl, pr) > kw // 2:
            raise ValueError(f"pooling padding {list(self.padding)} must be at most half the kernel {list(self.kernel)}")

    def config(self):
        return {"kernel_size": list(self.kernel), "stride": list(self.stride),
                "padding": list(self.padding)}

    def _build(self, in_shape, rng):
        C, H, W = _image_shape(self, in_shape)
        kh, kw = self.kernel
        pt, pl, pb, pr = self.padding
        H2 = _window_out(H, kh, self.stride[0], pt, pb)
        W2 = _window_out(W, kw, self.stride[1], pl, pr)
        if H2 < 1 or W2 < 1:
            raise ValueError(f"{self.name}: pooling window {kh}x{kw} does not fit a {H}x{W} input")
        return (C, H2, W2)


class MaxPool2d(_Pool):
    """Max over each window (padding cells never win)."""

    def forward(self, x, training=False):
        n = x.shape[0]
        y = self._empty((n,) + self.out_shape)
        self._idx = self._empty((n,) + self.out_shape, "index", np.int32)
        K.maxpool2d_forward(x, y, self._idx, self.kernel, self.stride, self.padding, self.threads)
        self._n = n
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._empty((self._n,) + self.in_shape, "grad")
        K.maxpool2d_backward(dy, self._idx, dx, self.threads)
        return dx


class AvgPool2d(_Pool):
    """Mean over each window; ``count_include_pad`` counts padding cells as zeros."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True, name=None):
        super().__init__(kernel_size, stride, padding, name)
        self.count_include_pad = bool(count_include_pad)

    def config(self):
        cfg = super().config()
        cfg["count_include_pad"] = self.count_include_pad
        return cfg

    def forward(self, x, training=False):
        n = x.shape[0]
        y = self._empty((n,) + self.out_shape)
        K.avgpool2d_forward(x, y, self.kernel, self.stride, self.padding,
                            self.count_include_pad, self.threads)
        self._n = n
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._empty((self._n,) + self.in_shape, "grad")
        K.avgpool2d_backward(dy, dx, self.kernel, self.stride, self.padding,
                             self.count_include_pad, self.threads)
        return dx


# --------------------------------------------------------------------------
# Element-wise
# --------------------------------------------------------------------------

class ReLU(Layer):
    kind = "relu"

    def forward(self, x, training=False):
        y = self._empty(x.shape)
        K.relu_forward(x.reshape(-1), y.reshape(-1), self.threads)
        self._y = y
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._empty(dy.shape, "grad")
        K.relu_backward(self._y.reshape(-1), dy.reshape(-1), dx.reshape(-1), self.threads)
        return dx


class Dropout(Layer):
    """Inverted dropout: in training each value is zeroed with probability
    ``rate`` and the others scaled by 1/(1-rate); the identity at inference.

    The mask comes from a counter-based hash of a seed the network draws for
    every batch, so a seeded run is reproducible."""

    kind = "dropout"

    def __init__(self, rate=0.5, name=None):
        super().__init__(name)
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.seed = 0

    def config(self):
        return {"rate": self.rate}

    def forward(self, x, training=False):
        self._active = training and self.rate > 0
        if not self._active:
            return x
        self._mask = self._empty((x.size,), "mask", np.uint8)
        K.dropout_mask(self.seed, self.rate, self._mask, self.threads)
        y = self._empty(x.shape)
        K.dropout_apply(x.reshape(-1), self._mask, 1.0 / (1.0 - self.rate), y.reshape(-1),
                        self.threads)
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if not self._active:
            return dy
        dx = self._empty(dy.shape, "grad")
        K.dropout_apply(dy.reshape(-1), self._mask, 1.0 / (1.0 - self.rate), dx.reshape(-1),
                        self.threads)
        return dx


class BatchNorm2d(Layer):
    """Batch normalization per channel of an image (or per feature).

    Training mode normalises with the batch statistics (biased variance) and
    updates ``running_mean`` / ``running_var`` (unbiased variance) with
    ``momentum``; inference mode uses the running statistics, which is what
    the format's ``batchnorm2d`` computes."""

    kind = "bn"

    def __init__(self, momentum=0.1, eps=1e-5, name=None):
        super().__init__(name)
        self.momentum = float(momentum)
        self.eps = float(eps)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")

    def config(self):
        return {"momentum": self.momentum, "eps": self.eps}

    def _build(self, in_shape, rng):
        if len(in_shape) not in (1, 3):
            raise ValueError(f"{self.name}: expects (C, H, W) or (F,), got {tuple(in_shape)}")
        c = in_shape[0]
        self.params["gamma"] = np.ones(c, dtype=self.dtype)
        self.params["beta"] = np.zeros(c, dtype=self.dtype)
        self.buffers["running_mean"] = np.zeros(c, dtype=self.dtype)
        self.buffers["running_var"] = np.ones(c, dtype=self.dtype)
        return in_shape

    def _view(self, x):
        return x.reshape(x.shape[0], self.in_shape[0], -1)

    def forward(self, x, training=False):
        c = self.in_shape[0]
        x3 = self._view(x)
        y = self._empty(x.shape)
        self._training = training
        if training:
            self._x = x3
            self._mean = np.empty(c)
            self._invstd = np.empty(c)
            var = np.empty(c)
            K.batchnorm_forward_train(x3, self.params["gamma"], self.params["beta"], self.eps,
                                      self._view(y), self._mean, self._invstd, var, self.threads)
            n = x3.shape[0] * x3.shape[2]
            unbiased = var * (n / (n - 1)) if n > 1 else var
            m = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm[...] = (1 - m) * rm + m * self._mean
            rv[...] = (1 - m) * rv + m * unbiased
        else:
            K.batchnorm_forward_eval(x3, self.params["gamma"], self.params["beta"],
                                     self.buffers["running_mean"], self.buffers["running_var"],
                                     self.eps, self._view(y), self.threads)
        return y

    def backward(self, dy, need_dx=True):
        dy3 = self._view(dy)
        dx = self._empty(dy.shape, "grad")
        if self._training:
            K.batchnorm_backward_train(self._x, dy3, self.params["gamma"], self._mean,
                                       self._invstd, self._view(dx), self.grads["gamma"],
                                       self.grads["beta"], self.threads)
        else:
            raise RuntimeError(f"{self.name}: backward after an inference-mode forward pass")
        return dx if need_dx else None


class Flatten(Layer):
    """(C, H, W) -> (C*H*W,) in C-major order (a view, no copy)."""

    kind = "flatten"

    def _build(self, in_shape, rng):
        return (int(np.prod(in_shape)),)

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape((dy.shape[0],) + self.in_shape) if need_dx else None


# --------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------

class SoftmaxCrossEntropy:
    """Mean over the batch of -log softmax(logits)[label]."""

    def __init__(self, threads=0):
        self.threads = threads

    def forward(self, logits, labels):
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        self._labels = labels
        self._probs = np.empty_like(logits)
        self._losses = np.empty(logits.shape[0])
        return K.softmax_xent_forward(logits, labels, self._probs, self._losses, self.threads)

    @property
    def probs(self):
        return self._probs

    def backward(self):
        d = np.empty_like(self._probs)
        n = self._probs.shape[0]
        K.softmax_xent_backward(self._probs, self._labels, 1.0 / max(n, 1), d, self.threads)
        return d


LAYERS = {cls.__name__: cls for cls in (Conv2d, Dense, MaxPool2d, AvgPool2d, ReLU, Dropout,
                                        BatchNorm2d, Flatten)}


def layer_from_config(entry) -> Layer:
    """Rebuild a layer from ``{"type": ..., "name": ..., "config": {...}}``."""
    try:
        cls = LAYERS[entry["type"]]
    except KeyError:
        raise ValueError(f"unknown layer type {entry.get('type')!r}; known: {', '.join(LAYERS)}") from None
    cfg = dict(entry.get("config", {}))
    return cls(name=entry.get("name"), **cfg)
