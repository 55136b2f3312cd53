"""Keras legacy .h5 files converted with cnnrt.convert.from_keras, checked against Keras itself.

Every model is built in Keras with random weights (and non-trivial
BatchNormalization statistics), saved with ``model.save("x.h5")``, converted,
loaded with ``cnnrt.load`` and run on the same NHWC input as ``model.predict``.
Keras 2 files are produced by rewriting Keras 3 files into the Keras 2 layout
(see ``keras_files.py``), since Keras 2 itself is not installed.
"""
import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

import cnnrt  # noqa: E402
from cnnrt.convert import ConversionError, UnsupportedOpsError, from_keras  # noqa: E402
from cnnrt.convert.keras import is_keras_file  # noqa: E402
from conftest import assert_close  # noqa: E402
from keras_files import chunk_attribute, to_keras2  # noqa: E402

L = keras.layers

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def randomize(model, seed=0):
    """Random weights scaled by fan-in; BatchNormalization gets non-trivial statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            randomize(layer, seed + 1)
            continue
        values = []
        for v in layer.weights:
            shape = tuple(v.shape)
            name = v.name.split("/")[-1].split(":")[0]
            if name in ("moving_variance", "variance"):
                a = rng.uniform(0.5, 2.0, shape)
            elif name == "count":
                a = np.full(shape, 100.0)
            elif name in ("moving_mean", "mean"):
                a = rng.normal(0.0, 0.5, shape)
            elif name == "gamma":
                a = rng.uniform(0.5, 1.5, shape)
            elif name in ("beta", "bias"):
                a = rng.normal(0.0, 0.2, shape)
            else:   # kernels: fan-in is every axis but the last (depthwise: the spatial ones)
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                if isinstance(layer, (L.DepthwiseConv2D,)) or name == "depthwise_kernel":
                    fan_in = shape[0] * shape[1]
                a = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
            values.append(a.astype(np.float32))
        if values:
            layer.set_weights(values)
    return model


def save(model, folder, name="model.h5"):
    path = os.path.join(os.fspath(folder), name)
    model.save(path)
    return path


def keras_output(model, x):
    y = np.asarray(model.predict(x, verbose=0))
    if y.ndim == 4:   # cnnrt returns image outputs as N, C, H, W
        y = y.transpose(0, 3, 1, 2)
    return y


def check(model, folder, seed=1, batch=2, name="model.h5", x=None):
    """Save, convert, load; the cnnrt output must match Keras. Returns (report, cnnrt model)."""
    src = save(model, folder, name)
    dst = os.path.join(os.fspath(folder), "converted_" + name)
    report = from_keras(src, dst)
    net = cnnrt.load(dst)
    assert net.input_layout == "NHWC"
    assert tuple(net.input_shape) == tuple(model.input_shape[1:])
    if x is None:
        x = np.random.default_rng(seed).standard_normal((batch,) + tuple(model.input_shape[1:]))
        x = x.astype(np.float32)
    assert_close(net.predict(x), keras_output(model, x))
    return report, net


def ops_of(report):
    return [n.op for n in report.graph.nodes]


# --------------------------------------------------------------------------
# Whole networks
# --------------------------------------------------------------------------

def lenet():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(6, 5, padding="same", activation="relu"),
        L.MaxPooling2D(2),
        L.Conv2D(16, 5, activation="tanh"),
        L.AveragePooling2D(2),
        L.Flatten(),
        L.Dense(32, activation="relu"),
        L.Dense(16, activation="sigmoid"),
        L.Dense(10, activation="softmax"),
    ])


def alexnet():
    return keras.Sequential([
        keras.Input((35, 35, 3)),
        L.Conv2D(16, 5, strides=2, padding="same", activation="relu"),
        L.MaxPooling2D(3, strides=2),
        L.Conv2D(24, 3, padding="same", activation="relu"),
        L.MaxPooling2D(3, strides=2),
        L.Conv2D(32, 3, padding="same", activation="relu"),
        L.Conv2D(32, 3, padding="same"),
        L.Activation("relu"),
        L.Flatten(),
        L.Dense(48, activation="relu"),
        L.Dropout(0.5),
        L.Dense(10),
        L.Softmax(),
    ])


def vgg():
    x = inp = keras.Input((32, 32, 3))
    for width in (8, 16, 24):
        x = L.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = L.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
        x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(32, activation="relu")(x)
    x = L.Dropout(0.3)(x)
    out = L.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out)


def resnet():
    def block(x, width, stride):
        y = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
        y = L.BatchNormalization(epsilon=1.001e-5)(y)
        y = L.Activation("relu")(y)
        y = L.Conv2D(width, 3, padding="same", use_bias=False)(y)
        y = L.BatchNormalization(epsilon=1.001e-5)(y)
        if stride != 1 or x.shape[-1] != width:
            x = L.Conv2D(width, 1, strides=stride)(x)
            x = L.BatchNormalization(epsilon=1.001e-5)(x)
        return L.Activation("relu")(L.Add()([x, y]))

    inp = keras.Input((32, 32, 3))
    x = L.ZeroPadding2D(3)(inp)
    x = L.Conv2D(16, 7, strides=2)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.ZeroPadding2D(1)(x)
    x = L.MaxPooling2D(3, strides=2)(x)
    x = block(x, 16, 1)
    x = block(x, 24, 2)
    x = block(x, 24, 1)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out)


def mobilenet_v1():
    def dw_block(x, width, stride, multiplier=1):
        if stride == 1:
            x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=multiplier, use_bias=False)(x)
        else:
            x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)
            x = L.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU(6.0)(x)
        x = L.Conv2D(width, 1, use_bias=False)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU(6.0)(x)

    inp = keras.Input((32, 32, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = dw_block(x, 16, 1)
    x = dw_block(x, 24, 2)
    x = dw_block(x, 24, 1, multiplier=2)
    x = dw_block(x, 32, 2)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Dropout(1e-3)(x)
    x = L.Conv2D(10, 1, padding="same")(x)
    x = L.Flatten()(x)
    out = L.Activation("softmax")(x)
    return keras.Model(inp, out)


def mobilenet_v2():
    def inverted(x, expansion, width, stride):
        c = x.shape[-1]
        y = L.Conv2D(c * expansion, 1, use_bias=False)(x)
        y = L.BatchNormalization(epsilon=1e-3, momentum=0.999)(y)
        y = L.ReLU(6.0)(y)
        if stride == 2:
            y = L.ZeroPadding2D(((0, 1), (0, 1)))(y)
        y = L.DepthwiseConv2D(3, strides=stride, padding="same" if stride == 1 else "valid",
                              use_bias=False)(y)
        y = L.BatchNormalization(epsilon=1e-3, momentum=0.999)(y)
        y = L.ReLU(6.0)(y)
        y = L.Conv2D(width, 1, use_bias=False)(y)
        y = L.BatchNormalization(epsilon=1e-3, momentum=0.999)(y)
        if stride == 1 and c == width:
            return L.Add()([x, y])
        return y

    inp = keras.Input((32, 32, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU(max_value=6.0)(x)
    x = inverted(x, 1, 8, 1)
    x = inverted(x, 4, 12, 2)
    x = inverted(x, 4, 12, 1)
    x = inverted(x, 4, 16, 2)
    x = inverted(x, 4, 16, 1)
    x = L.Conv2D(32, 1, use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu6")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out)


def squeezenet():
    def fire(x, squeeze, expand):
        s = L.Conv2D(squeeze, 1, activation="relu")(x)
        a = L.Conv2D(expand, 1, activation="relu")(s)
        b = L.Conv2D(expand, 3, padding="same", activation="relu")(s)
        return L.Concatenate(axis=-1)([a, b])

    inp = keras.Input((33, 33, 3))
    x = L.Conv2D(16, 3, strides=2, activation="relu")(inp)
    x = L.MaxPooling2D(3, strides=2)(x)
    x = fire(x, 4, 8)
    x = fire(x, 4, 8)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    x = fire(x, 8, 16)
    x = L.Dropout(0.5)(x)
    x = L.Conv2D(10, 1, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Activation("softmax")(x)
    return keras.Model(inp, out)


NETWORKS = {"lenet": lenet, "alexnet": alexnet, "vgg": vgg, "resnet": resnet,
            "mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2, "squeezenet": squeezenet}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_matches_keras(name, tmp_path):
    model = randomize(NETWORKS[name](), seed=len(name))
    report, net = check(model, tmp_path, batch=3)
    assert net.output_shape == (10,)
    if name in ("resnet", "mobilenet_v1", "mobilenet_v2", "vgg"):
        # every BatchNormalization follows a conv with no other reader: all folded
        assert "batchnorm2d" not in ops_of(report)
        assert any("BatchNormalization folded" in n for n in report.notes)
    if name == "squeezenet":
        assert ops_of(report).count("concat") == 3


APPLICATIONS = {
    "MobileNet": lambda: keras.applications.MobileNet((64, 64, 3), alpha=0.25, weights=None, classes=10),
    "MobileNetV2": lambda: keras.applications.MobileNetV2((64, 64, 3), alpha=0.35, weights=None,
                                                          classes=10),
    "DenseNet121": lambda: keras.applications.DenseNet121((32, 32, 3), weights=None, classes=10),
}


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications(name, tmp_path):
    """Keras' own architectures (random weights, nothing downloaded)."""
    model = randomize(APPLICATIONS[name](), seed=7)
    x = np.random.default_rng(6).uniform(-1, 1, (2,) + tuple(model.input_shape[1:])).astype(np.float32)
    report, _ = check(model, tmp_path, x=x)
    if name.startswith("MobileNet"):   # every BatchNormalization follows a convolution
        assert "batchnorm2d" not in ops_of(report)
    else:                              # DenseNet normalises concatenations (pre-activation)
        assert any("BatchNormalization folded" in n for n in report.notes)


def test_resnet_stem_padding_folds_into_conv_and_pool(tmp_path):
    model = randomize(resnet(), seed=3)
    report, _ = check(model, tmp_path)
    folded = [n for n in report.notes if "ZeroPadding2D" in n and "folded" in n]
    assert len(folded) == 2   # into the 7x7 conv, and into the max pool after a ReLU
    assert not any("identity" in n for n in report.notes)
    first = report.graph.nodes[0]
    assert first.op == "conv2d" and list(first.attrs["padding"]) == [3, 3, 3, 3]


def test_sequential_and_functional_give_the_same_graph(tmp_path):
    seq = randomize(lenet(), seed=5)
    inp = keras.Input((28, 28, 1))
    x = inp
    for layer in seq.layers:
        x = layer(x)
    fun = keras.Model(inp, x)
    x = np.random.default_rng(2).standard_normal((2, 28, 28, 1)).astype(np.float32)
    _, a = check(seq, tmp_path, name="seq.h5", x=x)
    _, b = check(fun, tmp_path, name="fun.h5", x=x)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


# --------------------------------------------------------------------------
# Layers and their options
# --------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(7, 9), (6, 5)])
def test_flatten_then_dense_permutes_weights(hw, tmp_path):
    model = randomize(keras.Sequential([
        keras.Input(hw + (3,)),
        L.Conv2D(5, 3, activation="relu"),
        L.Flatten(),
        L.Dense(7),
    ]), seed=11)
    report, _ = check(model, tmp_path)
    assert any("permuted" in n for n in report.notes)


def test_flatten_of_one_pixel_needs_no_permutation(tmp_path):
    model = randomize(keras.Sequential([
        keras.Input((4, 4, 3)), L.Conv2D(6, 4), L.Flatten(), L.Dense(5)]), seed=12)
    report, _ = check(model, tmp_path)
    assert not any("permuted" in n for n in report.notes)


def test_flatten_dropout_batchnorm_then_dense(tmp_path):
    """The flattening order survives layers in between (BN statistics are permuted too)."""
    model = randomize(keras.Sequential([
        keras.Input((5, 6, 2)), L.Conv2D(3, 2), L.Flatten(), L.Dropout(0.2),
        L.BatchNormalization(), L.LeakyReLU(negative_slope=0.1), L.Dense(4)]), seed=13)
    report, _ = check(model, tmp_path)
    assert "batchnorm2d" in ops_of(report)


@pytest.mark.parametrize("size", [15, 16])
@pytest.mark.parametrize("kernel", [3, 4])
def test_same_padding_stride_2(size, kernel, tmp_path):
    """TensorFlow 'same' puts the extra padding cell at the bottom and right."""
    inp = keras.Input((size, size + 1, 4))
    a = L.Conv2D(5, kernel, strides=2, padding="same")(inp)
    b = L.DepthwiseConv2D(kernel, strides=2, padding="same", depth_multiplier=2)(inp)
    c = L.Conv2D(8, 1)(L.MaxPooling2D(kernel, strides=2, padding="same")(inp))
    out = L.Concatenate()([L.Conv2D(8, 1)(a), b, c])
    model = randomize(keras.Model(inp, out), seed=size + kernel)
    report, net = check(model, tmp_path)
    assert net.output_shape == (24, -(-size // 2), -(-(size + 1) // 2))
    total = max((-(-size // 2) - 1) * 2 + kernel - size, 0)
    assert report.graph.nodes[0].attrs["padding"][0::2] == (total // 2, total - total // 2)


def tf_same_average_pool(x, k, s):
    """Float64 'same' average pooling as TensorFlow defines it: padding cells are not counted."""
    n, H, W, C = x.shape
    H2, W2 = -(-H // s), -(-W // s)
    top = max((H2 - 1) * s + k - H, 0) // 2
    left = max((W2 - 1) * s + k - W, 0) // 2
    out = np.zeros((n, H2, W2, C))
    for i in range(H2):
        rows = slice(max(i * s - top, 0), min(i * s - top + k, H))
        for j in range(W2):
            cols = slice(max(j * s - left, 0), min(j * s - left + k, W))
            out[:, i, j] = x[:, rows, cols].astype(np.float64).mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("pool,stride,size", [(3, 1, 9), (3, 2, 11), (3, 2, 12), (2, 2, 9),
                                              (4, 2, 9), (2, 1, 8), (5, 3, 10)])
def test_average_pooling_same_excludes_padding(pool, stride, size, tmp_path):
    model = keras.Sequential([keras.Input((size, size + 1, 3)),
                              L.AveragePooling2D(pool, strides=stride, padding="same")])
    src = save(model, tmp_path)
    from_keras(src, tmp_path / "pool.h5")
    # a positive input makes any padding counted in the mean visible
    x = np.random.default_rng(1).uniform(1.0, 2.0, (2, size, size + 1, 3)).astype(np.float32)
    ref = tf_same_average_pool(x, pool, stride)
    assert_close(cnnrt.load(tmp_path / "pool.h5").predict(x), ref.transpose(0, 3, 1, 2))
    totals = [max((-(-n // stride) - 1) * stride + pool - n, 0) for n in (size, size + 1)]
    if all(t % 2 == 0 for t in totals):
        # symmetric padding: Keras' own result is the same on every backend (with
        # uneven padding Keras' torch backend repeats the edge values into the mean)
        assert_close(keras_output(model, x), ref.transpose(0, 3, 1, 2))


def test_batchnorm_variants(tmp_path):
    inp = keras.Input((10, 10, 3))
    x = L.BatchNormalization(epsilon=0.01)(inp)                      # on the input: a node
    x = L.Conv2D(6, 3, activation="relu")(x)
    x = L.BatchNormalization(center=False)(x)                         # after a fused relu: a node
    y = L.Conv2D(6, 3, padding="same")(x)
    z = L.BatchNormalization(scale=False)(y)                          # conv read twice: a node
    w = L.Conv2D(6, 1)(y)
    x = L.Add()([z, w])
    x = L.DepthwiseConv2D(3)(x)
    x = L.BatchNormalization(center=False, scale=False)(x)            # folded into depthwise
    x = L.GlobalMaxPooling2D()(x)
    x = L.Dense(8)(x)
    x = L.BatchNormalization()(x)                                     # folded into dense
    model = randomize(keras.Model(inp, x), seed=21)
    report, _ = check(model, tmp_path)
    assert ops_of(report).count("batchnorm2d") == 3
    assert sum("BatchNormalization folded" in n for n in report.notes) == 2


def test_batchnorm_not_folded_into_a_conv_read_elsewhere_through_dropout(tmp_path):
    inp = keras.Input((8, 8, 3))
    c = L.Conv2D(4, 3, padding="same")(inp)
    b = L.BatchNormalization()(L.Dropout(0.5)(c))
    c2 = L.Conv2D(4, 3, padding="same")(inp)
    b2 = L.BatchNormalization()(L.Dropout(0.5)(c2))     # the only reader: folded
    model = randomize(keras.Model(inp, L.Add()([c, b, b2])), seed=22)
    report, _ = check(model, tmp_path)
    assert ops_of(report).count("batchnorm2d") == 1


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_dilation(padding, tmp_path):
    model = randomize(keras.Sequential([
        keras.Input((17, 16, 3)),
        L.Conv2D(6, 3, dilation_rate=2, padding=padding, activation="relu"),
        L.DepthwiseConv2D(3, dilation_rate=(2, 3), padding=padding),
        L.Conv2D(4, (2, 3), dilation_rate=(3, 1), padding=padding),
    ]), seed=31)
    report, net = check(model, tmp_path)
    assert list(report.graph.nodes[0].attrs["dilation"]) == [2, 2]


def test_zero_padding(tmp_path):
    inp = keras.Input((12, 11, 3))
    a = L.ZeroPadding2D(((1, 2), (0, 3)))(inp)                    # 15 x 14
    a = L.Conv2D(4, 3)(a)                                          # folded into the conv: 13 x 12
    b = L.ZeroPadding2D(2)(inp)                                    # 16 x 15
    b = L.MaxPooling2D(3, strides=1)(b)                            # signed input: kept, 14 x 13
    b = L.Conv2D(4, 2)(b)                                          # 13 x 12
    c = L.ZeroPadding2D((1, 2))(inp)                               # 14 x 15
    c = L.AveragePooling2D(3, strides=1)(c)                        # zeros counted: folded, 12 x 13
    c = L.ZeroPadding2D(((1, 0), (0, 0)))(c)                       # 13 x 13
    c = L.Conv2D(4, (1, 2))(c)                                     # folded: 13 x 12
    out = L.Concatenate()([a, b, c])
    model = randomize(keras.Model(inp, out), seed=41)
    report, _ = check(model, tmp_path)
    notes = " ".join(report.notes)
    assert notes.count("ZeroPadding2D") == 4
    assert notes.count("identity") == 1


def test_zero_padding_as_output_and_shared(tmp_path):
    inp = keras.Input((6, 5, 2))
    p = L.ZeroPadding2D(((1, 0), (2, 1)))(inp)
    x = L.Add()([L.Conv2D(2, 1)(p), p])
    model = randomize(keras.Model(inp, L.ZeroPadding2D(1)(x)), seed=42)
    report, net = check(model, tmp_path)
    assert net.output_shape == (2, 9, 10)


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling(keepdims, tmp_path):
    inp = keras.Input((9, 7, 5))
    a = L.GlobalMaxPooling2D(keepdims=keepdims)(inp)
    b = L.GlobalAveragePooling2D(keepdims=keepdims)(L.Conv2D(5, 3)(inp))
    out = L.Add()([a, b])
    model = randomize(keras.Model(inp, out), seed=51)
    _, net = check(model, tmp_path)
    assert net.output_shape == ((5, 1, 1) if keepdims else (5,))


ACTIVATION_LAYERS = {
    "relu": lambda: L.Activation("relu"),
    "relu6": lambda: L.Activation("relu6"),
    "sigmoid": lambda: L.Activation("sigmoid"),
    "tanh": lambda: L.Activation("tanh"),
    "softmax": lambda: L.Activation("softmax"),
    "linear": lambda: L.Activation("linear"),
    "leaky_relu": lambda: L.Activation("leaky_relu"),
    "ReLU": lambda: L.ReLU(),
    "ReLU_max": lambda: L.ReLU(max_value=1.5),
    "ReLU_slope": lambda: L.ReLU(negative_slope=0.1),
    "ReLU_slope_max": lambda: L.ReLU(max_value=2.0, negative_slope=0.3),
    "LeakyReLU": lambda: L.LeakyReLU(),
    "LeakyReLU_slope": lambda: L.LeakyReLU(negative_slope=0.05),
    "Softmax": lambda: L.Softmax(),
}


@pytest.mark.parametrize("kind", sorted(ACTIVATION_LAYERS))
def test_activation_layers(kind, tmp_path):
    model = randomize(keras.Sequential([
        keras.Input((6, 6, 3)), L.Conv2D(4, 3), ACTIVATION_LAYERS[kind](),
        L.Conv2D(3, 1)]), seed=61)
    x = 3 * np.random.default_rng(3).standard_normal((2, 6, 6, 3)).astype(np.float32)
    check(model, tmp_path, x=x)


@pytest.mark.parametrize("activation", ["relu", "relu6", "sigmoid", "tanh", "softmax",
                                        "leaky_relu", "linear"])
def test_layer_activations(activation, tmp_path):
    model = randomize(keras.Sequential([
        keras.Input((6, 7, 3)), L.Conv2D(4, 3, activation=activation),
        L.DepthwiseConv2D(2, activation=activation), L.Flatten(),
        L.Dense(5, activation=activation)]), seed=62)
    x = 3 * np.random.default_rng(4).standard_normal((2, 6, 7, 3)).astype(np.float32)
    check(model, tmp_path, x=x)


def test_grouped_separable_and_dense_on_image(tmp_path):
    model = randomize(keras.Sequential([
        keras.Input((10, 10, 4)),
        L.Conv2D(6, 3, groups=2, padding="same", activation="relu"),
        L.SeparableConv2D(8, 3, strides=2, padding="same", depth_multiplier=2, activation="relu"),
        L.Dense(5),                     # acts on the channels of every pixel
        L.MaxPooling2D(),
    ]), seed=71)
    report, net = check(model, tmp_path)
    assert net.output_shape == (5, 2, 2)


def test_rescaling_and_reshape_head(tmp_path):
    """Keras 2 MobileNet's head: pooled vector -> Reshape((1, 1, C)) -> 1x1 conv -> Reshape((K,))."""
    inp = keras.Input((12, 12, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = L.Rescaling([0.5, 1.0, 2.0], offset=[0.0, 0.1, -0.1])(x)
    x = L.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Reshape((1, 1, 8))(x)
    x = L.Dropout(0.1)(x)
    x = L.Conv2D(5, 1)(x)
    x = L.Reshape((5,))(x)
    model = randomize(keras.Model(inp, L.Activation("softmax")(x)), seed=74)
    x = np.random.default_rng(5).uniform(0, 255, (2, 12, 12, 3)).astype(np.float32)
    report, net = check(model, tmp_path, x=x)
    assert net.output_shape == (5,)
    assert ops_of(report).count("flatten") == 1     # the flatten undone by Reshape is dropped


@pytest.mark.parametrize("kind", ["given", "adapted", "inverted"])
def test_normalization(kind, tmp_path):
    rng = np.random.default_rng(12)
    if kind == "adapted":
        norm = L.Normalization()
        norm.adapt(rng.uniform(0, 5, (20, 6, 6, 3)).astype(np.float32))
    else:
        norm = L.Normalization(mean=[1.0, 2.0, 3.0], variance=[0.5, 4.0, 9.0], invert=kind == "inverted")
    model = randomize(keras.Sequential([keras.Input((6, 6, 3)), norm, L.Conv2D(4, 3)]), seed=75)
    report, _ = check(model, tmp_path)
    assert any("Normalization" in n for n in report.notes)


def test_reshape_that_reorders_refused(tmp_path):
    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, L.Reshape((8, 6), name="shuffle")(L.Conv2D(3, 1)(inp)))
    refuse(save(model, tmp_path), tmp_path, match="Reshape layer 'shuffle'")


def test_shared_layer_called_twice(tmp_path):
    inp = keras.Input((9, 9, 3))
    shared = L.Conv2D(3, 3, padding="same", activation="relu", name="shared")
    x = shared(inp)
    y = shared(L.BatchNormalization()(x))
    out = L.GlobalMaxPooling2D()(L.Add()([x, y]))
    model = randomize(keras.Model(inp, out), seed=72)
    report, _ = check(model, tmp_path)
    assert ops_of(report).count("conv2d") == 2


def nested_model():
    """A functional model using a functional backbone (twice) and a Sequential head."""
    bi = keras.Input((10, 10, 3))
    b = L.ZeroPadding2D(1)(bi)
    b = L.Conv2D(6, 3, use_bias=False, name="c1")(b)
    b = L.BatchNormalization(name="bn")(b)
    b = L.ReLU()(b)
    b = L.DepthwiseConv2D(3, padding="same", name="dw")(b)
    backbone = keras.Model(bi, b, name="backbone")
    head = keras.Sequential([keras.Input((10, 10, 6)), L.Conv2D(4, 1, name="c1"),
                             L.BatchNormalization(name="bn"), L.GlobalAveragePooling2D()],
                            name="head")
    inp = keras.Input((10, 10, 3))
    x = backbone(inp)
    y = backbone(L.Activation("tanh")(inp))      # the same weights on a second branch
    x = head(L.Add()([x, y]))
    return keras.Model(inp, L.Dense(3, activation="softmax", name="fc")(x))


def test_nested_models_are_inlined(tmp_path):
    model = randomize(nested_model(), seed=73)
    report, _ = check(model, tmp_path)
    names = [n.name for n in report.graph.nodes]
    assert "backbone/c1" in names and "backbone_1/c1" in names and "head/c1" in names
    assert "batchnorm2d" not in ops_of(report)


def test_nested_unsupported_layer_is_named(tmp_path):
    inner = keras.Sequential([keras.Input((8, 8, 3)), L.Lambda(lambda t: -t, name="neg")], name="inner")
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Conv2D(2, 3)(inner(inp)))
    err = refuse(save(model, tmp_path), tmp_path, UnsupportedOpsError)
    assert err.unsupported == [("Lambda", "neg")]


# --------------------------------------------------------------------------
# Keras 2 layout, chunked attributes, other weight naming
# --------------------------------------------------------------------------

def small_functional():
    inp = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.BatchNormalization()(y)
    x = L.Add()([x, y])
    x = L.Concatenate()([x, L.Conv2D(4, 1, activation="relu")(x)])
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(6, activation="softmax")(x))


@pytest.mark.parametrize("kind", ["functional", "sequential", "sequential_no_input_layer", "nested"])
def test_keras2_layout_converts_identically(kind, tmp_path):
    model = {"functional": small_functional, "nested": nested_model}.get(kind, lenet)()
    randomize(model, seed=81)
    src = save(model, tmp_path)
    k2 = str(tmp_path / "keras2.h5")
    to_keras2(src, k2, drop_input_layer=(kind == "sequential_no_input_layer"))
    with h5py.File(k2, "r") as fh:
        assert fh.attrs["keras_version"].startswith("2.")
        names = [n.decode() for n in fh["model_weights"].attrs["layer_names"]]
        group = fh["model_weights"][names[1]]
        assert all(n.decode().endswith(":0") for n in group.attrs["weight_names"])
    a = from_keras(src, tmp_path / "a.h5")
    b = from_keras(k2, tmp_path / "b.h5")
    assert ops_of(a) == ops_of(b)
    x = np.random.default_rng(8).standard_normal((2,) + tuple(model.input_shape[1:])).astype(np.float32)
    ya = cnnrt.load(tmp_path / "a.h5").predict(x)
    np.testing.assert_array_equal(ya, cnnrt.load(tmp_path / "b.h5").predict(x))
    assert_close(ya, keras_output(model, x))


def test_keras3_vars_weight_paths(tmp_path):
    """Weights stored under ``<layer>/vars/<i>`` are read in Keras' order."""
    model = randomize(small_functional(), seed=82)
    src = save(model, tmp_path)
    alt = str(tmp_path / "vars.h5")
    to_keras2(src, alt, style="vars")
    x = np.random.default_rng(9).standard_normal((2, 12, 12, 3)).astype(np.float32)
    from_keras(alt, tmp_path / "c.h5")
    assert_close(cnnrt.load(tmp_path / "c.h5").predict(x), keras_output(model, x))


def test_nested_weights_without_layer_names_refused(tmp_path):
    """In a nested model's group, weights that do not name their layer cannot be assigned safely."""
    src = save(randomize(nested_model(), seed=84), tmp_path)
    alt = str(tmp_path / "vars.h5")
    to_keras2(src, alt, style="vars")
    refuse(alt, tmp_path, match="layer 'c1' \\(in model 'backbone'\\): cannot tell its weights apart")


@pytest.mark.parametrize("layout", ["keras3", "keras2"])
def test_chunked_name_attributes(layout, tmp_path):
    model = randomize(small_functional(), seed=83)
    src = save(model, tmp_path)
    if layout == "keras2":
        to_keras2(src, str(tmp_path / "k2.h5"))
        src = str(tmp_path / "k2.h5")
    with h5py.File(src, "r") as fh:
        layer_names = list(fh["model_weights"].attrs["layer_names"])
        conv = layer_names[1]
        conv = conv.decode() if isinstance(conv, bytes) else conv
    chunked = str(tmp_path / "chunked.h5")
    with open(src, "rb") as fi, open(chunked, "wb") as fo:
        fo.write(fi.read())
    with h5py.File(chunked, "r+") as fh:
        chunk_attribute(fh["model_weights"], "layer_names", 3)
        for name in fh["model_weights"]:
            if "weight_names" in fh["model_weights"][name].attrs:
                chunk_attribute(fh["model_weights"][name], "weight_names", 2)
        assert "layer_names" not in fh["model_weights"].attrs
        assert "layer_names2" in fh["model_weights"].attrs
        assert "weight_names1" in fh["model_weights"][conv].attrs
    x = np.random.default_rng(10).standard_normal((2, 12, 12, 3)).astype(np.float32)
    from_keras(src, tmp_path / "plain.h5")
    from_keras(chunked, tmp_path / "chunked_out.h5")
    y = cnnrt.load(tmp_path / "plain.h5").predict(x)
    np.testing.assert_array_equal(y, cnnrt.load(tmp_path / "chunked_out.h5").predict(x))
    assert_close(y, keras_output(model, x))


# --------------------------------------------------------------------------
# Refusals: one clear error, nothing written
# --------------------------------------------------------------------------

def refuse(src, tmp_path, error=ConversionError, match=None):
    dst = tmp_path / "out" / "never.h5"
    dst.parent.mkdir(exist_ok=True)
    with pytest.raises(error, match=match) as info:
        from_keras(src, dst)
    assert not dst.exists()
    assert os.listdir(dst.parent) == []          # no temporary file left behind
    assert not isinstance(info.value, KeyError)
    return info.value


def edit_config(src, dst, edit):
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.write(fi.read())
    with h5py.File(dst, "r+") as fh:
        config = json.loads(fh.attrs["model_config"])
        edit(config)
        fh.attrs["model_config"] = json.dumps(config)
    return dst


def test_lambda_and_unknown_layers_listed_together(tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3),
                              L.Lambda(lambda t: t * 2, name="double"), L.Conv2D(4, 3, name="c2"),
                              L.Conv2D(2, 1, name="c3")])
    src = save(model, tmp_path)

    def edit(config):
        layers = config["config"]["layers"]
        layers[3]["class_name"] = "MyFancyLayer"
        layers[4]["config"]["activation"] = "gelu"
    edited = edit_config(src, str(tmp_path / "edited.h5"), edit)
    err = refuse(edited, tmp_path, UnsupportedOpsError)
    assert set(err.unsupported) == {("Lambda", "double"), ("MyFancyLayer", "c2"),
                                    ("Conv2D with activation 'gelu'", "c3")}
    assert "Lambda ('double')" in str(err) and "MyFancyLayer ('c2')" in str(err)


def test_lambda_functional(tmp_path):
    inp = keras.Input((8, 8, 3))
    x = L.Lambda(lambda t: t + 1, name="plus_one")(inp)
    model = keras.Model(inp, L.Conv2D(2, 3)(x))
    err = refuse(save(model, tmp_path), tmp_path, UnsupportedOpsError)
    assert err.unsupported == [("Lambda", "plus_one")]


def test_unsupported_options(tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv"),
                              L.ReLU(threshold=0.5, name="thr"), L.Activation("gelu", name="act")])
    err = refuse(save(model, tmp_path), tmp_path, UnsupportedOpsError)
    assert [n for _, n in err.unsupported] == ["thr", "act"]


def test_channels_first_refused(tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv"), L.Flatten()])
    src = save(model, tmp_path)

    def edit(config):
        config["config"]["layers"][1]["config"]["data_format"] = "channels_first"
    err = refuse(edit_config(src, str(tmp_path / "cf.h5"), edit), tmp_path, UnsupportedOpsError)
    assert "channels_first" in str(err) and "conv" in str(err)


def test_concatenate_other_axis_refused(tmp_path):
    inp = keras.Input((8, 8, 3))
    out = L.Concatenate(axis=1, name="cat")([L.Conv2D(2, 1)(inp), L.Conv2D(2, 1)(inp)])
    refuse(save(keras.Model(inp, out), tmp_path), tmp_path, match="Concatenate layer 'cat'.*axis")


def test_missing_and_wrong_weights(tmp_path):
    model = randomize(keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv"),
                                        L.Flatten(), L.Dense(3, name="fc")]))
    src = save(model, tmp_path)
    missing = str(tmp_path / "missing.h5")
    wrong = str(tmp_path / "wrong.h5")
    nogroup = str(tmp_path / "nogroup.h5")
    for path in (missing, wrong, nogroup):
        with open(src, "rb") as fi, open(path, "wb") as fo:
            fo.write(fi.read())
    with h5py.File(missing, "r+") as fh:
        group = fh["model_weights/conv"]
        name = [n for n in group.attrs["weight_names"] if str(n).endswith("kernel")][0]
        del group[name]
    with h5py.File(wrong, "r+") as fh:
        group = fh["model_weights/fc"]
        name = [n for n in group.attrs["weight_names"] if str(n).endswith("kernel")][0]
        del group[name]
        group.create_dataset(name, data=np.zeros((100, 3), np.float32))
    with h5py.File(nogroup, "r+") as fh:
        del fh["model_weights/fc"]
    refuse(missing, tmp_path, match=r"weight '.*conv/kernel' of Conv2D layer 'conv' is missing")
    refuse(wrong, tmp_path, match=r"Dense layer 'fc': kernel has shape \[100, 3\], expected \[144, 3\]")
    refuse(nogroup, tmp_path, match=r"weights of Dense layer 'fc' are missing")


def test_external_weights_refused(tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv")])
    src = save(model, tmp_path)
    other = str(tmp_path / "elsewhere.h5")
    with h5py.File(other, "w") as fh:
        fh.create_dataset("kernel", data=np.zeros((3, 3, 3, 4), np.float32))
    with h5py.File(src, "r+") as fh:
        group = fh["model_weights/conv"]
        name = [n for n in group.attrs["weight_names"] if str(n).endswith("kernel")][0]
        del group[name]
        group[name] = h5py.ExternalLink(other, "/kernel")
    refuse(src, tmp_path, match="outside the file")


def test_bad_files(tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3)])
    src = save(model, tmp_path)
    bad_json = str(tmp_path / "bad_json.h5")
    no_config = str(tmp_path / "no_config.h5")
    for path in (bad_json, no_config):
        with open(src, "rb") as fi, open(path, "wb") as fo:
            fo.write(fi.read())
    with h5py.File(bad_json, "r+") as fh:
        fh.attrs["model_config"] = '{"class_name": "Sequential", "config": {'
    with h5py.File(no_config, "r+") as fh:
        del fh.attrs["model_config"]
    refuse(bad_json, tmp_path, match="not valid JSON")
    refuse(no_config, tmp_path, match="no 'model_config'")

    other = str(tmp_path / "other.h5")
    with h5py.File(other, "w") as fh:
        fh.create_dataset("data", data=np.arange(10))
    refuse(other, tmp_path, match="not a Keras model file")

    native = str(tmp_path / "model.keras")
    model.save(native)
    refuse(native, tmp_path, match="zip archive")

    text = tmp_path / "text.h5"
    text.write_text("hello, not HDF5\n")
    refuse(str(text), tmp_path, match="not a readable HDF5 file")
    refuse(str(tmp_path / "absent.h5"), tmp_path, match="no such file")

    cnnrt_file = str(tmp_path / "conv.cnnrt.h5")
    from_keras(src, cnnrt_file)
    refuse(cnnrt_file, tmp_path, match="already a cnnrt model")

    weights_only = str(tmp_path / "w.weights.h5")
    with h5py.File(weights_only, "w") as fh:
        fh.attrs["layer_names"] = np.array([b"conv2d"])
    refuse(weights_only, tmp_path, match="weights only")


def test_malformed_configs(tmp_path):
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Conv2D(2, 3, name="conv")(inp))
    src = save(model, tmp_path)

    def dangling(config):
        config["config"]["layers"][1]["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0] = "ghost"

    def free_size(config):
        config["config"]["layers"][0]["config"]["batch_shape"] = [None, None, None, 3]

    def flat_input(config):
        config["config"]["layers"][0]["config"]["batch_shape"] = [None, 12]

    def bad_class(config):
        config["class_name"] = "Subclassed"

    refuse(edit_config(src, str(tmp_path / "a.h5"), dangling), tmp_path, match="ghost")
    refuse(edit_config(src, str(tmp_path / "b.h5"), free_size), tmp_path, match="not a fixed image shape")
    refuse(edit_config(src, str(tmp_path / "c.h5"), flat_input), tmp_path, match="not a fixed image shape")
    refuse(edit_config(src, str(tmp_path / "d.h5"), bad_class), tmp_path, UnsupportedOpsError,
           match="Subclassed")


def test_two_inputs_refused(tmp_path):
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    model = keras.Model([a, b], L.Add()([a, b]))
    refuse(save(model, tmp_path), tmp_path, match="2 inputs")


def test_is_keras_file(tmp_path):
    src = save(keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(2, 3)]), tmp_path)
    assert is_keras_file(src)
    from_keras(src, tmp_path / "c.h5")
    assert not is_keras_file(tmp_path / "c.h5")
    (tmp_path / "t.txt").write_text("text")
    assert not is_keras_file(tmp_path / "t.txt")
    assert not is_keras_file(tmp_path / "absent.h5")


def _mutate(obj, rng):
    """Delete or replace one random entry somewhere inside a JSON value."""
    spots = []

    def walk(o):
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            spots.append((o, k))
            walk(v)
    walk(obj)
    holder, key = spots[rng.integers(len(spots))]
    if isinstance(holder, dict) and rng.random() < 0.4:
        del holder[key]
    else:
        choices = [None, 0, -1, 2.5, "x", [], {}, [1], ["a", 0, 0], True, 10 ** 9]
        holder[key] = choices[rng.integers(len(choices))]


@pytest.mark.parametrize("build", [nested_model, lenet])
def test_damaged_configs_raise_conversion_errors_only(build, tmp_path):
    """Random damage to the model config ends in ConversionError or a valid model, never a crash."""
    src = save(randomize(build(), seed=91), tmp_path)
    with h5py.File(src, "r") as fh:
        original = fh.attrs["model_config"]
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(150):
        config = json.loads(original)
        for _ in range(rng.integers(1, 4)):
            _mutate(config, rng)
        with h5py.File(src, "r+") as fh:
            fh.attrs["model_config"] = json.dumps(config)
        try:
            from_keras(src, None)
        except ConversionError:
            refused += 1
    assert refused > 50
