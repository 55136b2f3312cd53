"""cnnrt model file -> ONNX.

Every cnnrt op maps onto standard ONNX operators of the chosen opset (13 or
later): conv2d -> Conv, dense -> Flatten + Gemm, pools -> MaxPool /
AveragePool / LpPool(p=2), batchnorm2d -> BatchNormalization (or Mul + Add
on flat tensors), fused activations -> Relu / Clip / Sigmoid / Tanh after the
node.  ``locally_connected2d`` becomes a fixed one-hot Conv that gathers each
position's taps, a Mul by the per-position weights and a ReduceSum.  A model
whose input layout is NHWC gets a Transpose at its input, so the ONNX model
takes what the cnnrt model takes.
"""
import numpy as np

from ..format import atomic_path, read_model, validate
from .errors import ConversionError


def export_onnx(src, dst, opset=17):
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ImportError('writing ONNX files needs the onnx package: pip install "cnnrt[convert]"') from None
    if not 13 <= int(opset) <= 21:
        raise ValueError(f"opset must be between 13 and 21, got {opset}")
    graph = read_model(src) if not hasattr(src, "nodes") else src
    shapes = validate(graph)
    nodes, inits = [], []
    counter = [0]

    def fresh(base):
        counter[0] += 1
        return f"{base}__{counter[0]}"

    def const(name, array, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def activation(out_name, tensor, act, where):
        if act in (None, "none"):
            return tensor
        if act == "relu":
            nodes.append(helper.make_node("Relu", [tensor], [out_name], name=f"{where}/relu"))
        elif act == "relu6":
            lo, hi = const(fresh("clip_min"), 0.0), const(fresh("clip_max"), 6.0)
            nodes.append(helper.make_node("Clip", [tensor, lo, hi], [out_name], name=f"{where}/relu6"))
        elif act == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", [tensor], [out_name], name=f"{where}/sigmoid"))
        elif act == "tanh":
            nodes.append(helper.make_node("Tanh", [tensor], [out_name], name=f"{where}/tanh"))
        else:
            raise ConversionError(f"node '{where}': activation '{act}' has no ONNX equivalent")
        return out_name

    inp = graph.inputs[0]
    c, h, w = graph.input_shape
    if graph.input_layout == "NHWC":
        onnx_in = helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N", h, w, c])
        internal = fresh("input_nchw")
        nodes.append(helper.make_node("Transpose", [inp], [internal], perm=[0, 3, 1, 2],
                                      name="input/to_nchw"))
        rename = {inp: internal}
    else:
        onnx_in = helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N", c, h, w])
        rename = {}

    def tin(name):
        return rename.get(name, name)

    for node in graph.nodes:
        a, wts = node.attrs, node.weights
        xs = [tin(i) for i in node.inputs]
        out = node.outputs[0]
        act = a.get("activation", "none")
        pre = out if act in (None, "none") else fresh(out + "_pre")
        op = node.op
        if op == "conv2d":
            ins = [xs[0], const(fresh(node.name + "/W"), wts["weight"])]
            if "bias" in wts:
                ins.append(const(fresh(node.name + "/B"), wts["bias"]))
            nodes.append(helper.make_node(
                "Conv", ins, [pre], name=node.name, kernel_shape=list(a["kernel"]),
                strides=list(a["stride"]), pads=list(a["padding"]), dilations=list(a["dilation"]),
                group=int(a["groups"])))
            activation(out, pre, act, node.name)
        elif op == "locally_connected2d":
            cin = shapes[node.inputs[0]][0]
            H2, W2, K, C, kh, kw = wts["weight"].shape
            # one-hot conv: output channel (c, ky, kx) copies input channel c at tap (ky, kx)
            eye = np.zeros((C * kh * kw, C, kh, kw), dtype=np.float32)
            for ci in range(C):
                for ky in range(kh):
                    for kx in range(kw):
                        eye[(ci * kh + ky) * kw + kx, ci, ky, kx] = 1.0
            patches = fresh(node.name + "_patches")
            nodes.append(helper.make_node(
                "Conv", [xs[0], const(fresh(node.name + "/gather"), eye)], [patches],
                name=node.name + "/patches", kernel_shape=[kh, kw], strides=list(a["stride"]),
                pads=list(a["padding"]), dilations=list(a["dilation"])))
            assert cin == C
            # patches [N, Q, H2, W2] -> [N, 1, Q, H2, W2]; weights [K, Q, H2, W2]
            wq = np.ascontiguousarray(wts["weight"].reshape(H2, W2, K, C * kh * kw).transpose(2, 3, 0, 1))
            p5 = fresh(node.name + "_p5")
            nodes.append(helper.make_node("Unsqueeze", [patches, const(fresh("axes"), [1], np.int64)],
                                          [p5], name=node.name + "/unsqueeze"))
            prod = fresh(node.name + "_prod")
            nodes.append(helper.make_node("Mul", [p5, const(fresh(node.name + "/W"), wq)], [prod],
                                          name=node.name + "/mul"))
            summed = pre if "bias" not in wts else fresh(node.name + "_sum")
            nodes.append(helper.make_node("ReduceSum", [prod, const(fresh("axes"), [2], np.int64)],
                                          [summed], keepdims=0, name=node.name + "/sum"))
            if "bias" in wts:
                nodes.append(helper.make_node("Add", [summed, const(fresh(node.name + "/B"), wts["bias"])],
                                              [pre], name=node.name + "/bias"))
            activation(out, pre, act, node.name)
        elif op == "dense":
            x = xs[0]
            if len(shapes[node.inputs[0]]) != 1:
                flat = fresh(node.name + "_flat")
                nodes.append(helper.make_node("Flatten", [x], [flat], axis=1, name=node.name + "/flatten"))
                x = flat
            ins = [x, const(fresh(node.name + "/W"), wts["weight"])]
            if "bias" in wts:
                ins.append(const(fresh(node.name + "/B"), wts["bias"]))
            nodes.append(helper.make_node("Gemm", ins, [pre], transB=1, name=node.name))
            activation(out, pre, act, node.name)
        elif op in ("maxpool2d", "avgpool2d", "l2pool2d"):
            kind = {"maxpool2d": "MaxPool", "avgpool2d": "AveragePool", "l2pool2d": "LpPool"}[op]
            extra = {}
            if op == "avgpool2d":
                extra["count_include_pad"] = int(a["count_include_pad"])
            if op == "l2pool2d":
                extra["p"] = 2
            nodes.append(helper.make_node(kind, [xs[0]], [out], name=node.name,
                                          kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                                          pads=list(a["padding"]), **extra))
        elif op in ("globalavgpool", "globalmaxpool"):
            kind = "GlobalAveragePool" if op == "globalavgpool" else "GlobalMaxPool"
            nodes.append(helper.make_node(kind, [xs[0]], [out], name=node.name))
        elif op in ("relu", "sigmoid", "tanh"):
            nodes.append(helper.make_node(op.capitalize(), [xs[0]], [out], name=node.name))
        elif op == "leaky_relu":
            nodes.append(helper.make_node("LeakyRelu", [xs[0]], [out], alpha=float(a["alpha"]),
                                          name=node.name))
        elif op == "clip":
            lo, hi = const(fresh("clip_min"), a["min"]), const(fresh("clip_max"), a["max"])
            nodes.append(helper.make_node("Clip", [xs[0], lo, hi], [out], name=node.name))
        elif op == "batchnorm2d":
            g, b = wts["gamma"].astype(np.float64), wts["beta"].astype(np.float64)
            m, v = wts["mean"].astype(np.float64), wts["var"].astype(np.float64)
            if len(shapes[node.inputs[0]]) == 3:
                ins = [xs[0]] + [const(fresh(node.name + "/" + k), wts[k]) for k in ("gamma", "beta", "mean", "var")]
                nodes.append(helper.make_node("BatchNormalization", ins, [out], name=node.name,
                                              epsilon=float(a["epsilon"])))
            else:
                scale = g / np.sqrt(v + float(a["epsilon"]))
                mul = fresh(node.name + "_scaled")
                nodes.append(helper.make_node("Mul", [xs[0], const(fresh(node.name + "/scale"), scale)],
                                              [mul], name=node.name + "/scale"))
                nodes.append(helper.make_node("Add", [mul, const(fresh(node.name + "/shift"), b - m * scale)],
                                              [out], name=node.name + "/shift"))
        elif op == "softmax":
            nodes.append(helper.make_node("Softmax", [xs[0]], [out], axis=int(a["axis"]), name=node.name))
        elif op == "flatten":
            nodes.append(helper.make_node("Flatten", [xs[0]], [out], axis=1, name=node.name))
        elif op == "add":
            if len(xs) == 1:
                nodes.append(helper.make_node("Identity", xs, [out], name=node.name))
            else:
                nodes.append(helper.make_node("Sum", xs, [out], name=node.name))
        elif op == "concat":
            nodes.append(helper.make_node("Concat", xs, [out], axis=int(a["axis"]), name=node.name))
        else:
            raise ConversionError(f"node '{node.name}': op '{op}' has no ONNX export")

    out_name = graph.outputs[0]
    out_shape = ["N"] + list(shapes[out_name])
    model = helper.make_model(
        helper.make_graph(nodes, "cnnrt", [onnx_in],
                          [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], inits),
        opset_imports=[helper.make_opsetid("", int(opset))], producer_name="cnnrt")
    model.ir_version = min(model.ir_version, 8 if opset <= 17 else 9)
    if graph.labels is not None:
        helper.set_model_props(model, {"labels": "\n".join(graph.labels)})
    onnx.checker.check_model(model, full_check=True)
    if dst is None:
        return model
    with atomic_path(dst, ".onnx.tmp") as tmp:
        with open(tmp, "wb") as fh:
            fh.write(model.SerializeToString())
    return model
