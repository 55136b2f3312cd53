"""ONNX and PyTorch converters against the source frameworks.

Networks of every family are built in PyTorch with random weights (and
non-trivial batch-norm statistics), exported to ONNX, converted, and run by
cnnrt; onnxruntime and torch are the references (1e-4 relative).  Single
operators are built with onnx.helper at opsets 9 to 21 to cover every
attribute variant.  Then the round trip cnnrt -> ONNX -> cnnrt, and the
refusals.
"""
import io
import warnings
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cnnrt  # noqa: E402
from cnnrt.convert import (ConversionError, UnsupportedOpsError, from_onnx,  # noqa: E402
                           from_torch, to_onnx)
from cnnrt.format import Graph, node, write_model  # noqa: E402

from conftest import assert_close  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(os.path.dirname(HERE), "models")


def ort_run(model_bytes, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def export(module, x, opset=17):
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    return buf.getvalue()


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


# ---------------------------------------------------------------- families

def conv_bn(cin, cout, k, s=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = nn.Linear(16 * 4 * 4, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.tanh(self.c1(x)), 2)
        x = F.avg_pool2d(torch.sigmoid(self.c2(x)), 2)
        x = x.view(x.size(0), -1)
        return F.softmax(self.f3(F.relu(self.f2(F.relu(self.f1(x))))), dim=1)


class AlexNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(16, 24, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(),
                                        nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in [8, "M", 16, 16, "M", 32, 32, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class Basic(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        self.c1, self.c2 = conv_bn(cin, cout, 3, s), conv_bn(cout, cout, 3, 1, act=nn.Identity)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout))
                     if s != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.c2(self.c1(x)) + self.down(x))


class ResNet18(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv_bn(3, w, 7, 2), nn.MaxPool2d(3, 2, 1))
        cfg = [(w, w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1),
               (2 * w, 4 * w, 2), (4 * w, 4 * w, 1), (4 * w, 8 * w, 2), (8 * w, 8 * w, 1)]
        self.blocks = nn.Sequential(*[Basic(a, b, s) for a, b, s in cfg])
        self.fc = nn.Linear(8 * w, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MobileNetV1(nn.Module):
    def __init__(self):
        super().__init__()
        cfg = [(8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]
        layers = [conv_bn(3, 8, 3, 2)]
        for cin, cout, s in cfg:
            layers += [conv_bn(cin, cin, 3, s, groups=cin), conv_bn(cin, cout, 1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class Inverted(nn.Module):
    def __init__(self, cin, cout, s, t):
        super().__init__()
        h = cin * t
        self.body = nn.Sequential(conv_bn(cin, h, 1, act=nn.ReLU6), conv_bn(h, h, 3, s, groups=h, act=nn.ReLU6),
                                  conv_bn(h, cout, 1, act=nn.Identity))
        self.res = s == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.res else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 3, 2, act=nn.ReLU6), Inverted(8, 8, 1, 1),
                                      Inverted(8, 12, 2, 6), Inverted(12, 12, 1, 6),
                                      Inverted(12, 16, 2, 6), Inverted(16, 16, 1, 6),
                                      conv_bn(16, 64, 1, act=nn.ReLU6))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.features(x).mean((2, 3))
        return self.fc(x)


class Fire(nn.Module):
    def __init__(self, cin, s, e):
        super().__init__()
        self.sq, self.e1, self.e3 = nn.Conv2d(cin, s, 1), nn.Conv2d(s, e, 1), nn.Conv2d(s, e, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.sq(x))
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)


class SqueezeNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 4, 8), Fire(16, 4, 8),
                                      nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 8, 16))
        self.head = nn.Sequential(nn.Dropout(), nn.Conv2d(32, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.head(self.features(x)), 1)


class SamePadConv(nn.Module):
    """TensorFlow-style 'same' padding computed from the input size at run time."""

    def __init__(self, cin, cout, k, s, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.k, self.s = k, s

    def forward(self, x):
        h, w = x.shape[-2:]
        ph = max(((h + self.s - 1) // self.s - 1) * self.s + self.k - h, 0)
        pw = max(((w + self.s - 1) // self.s - 1) * self.s + self.k - w, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.relu6(self.bn(self.conv(x)))


class EfficientLite(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = SamePadConv(3, 8, 3, 2)
        self.blocks = nn.Sequential(
            SamePadConv(8, 8, 3, 1, groups=8), SamePadConv(8, 24, 1, 1),
            SamePadConv(24, 24, 5, 2, groups=24), SamePadConv(24, 16, 1, 1),
            SamePadConv(16, 48, 1, 1), SamePadConv(48, 48, 3, 2, groups=48), SamePadConv(48, 24, 1, 1))
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


FAMILIES = {
    "lenet": (LeNet, (1, 28, 28)),
    "alexnet": (AlexNetish, (3, 99, 99)),
    "vgg": (VGGish, (3, 32, 32)),
    "resnet18": (ResNet18, (3, 64, 64)),
    "mobilenet_v1": (MobileNetV1, (3, 48, 48)),
    "mobilenet_v2": (MobileNetV2, (3, 40, 40)),
    "squeezenet": (SqueezeNetish, (3, 47, 47)),
    "efficientnet_lite": (EfficientLite, (3, 45, 53)),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_matches_onnxruntime_and_torch(tmp_path, name):
    cls, shape = FAMILIES[name]
    torch.manual_seed(len(name))
    module = randomize(cls(), len(name))
    x = torch.randn((2,) + shape, generator=torch.Generator().manual_seed(1))
    data = export(module, x[:1])
    dst = tmp_path / f"{name}.h5"
    report = from_onnx(data, dst, input_shape=shape)
    model = cnnrt.load(dst)
    got = model.predict(x.numpy())
    with torch.no_grad():
        want_torch = module(x).numpy()
    assert_close(got, ort_run(data, x.numpy()))
    assert_close(got, want_torch)
    if name == "efficientnet_lite":
        # the run-time "same" padding chains are gone: plain padded convolutions
        assert any("constant nodes" in n for n in report.notes)
        assert any("folded Pad" in n for n in report.notes)
        assert {n.op for n in report.graph.nodes} <= {"conv2d", "clip", "globalavgpool",
                                                     "flatten", "dense", "relu"}


def test_from_torch_directly(tmp_path):
    module = randomize(MobileNetV2(), 3).train()  # converted in eval mode, then restored
    x = torch.randn(3, 3, 40, 40)
    report = from_torch(module, x[:1], tmp_path / "m.h5", labels=[str(i) for i in range(10)],
                        preprocess="imagenet")
    assert module.training
    module.eval()
    model = cnnrt.load(tmp_path / "m.h5")
    with torch.no_grad():
        assert_close(model.predict(x.numpy()), module(x).numpy())
    assert model.labels == [str(i) for i in range(10)]
    assert model.preprocess["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert report.source == "torch"


def test_from_torch_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="torch.nn.Module"):
        from_torch(object(), torch.zeros(1, 3, 8, 8), tmp_path / "x.h5")
    with pytest.raises(ValueError, match="4-D"):
        from_torch(nn.Conv2d(3, 3, 1), torch.zeros(3, 8, 8), tmp_path / "x.h5")
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------- single operators

def one_op_model(nodes, in_shape, opset, inits=(), out_shape=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(in_shape[1:]))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.asarray(v), k)
                                                  for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    return m


def check_model(tmp_path, m, in_shape, seed=0, input_shape=None, positive=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2,) + tuple(in_shape[1:])).astype(np.float32)
    if positive:
        x = np.abs(x) + 0.1
    data = m.SerializeToString()
    dst = tmp_path / "m.h5"
    report = from_onnx(data, dst, input_shape=input_shape)
    got = cnnrt.load(dst).predict(x)
    assert_close(got, ort_run(data, x))
    return report


def rw(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


CONV_CASES = [
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0]),
    dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]),
    dict(kernel_shape=[3, 3], group=4),
    dict(kernel_shape=[3, 3], group=8, strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[4, 4], strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID"),
]


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 21])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_attributes(tmp_path, opset, case):
    attrs = dict(CONV_CASES[case])
    group = attrs.get("group", 1)
    k = attrs["kernel_shape"]
    rng = np.random.default_rng(case)
    W, B = rw(rng, 8, 8 // group, *k), rw(rng, 8)
    m = one_op_model([helper.make_node("Conv", ["x", "W", "B"], ["y"], **attrs)],
                     [1, 8, 11, 10], opset, [("W", W), ("B", B)])
    check_model(tmp_path, m, [1, 8, 11, 10])


POOL_CASES = [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1)),
    ("LpPool", dict(kernel_shape=[2, 2], strides=[2, 2], p=2)),
    ("LpPool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], p=2)),
]


@pytest.mark.parametrize("opset", [10, 13, 19])
@pytest.mark.parametrize("case", range(len(POOL_CASES)))
def test_pool_attributes(tmp_path, opset, case):
    op, attrs = POOL_CASES[case]
    attrs = dict(attrs)
    m = one_op_model([helper.make_node(op, ["x"], ["y"], **attrs)], [1, 3, 12, 13], opset)
    check_model(tmp_path, m, [1, 3, 12, 13])


def test_global_pools_and_flatten_gemm(tmp_path):
    rng = np.random.default_rng(0)
    for pool in ("GlobalAveragePool", "GlobalMaxPool"):
        for alpha, beta, trans in [(1.0, 1.0, 1), (0.5, 2.0, 0)]:
            Wm = rw(rng, 4, 6) if trans else rw(rng, 6, 4)
            m = one_op_model([helper.make_node(pool, ["x"], ["p"]),
                              helper.make_node("Flatten", ["p"], ["f"], axis=1),
                              helper.make_node("Gemm", ["f", "W", "C"], ["y"], alpha=alpha, beta=beta,
                                               transB=trans)],
                             [1, 6, 5, 5], 11, [("W", Wm), ("C", rw(rng, 4))])
            check_model(tmp_path, m, [1, 6, 5, 5])


@pytest.mark.parametrize("opset", [9, 13])
def test_matmul_add_becomes_dense(tmp_path, opset):
    rng = np.random.default_rng(1)
    shape_c = np.array([0, -1], dtype=np.int64)
    m = one_op_model([helper.make_node("Reshape", ["x", "s"], ["f"]),
                      helper.make_node("MatMul", ["f", "W"], ["mm"]),
                      helper.make_node("Add", ["mm", "b"], ["y"])],
                     [1, 2, 3, 4], opset, [("W", rw(rng, 24, 5)), ("b", rw(rng, 5)), ("s", shape_c)])
    report = check_model(tmp_path, m, [1, 2, 3, 4])
    assert [n.op for n in report.graph.nodes] == ["flatten", "dense"]


@pytest.mark.parametrize("opset,as_inputs", [(9, False), (11, True), (13, True), (21, True)])
def test_clip_and_activations(tmp_path, opset, as_inputs):
    if as_inputs:
        clip = helper.make_node("Clip", ["a", "lo", "hi"], ["c"])
        inits = [("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.7, np.float32))]
    else:
        clip = helper.make_node("Clip", ["a"], ["c"], min=-0.5, max=0.7)
        inits = []
    m = one_op_model([helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.2), clip,
                      helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
                      helper.make_node("Relu", ["t"], ["y"])], [1, 3, 4, 5], opset, inits)
    check_model(tmp_path, m, [1, 3, 4, 5])


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_axis_semantics(tmp_path, opset):
    m = one_op_model([helper.make_node("Flatten", ["x"], ["f"]),
                      helper.make_node("Softmax", ["f"], ["y"], axis=1)], [1, 2, 3, 3], opset)
    check_model(tmp_path, m, [1, 2, 3, 3])
    # from opset 13 a single axis, here the channels of an image
    m = one_op_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [1, 4, 3, 3], 13)
    check_model(tmp_path, m, [1, 4, 3, 3])
    # before opset 13, axis 1 of an image means all of C, H, W: refused clearly
    m = one_op_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [1, 4, 3, 3], 11)
    with pytest.raises(ConversionError, match="normalises over axes"):
        from_onnx(m, tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("opset", [9, 11, 18])
def test_pad_folds_into_conv_and_avgpool(tmp_path, opset):
    rng = np.random.default_rng(2)
    pads = [0, 0, 1, 2, 0, 0, 2, 0]
    if opset < 11:
        pad = [helper.make_node("Pad", ["x"], ["p"], pads=pads, mode="constant")]
        inits = []
    else:
        pad = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant")]
        inits = [("pads", np.array(pads, np.int64))]
    m = one_op_model(pad + [helper.make_node("Conv", ["p", "W"], ["c"], kernel_shape=[3, 3]),
                            helper.make_node("Pad", ["c"] + (["pads"] if opset >= 11 else []), ["q"],
                                             **({"pads": pads} if opset < 11 else {})),
                            helper.make_node("AveragePool", ["q"], ["y"], kernel_shape=[3, 3],
                                             strides=[2, 2])],
                     [1, 3, 9, 8], opset, inits + [("W", rw(rng, 4, 3, 3, 3))])
    report = check_model(tmp_path, m, [1, 3, 9, 8])
    assert [n.op for n in report.graph.nodes] == ["conv2d", "avgpool2d"]
    assert sum("folded Pad" in n for n in report.notes) == 2


def test_batchnorm_folds_and_standalone(tmp_path):
    rng = np.random.default_rng(3)
    bn = [("g", rng.uniform(0.5, 1.5, 4)), ("b", rw(rng, 4)), ("m", rw(rng, 4)), ("v", rng.uniform(0.5, 2, 4))]
    bn = [(k, np.asarray(v, np.float32)) for k, v in bn]
    m = one_op_model([helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[1, 1]),
                      helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], epsilon=1e-3),
                      helper.make_node("Relu", ["n"], ["r"]),
                      helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["y"])],
                     [1, 3, 5, 5], 13, bn + [("W", rw(rng, 4, 3, 1, 1))])
    report = check_model(tmp_path, m, [1, 3, 5, 5])
    assert [n.op for n in report.graph.nodes] == ["conv2d", "relu", "batchnorm2d"]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("const_first", [False, True])
def test_arithmetic_with_constants(tmp_path, op, const_first):
    if op == "Div" and const_first:
        pytest.skip("a constant divided by an activation is refused (tested below)")
    rng = np.random.default_rng(4)
    c = (np.abs(rw(rng, 1, 3, 1, 1)) + 0.5).astype(np.float32)
    ins = ["c", "r"] if const_first else ["r", "c"]
    m = one_op_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ins, ["y"])],
                     [1, 3, 4, 4], 13, [("c", c)])
    check_model(tmp_path, m, [1, 3, 4, 4])


def test_concat_add_dropout_identity(tmp_path):
    rng = np.random.default_rng(5)
    m = one_op_model([helper.make_node("Conv", ["x", "W1"], ["a"], kernel_shape=[1, 1]),
                      helper.make_node("Conv", ["x", "W2"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                      helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
                      helper.make_node("Dropout", ["c"], ["d"]),
                      helper.make_node("Identity", ["d"], ["e"]),
                      helper.make_node("Add", ["e", "c"], ["y"])],
                     [1, 3, 6, 6], 13, [("W1", rw(rng, 2, 3, 1, 1)), ("W2", rw(rng, 3, 3, 3, 3))])
    check_model(tmp_path, m, [1, 3, 6, 6])


def test_dynamic_input_needs_input_shape(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ConversionError, match="dynamic shape.*input_shape"):
        from_onnx(m, tmp_path / "d.h5")
    report = from_onnx(m, tmp_path / "d.h5", input_shape=(3, 5, 6))
    assert report.graph.input_shape == (3, 5, 6)
    with pytest.raises(ConversionError, match="disagrees"):
        from_onnx(m, tmp_path / "e.h5", input_shape=(4, 5, 6))


def test_unsupported_operators_are_all_listed(tmp_path):
    m = one_op_model([helper.make_node("Relu", ["x"], ["a"], name="r"),
                      helper.make_node("Resize", ["a"], ["b"], name="up1"),
                      helper.make_node("Erf", ["b"], ["c"], name="erf1"),
                      helper.make_node("Resize", ["c"], ["y"], name="up2")], [1, 3, 4, 4], 13)
    dst = tmp_path / "u.h5"
    with pytest.raises(UnsupportedOpsError) as info:
        from_onnx(m, dst)
    msg = str(info.value)
    assert "Resize ('up1', 'up2')" in msg and "Erf ('erf1')" in msg
    assert info.value.unsupported == [("Resize", "up1"), ("Erf", "erf1"), ("Resize", "up2")]
    assert not dst.exists() and not os.listdir(tmp_path)


def test_bad_sources(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a protobuf at all" * 10)
    with pytest.raises(ConversionError, match="not an ONNX model"):
        from_onnx(junk, tmp_path / "o.h5")
    m = one_op_model([helper.make_node("Relu", ["x"], ["y"])], [1, 3, 4, 4], 8)
    with pytest.raises(ConversionError, match="opset 8"):
        from_onnx(m, tmp_path / "o.h5")
    m = one_op_model([helper.make_node("Relu", ["x"], ["y"])], [1, 3, 4, 4], 22)
    with pytest.raises(ConversionError, match="opset 22"):
        from_onnx(m, tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_existing_file_untouched_on_failure(tmp_path):
    dst = tmp_path / "keep.h5"
    dst.write_bytes(b"precious")
    m = one_op_model([helper.make_node("Erf", ["x"], ["y"])], [1, 3, 4, 4], 13)
    with pytest.raises(UnsupportedOpsError):
        from_onnx(m, dst)
    assert dst.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["keep.h5"]


# ---------------------------------------------------------------- export and round trip

def every_op_graph(layout="NCHW"):
    rng = np.random.default_rng(7)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [
        node("conv2d", "conv", ["input"], "c", {"weight": r(6, 3, 3, 3), "bias": r(6)}, kernel=(3, 3),
             stride=(1, 1), padding=(1, 0, 1, 2), dilation=(1, 1), groups=1, activation="relu6"),
        node("batchnorm2d", "bn", ["c"], "b", {"gamma": r(6), "beta": r(6), "mean": r(6),
                                              "var": np.abs(r(6)) + 0.5}, epsilon=1e-3),
        node("leaky_relu", "lrelu", ["b"], "l", alpha=0.1),
        node("maxpool2d", "mp", ["l"], "m", kernel=(2, 2), stride=(1, 1), padding=(0, 0, 1, 1)),
        node("avgpool2d", "ap", ["m"], "a", kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1),
             count_include_pad=0),
        node("l2pool2d", "lp", ["a"], "p", kernel=(2, 2), stride=(1, 1), padding=(0, 0, 0, 0)),
        node("locally_connected2d", "lc", ["p"], "lc", {"weight": r(8, 7, 4, 6, 2, 2), "bias": r(4, 8, 7)},
             kernel=(2, 2), stride=(1, 1), padding=(0, 0, 1, 1), dilation=(1, 1), groups=1,
             activation="tanh"),
        node("conv2d", "dw", ["lc"], "d", {"weight": r(4, 1, 3, 3)}, kernel=(3, 3), stride=(2, 2),
             padding=(1, 1, 1, 1), dilation=(1, 1), groups=4, activation="sigmoid"),
        node("clip", "clip", ["d"], "k", min=0.2, max=0.8),
        node("conv2d", "side", ["d"], "s", {"weight": r(4, 4, 1, 1)}, kernel=(1, 1), stride=(1, 1),
             padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, activation="none"),
        node("add", "add", ["k", "s", "d"], "sum"),
        node("concat", "cat", ["sum", "k"], "cat", axis=1),
        node("globalmaxpool", "gmp", ["cat"], "g"),
        node("relu", "relu", ["cat"], "rr"),
        node("globalavgpool", "gap", ["rr"], "ga"),
        node("concat", "cat2", ["g", "ga"], "gg", axis=-3),
        node("flatten", "flat", ["gg"], "f"),
        node("dense", "fc", ["f"], "fc", {"weight": r(5, 16), "bias": r(5)}, activation="tanh"),
        node("batchnorm2d", "bn1d", ["fc"], "fb", {"gamma": r(5), "beta": r(5), "mean": r(5),
                                                  "var": np.abs(r(5)) + 0.5}, epsilon=1e-3),
        node("sigmoid", "sig", ["fb"], "sg"),
        node("tanh", "th", ["sg"], "t"),
        node("softmax", "softmax", ["t"], "output", axis=1),
    ]
    return Graph(nodes, input_shape=(3, 9, 8), input_layout=layout, labels=list("abcde"))


@pytest.mark.parametrize("source", ["digits.h5", "demo.h5", "every_op_nchw", "every_op_nhwc"])
def test_round_trip(tmp_path, source):
    if source.endswith(".h5"):
        src = os.path.join(MODELS, source)
    else:
        src = tmp_path / "src.h5"
        write_model(src, every_op_graph("NHWC" if source.endswith("nhwc") else "NCHW"))
    model = cnnrt.load(src)
    rng = np.random.default_rng(0)
    x = rng.random((3,) + tuple(model.input_shape)).astype(np.float32)
    want = model.predict(x)
    onnx_path = tmp_path / "m.onnx"
    to_onnx(src, onnx_path)
    onnx.checker.check_model(onnx.load(onnx_path), full_check=True)
    assert_close(ort_run(onnx_path.read_bytes(), x), want)
    if source.startswith("every_op"):
        return  # locally_connected2d comes back as ONNX ops cnnrt does not import
    back = tmp_path / "back.h5"
    from_onnx(onnx_path, back)
    again = cnnrt.load(back)
    assert again.labels == model.labels
    assert_close(again.predict(x), want)


def test_cli(tmp_path, capsys):
    from cnnrt.convert.cli import main

    module = randomize(MobileNetV1(), 1)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(export(module, torch.zeros(1, 3, 32, 32)))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    dst = tmp_path / "m.h5"
    assert main([str(onnx_path), str(dst), "--labels", str(labels), "--preprocess", "imagenet"]) == 0
    out = capsys.readouterr().out
    assert "converted from onnx" in out and "labels: 10" in out
    model = cnnrt.load(dst)
    assert model.labels[3] == "class 3" and model.preprocess["color"] == "RGB"
    # and back out to ONNX
    assert main([str(dst), str(tmp_path / "back.onnx")]) == 0
    # errors: one line, exit 1, nothing written
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage" * 20)
    assert main([str(bad), str(tmp_path / "x.h5")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnnrt-convert: error:") and err.count("\n") == 1
    assert not (tmp_path / "x.h5").exists()
    assert main([str(onnx_path), str(tmp_path / "y.h5"), "--labels", str(tmp_path / "none.txt")]) == 1
    assert main([str(tmp_path / "missing.onnx"), str(tmp_path / "z.h5")]) == 1
    assert main([str(onnx_path)]) == 2
    assert main([str(onnx_path), str(tmp_path / "w.h5"), "--input-shape", "3,x"]) == 2
    assert main([str(onnx_path), str(tmp_path / "w.h5"), "--preprocess", "nonsense"]) == 2
    assert not (tmp_path / "w.h5").exists() and not (tmp_path / "y.h5").exists()


def test_cli_subprocess(tmp_path):
    import subprocess
    import sys

    # the cnnrt this test imported (installed, or built in place), not the source tree's
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(cnnrt.__file__)))
    dst = tmp_path / "digits.onnx"
    res = subprocess.run([sys.executable, "-m", "cnnrt.convert.cli", os.path.join(MODELS, "digits.h5"),
                          str(dst)], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert dst.exists()
    res = subprocess.run([sys.executable, "-m", "cnnrt.convert.cli", str(dst), str(tmp_path / "d.h5"),
                          "--preprocess", "bogus"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert res.returncode == 2 and res.stderr.startswith("cnnrt-convert: error:")
