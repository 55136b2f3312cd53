"""Gradient checks: every layer's backward pass against central finite
differences of its own forward pass, in float64, on random inputs and
parameters (odd sizes, asymmetric padding, strides, dilation, groups)."""
import numpy as np
import pytest

from cnnrt.train import (AvgPool2d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU,
                         Sequential, SoftmaxCrossEntropy)

EPS = 1e-6


def _numeric_grad(f, arr, eps=EPS):
    """Central differences of the scalar f() with respect to every element of arr."""
    grad = np.zeros_like(arr)
    flat = arr.reshape(-1)
    g = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return grad


def _assert_close(analytic, numeric, what):
    scale = max(1.0, float(np.abs(numeric).max()))
    err = float(np.abs(analytic - numeric).max())
    assert err <= 1e-6 * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


def check_layer(layer, in_shape, x=None, seed=0, training=True, check_x=True):
    """Build ``layer`` in float64 and compare all its gradients with finite differences."""
    rng = np.random.default_rng(seed)
    layer.build(in_shape, np.float64, rng)
    layer.threads = 2
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    if x is None:
        x = rng.standard_normal((3,) + tuple(in_shape))
    r = rng.standard_normal((x.shape[0],) + layer.out_shape)

    def f():
        return float(np.sum(layer.forward(x, training) * r))

    f()
    dx = layer.backward(r.copy(), need_dx=True)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    if check_x:
        _assert_close(dx, _numeric_grad(f, x), f"{layer} d/dx")
    for k, p in layer.params.items():
        _assert_close(grads[k], _numeric_grad(f, p), f"{layer} d/d{k}")
    return dx


CONV_CASES = [
    # in_shape, kwargs
    ((3, 7, 6), dict(filters=4, kernel_size=3)),
    ((2, 7, 8), dict(filters=5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0, 2, 1))),
    ((4, 9, 9), dict(filters=6, kernel_size=3, dilation=2, padding=2, groups=2)),
    ((4, 6, 5), dict(filters=4, kernel_size=3, groups=4, padding=1, stride=2)),  # depthwise
    ((3, 5, 4), dict(filters=7, kernel_size=1)),  # 1x1: no im2col
    ((3, 5, 4), dict(filters=6, kernel_size=1, groups=3)),
    ((2, 5, 5), dict(filters=3, kernel_size=5, padding="same", bias=False)),
    ((1, 6, 7), dict(filters=2, kernel_size=(2, 3), stride=3, dilation=(2, 1), padding=(0, 2, 1, 0))),
]


@pytest.mark.parametrize("in_shape,kwargs", CONV_CASES)
def test_conv2d(in_shape, kwargs):
    check_layer(Conv2d(**kwargs, name="conv"), in_shape)


def test_conv2d_batch_larger_than_partials():
    # More samples than partial weight-gradient buffers (8): several samples per buffer.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((11, 2, 5, 5))
    check_layer(Conv2d(3, 3, padding=1, name="conv"), (2, 5, 5), x=x)


@pytest.mark.parametrize("in_shape", [(7,), (2, 3, 4)])
def test_dense(in_shape):
    check_layer(Dense(5, name="fc"), in_shape)


def test_dense_no_bias():
    check_layer(Dense(3, bias=False, name="fc"), (9,))


def _distinct(shape, seed):
    """Values with gaps of at least 0.01 so no finite-difference step changes a max."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.01 - n * 0.005).reshape(shape).astype(np.float64)


@pytest.mark.parametrize("kwargs,in_shape", [
    (dict(kernel_size=2), (3, 6, 6)),
    (dict(kernel_size=3, stride=2, padding=1), (2, 7, 5)),
    (dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0, 0, 1)), (2, 5, 6)),
])
def test_maxpool2d(kwargs, in_shape):
    x = _distinct((2,) + in_shape, 1)
    check_layer(MaxPool2d(**kwargs, name="pool"), in_shape, x=x)


@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("kwargs,in_shape", [
    (dict(kernel_size=2), (2, 6, 6)),
    (dict(kernel_size=3, stride=2, padding=1), (2, 7, 5)),
    (dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1, 0, 0)), (1, 5, 4)),
])
def test_avgpool2d(kwargs, in_shape, include_pad):
    check_layer(AvgPool2d(**kwargs, count_include_pad=include_pad, name="pool"), in_shape)


def test_relu():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # no finite-difference step crosses the kink
    check_layer(ReLU(name="relu"), (2, 4, 5), x=x)


def test_dropout():
    layer = Dropout(0.4, name="drop")
    layer.seed = 1234
    dx = check_layer(layer, (2, 4, 5))
    # The mask drops some values and scales the rest by 1/(1-rate).
    assert np.any(dx == 0) and np.any(dx != 0)


def test_dropout_inference_is_identity():
    layer = Dropout(0.5, name="drop")
    layer.build((6,), np.float64, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((4, 6))
    assert np.array_equal(layer.forward(x, training=False), x)


@pytest.mark.parametrize("in_shape", [(3, 4, 5), (4,)])
def test_batchnorm_training_mode(in_shape):
    layer = BatchNorm2d(name="bn")
    check_layer(layer, in_shape)


def test_batchnorm_inference_mode():
    rng = np.random.default_rng(5)
    layer = BatchNorm2d(name="bn")
    layer.build((3, 4, 4), np.float64, rng)
    layer.buffers["running_mean"][...] = rng.standard_normal(3)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 3)
    x = rng.standard_normal((2, 3, 4, 4))
    y = layer.forward(x, training=False)
    rm, rv = layer.buffers["running_mean"], layer.buffers["running_var"]
    g, b = layer.params["gamma"], layer.params["beta"]
    ref = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + layer.eps) * g[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_flatten():
    check_layer(Flatten(name="flat"), (2, 3, 4))


def test_softmax_cross_entropy():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    crit = SoftmaxCrossEntropy(2)

    def f():
        return crit.forward(logits, labels)

    f()
    d = crit.backward()
    _assert_close(d, _numeric_grad(f, logits), "softmax cross-entropy")
    # And the value itself against float64 NumPy.
    z = logits - logits.max(axis=1, keepdims=True)
    ref = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(5), labels])
    assert abs(f() - ref) < 1e-12


def test_whole_network():
    """End to end: loss of a small net with every layer type vs finite differences."""
    layers = [Conv2d(4, 3, padding=1), BatchNorm2d(), ReLU(), MaxPool2d(2),
              Conv2d(4, 3, stride=2, padding=(1, 1, 0, 0), groups=2), AvgPool2d(2, stride=1),
              Dropout(0.3), Flatten(), Dense(6), ReLU(), Dense(3)]
    net = Sequential(layers, input_shape=(2, 8, 8), seed=4, dtype=np.float64, threads=2)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 2, 8, 8))
    y = np.array([0, 2, 1, 2])
    for layer in net.layers:
        if isinstance(layer, Dropout):
            layer.seed = 99

    def f():
        return net.loss(x, y, training=True)

    net.gradients(x, y)
    analytic = {k: g.copy() for k, _, g, _ in net.parameters()}
    for key, p, _, _ in net.parameters():
        _assert_close(analytic[key], _numeric_grad(f, p), key)
