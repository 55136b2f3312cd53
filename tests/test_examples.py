"""The worked examples of the CNN notes cnnrt follows, run end to end."""
import numpy as np
import pytest

import cnnrt
from cnnrt.format import Graph, node

import numpy_ref as ref


def conv(name, src, dst, weight, stride, pad, activation="none"):
    k = weight.shape[2:]
    return node("conv2d", name, [src], dst, {"weight": weight}, kernel=k, stride=(stride, stride),
                padding=(pad,) * 4, dilation=(1, 1), groups=1, activation=activation)


def test_alexnet_first_layer_shape_and_values():
    """Input [227x227x3], F=11, S=4, P=0, K=96 gives [55x55x96]."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((96, 3, 11, 11)) * 0.05).astype(np.float32)
    model = cnnrt.Model(Graph([conv("conv1", "input", "output", w, 4, 0)], input_shape=(3, 227, 227)))
    assert model.output_shape == (96, 55, 55)
    assert (227 - 11 + 2 * 0) / 4 + 1 == 55
    x = rng.standard_normal((1, 3, 227, 227)).astype(np.float32)
    got = model.predict(x)
    # the reference on a few filters (all 96 in float64 loops would be slow)
    want = ref.conv2d(x, w[:4], None, (11, 11), (4, 4), (0, 0, 0, 0), (1, 1), 1)
    np.testing.assert_allclose(got[:, :4], want, rtol=1e-4, atol=1e-4)
    assert model.layers()[0]["params"] == 96 * 11 * 11 * 3


@pytest.mark.parametrize("w1,f,p,s", [(7, 3, 0, 1), (7, 3, 0, 2), (5, 3, 1, 1), (32, 5, 2, 1),
                                      (224, 7, 3, 2), (13, 3, 1, 2)])
def test_conv_output_size_formula(w1, f, p, s):
    """(W1 - F + 2P)/S + 1, with the floor the format specifies."""
    g = Graph([conv("c", "input", "output", np.zeros((2, 1, f, f), np.float32), s, p)],
              input_shape=(1, w1, w1))
    side = (w1 - f + 2 * p) // s + 1
    assert cnnrt.Model(g).output_shape == (2, side, side)


@pytest.mark.parametrize("w1", [4, 32, 224, 13])
def test_max_pool_2x2_stride_2(w1):
    """(W1 - F)/S + 1 for 2x2 pooling with stride 2."""
    g = Graph([node("maxpool2d", "pool", ["input"], "output", kernel=(2, 2), stride=(2, 2),
                    padding=(0, 0, 0, 0))], input_shape=(3, w1, w1))
    model = cnnrt.Model(g)
    side = (w1 - 2) // 2 + 1
    assert model.output_shape == (3, side, side)
    x = np.random.default_rng(1).standard_normal((2, 3, w1, w1)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), ref.run_graph(g, x).astype(np.float32))


def test_cifar10_pattern_end_to_end():
    """INPUT [32x32x3] - CONV (12 filters) - RELU - POOL - FC (10 classes) - softmax."""
    rng = np.random.default_rng(2)
    g = Graph([
        conv("conv", "input", "c", (rng.standard_normal((12, 3, 3, 3)) * 0.2).astype(np.float32), 1, 1),
        node("relu", "relu", ["c"], "r"),
        node("maxpool2d", "pool", ["r"], "p", kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0)),
        node("dense", "fc", ["p"], "z", {"weight": (rng.standard_normal((10, 16 * 16 * 12)) * 0.02
                                                    ).astype(np.float32),
                                          "bias": rng.standard_normal(10).astype(np.float32)},
             activation="none"),
        node("softmax", "prob", ["z"], "output", axis=1),
    ], input_shape=(3, 32, 32), labels=["airplane", "automobile", "bird", "cat", "deer", "dog",
                                        "frog", "horse", "ship", "truck"])
    model = cnnrt.Model(g)
    shapes = [r["output_shape"] for r in model.layers()]
    assert shapes == [(12, 32, 32), (12, 32, 32), (12, 16, 16), (10,), (10,)]
    x = rng.random((5, 3, 32, 32)).astype(np.float32)
    got = model.predict(x)
    np.testing.assert_allclose(got, ref.run_graph(g, x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
