"""Export of a trained network to the cnnrt model format (version 1).

The graph mirrors the layers in order, with three inference-time
simplifications, none of which changes the result beyond float rounding:

* a ReLU right after a conv or dense layer becomes that node's
  ``activation`` attribute;
* a BatchNorm2d right after a conv layer is folded into the conv's weights
  and bias (``fold_batchnorm=True``, the default); any other BatchNorm2d is
  written as a ``batchnorm2d`` node with its running statistics;
* dropout is the identity at inference and is left out.

A ``softmax`` node over the classes ends the graph, so the file's output is
class probabilities, as ``cnnrt-run`` prints them.  The file is written by
``cnnrt.format.write_model``: validated, then written to a temporary file
and renamed into place.
"""
from typing import Dict, List, Optional

import numpy as np

from .._version import __version__
from ..format import Graph, node, write_model
from .layers import AvgPool2d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU

__all__ = ["to_graph", "save_model", "PRODUCER"]

PRODUCER = f"cnnrt.train {__version__}"


def _bn_scale_shift(bn):
    gamma = bn.params["gamma"].astype(np.float64)
    beta = bn.params["beta"].astype(np.float64)
    mean = bn.buffers["running_mean"].astype(np.float64)
    var = bn.buffers["running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def to_graph(net, labels: Optional[List[str]] = None, preprocess: Optional[Dict] = None,
             meta: Optional[Dict] = None, description: Optional[str] = None,
             fold_batchnorm: bool = True, softmax: bool = True) -> Graph:
    """The network as a :class:`cnnrt.format.Graph` (validated when written)."""
    if net.input_shape is None:
        raise ValueError("the network is not built: give input_shape or call build() first")
    if len(net.input_shape) != 3:
        raise ValueError(f"the format needs an image input (C, H, W), got {net.input_shape}")
    layers = list(net.layers)
    nodes = []
    tensor = "input"
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        name = layer.name
        if isinstance(layer, (Conv2d, Dense)):
            w = layer.params["weight"].astype(np.float64)
            b = (layer.params["bias"].astype(np.float64) if layer.use_bias
                 else np.zeros(w.shape[0]))
            if isinstance(layer, Conv2d) and fold_batchnorm and isinstance(nxt, BatchNorm2d):
                scale, shift = _bn_scale_shift(nxt)
                w = w * scale[:, None, None, None]
                b = b * scale + shift
                name = f"{name}+{nxt.name}"
                i += 1
                nxt = layers[i + 1] if i + 1 < len(layers) else None
            act = "none"
            if isinstance(nxt, ReLU):
                act = "relu"
                name = f"{name}+{nxt.name}"
                i += 1
            if isinstance(layer, Conv2d):
                nodes.append(node("conv2d", name, [tensor], name,
                                  weights={"weight": w, "bias": b},
                                  kernel=list(layer.kernel), stride=list(layer.stride),
                                  padding=list(layer.padding), dilation=list(layer.dilation),
                                  groups=layer.groups, activation=act))
            else:
                nodes.append(node("dense", name, [tensor], name,
                                  weights={"weight": w, "bias": b}, activation=act))
        elif isinstance(layer, BatchNorm2d):
            nodes.append(node("batchnorm2d", name, [tensor], name,
                              weights={"gamma": layer.params["gamma"],
                                       "beta": layer.params["beta"],
                                       "mean": layer.buffers["running_mean"],
                                       "var": layer.buffers["running_var"]},
                              epsilon=layer.eps))
        elif isinstance(layer, MaxPool2d):
            nodes.append(node("maxpool2d", name, [tensor], name, kernel=list(layer.kernel),
                              stride=list(layer.stride), padding=list(layer.padding)))
        elif isinstance(layer, AvgPool2d):
            nodes.append(node("avgpool2d", name, [tensor], name, kernel=list(layer.kernel),
                              stride=list(layer.stride), padding=list(layer.padding),
                              count_include_pad=int(layer.count_include_pad)))
        elif isinstance(layer, ReLU):
            nodes.append(node("relu", name, [tensor], name))
        elif isinstance(layer, Flatten):
            nodes.append(node("flatten", name, [tensor], name))
        elif isinstance(layer, Dropout):
            i += 1
            continue
        else:
            raise ValueError(f"cannot export layer {layer.name} of type {type(layer).__name__}")
        tensor = nodes[-1].outputs[0]
        i += 1
    if softmax:
        if len(net.output_shape) != 1:
            raise ValueError(f"the network's output must be a vector of class scores, got {net.output_shape}")
        nodes.append(node("softmax", "softmax", [tensor], "output", axis=1))
    elif nodes:
        nodes[-1].outputs = ["output"]
    else:
        raise ValueError("a network without layers cannot be exported")
    return Graph(nodes=nodes, input_shape=tuple(net.input_shape), producer=PRODUCER,
                 labels=list(labels) if labels is not None else None,
                 description=description, preprocess=dict(preprocess) if preprocess else None,
                 meta=dict(meta or {}))


def save_model(net, path, **kwargs) -> Graph:
    """Write the network to ``path`` (atomically); returns the graph written."""
    graph = to_graph(net, **kwargs)
    write_model(path, graph)
    return graph
