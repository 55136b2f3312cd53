"""Rewrite Keras 3 legacy .h5 files into other layouts the Keras converter must read.

Keras 2 is not installed next to Keras 3, so its file layout is produced here
from a Keras 3 file with h5py: ``<layer>/<weight>:0`` names, byte-string name
lists, list-form ``inbound_nodes`` and ``batch_input_shape``.  ``chunk_attribute``
splits a name list into ``name0``, ``name1``, ... as h5py-based savers do when
an attribute exceeds the 64 KB HDF5 attribute limit.
"""
import json

import h5py
import numpy as np


def _refs(obj, out):
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            out.append(list(obj["config"]["keras_history"]) + [{}])
        else:
            for v in obj.values():
                _refs(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _refs(v, out)
    return out


MODELS = ("Sequential", "Functional", "Model")


def _keras2_config(config, drop_input_layer=False):
    config = json.loads(json.dumps(config))
    body = config["config"]
    for i, layer in enumerate(body["layers"]):
        if layer["class_name"] in MODELS:
            nested = _keras2_config(layer)
            layer["class_name"], layer["config"] = nested["class_name"], nested["config"]
        cfg = layer["config"]
        if "batch_shape" in cfg:
            cfg["batch_input_shape"] = cfg.pop("batch_shape")
        if isinstance(cfg.get("dtype"), dict):
            cfg["dtype"] = "float32"
        if "inbound_nodes" in layer:
            layer["inbound_nodes"] = [_refs(node["args"], []) for node in layer["inbound_nodes"]]
    if config["class_name"] == "Functional":
        config["class_name"] = "Model"
        for key in ("input_layers", "output_layers"):
            value = body[key]
            if isinstance(value[0], str):
                body[key] = [value]
    elif drop_input_layer:
        first = body["layers"].pop(0)
        assert first["class_name"] == "InputLayer"
        body["layers"][0]["config"]["batch_input_shape"] = first["config"]["batch_input_shape"]
        body.pop("build_input_shape", None)
    return config


def _classes(config, out):
    for layer in config["config"]["layers"]:
        out[layer["config"]["name"]] = layer["class_name"]
        if layer["class_name"] in MODELS:
            _classes(layer, out)
    return out


def _read_weights(src):
    """[(group name, {layer: class}, [(owning layer, short name, array), ...])] in file order."""
    out = []
    mw = src["model_weights"]
    classes = _classes(json.loads(src.attrs["model_config"]), {})
    for lname in mw.attrs["layer_names"]:
        lname = lname.decode() if isinstance(lname, bytes) else str(lname)
        group = mw[lname]
        weights = []
        for wname in group.attrs["weight_names"]:
            wname = wname.decode() if isinstance(wname, bytes) else str(wname)
            parts = wname.split("/")
            weights.append((parts[-2], parts[-1], group[wname][()]))
        out.append((lname, classes, weights))
    return out


def to_keras2(src_path, dst_path, drop_input_layer=False, style="keras2"):
    """Copy a Keras 3 .h5 file into the Keras 2 layout (``style="keras2"``) or into
    Keras 3 names of the ``<layer>/vars/<i>`` form (``style="vars"``)."""
    with h5py.File(src_path, "r") as src, h5py.File(dst_path, "w") as dst:
        config = json.loads(src.attrs["model_config"])
        layers = _read_weights(src)
        keras2 = style == "keras2"
        if keras2:
            config = _keras2_config(config, drop_input_layer)
            dst.attrs["keras_version"] = "2.13.1"
            dst.attrs["backend"] = "tensorflow"
        else:
            dst.attrs["keras_version"] = src.attrs["keras_version"]
            dst.attrs["backend"] = src.attrs["backend"]
        dst.attrs["model_config"] = json.dumps(config)
        mw = dst.create_group("model_weights")
        mw.attrs["keras_version"] = dst.attrs["keras_version"]
        mw.attrs["backend"] = dst.attrs["backend"]
        mw.attrs["layer_names"] = np.array([n.encode() for n, _, _ in layers])
        for lname, classes, weights in layers:
            group = mw.create_group(lname)
            names = []
            if keras2 and classes.get(lname) in MODELS:
                # Keras 2 lists a nested model's trainable weights before the others
                moving = [w for w in weights if w[1].startswith("moving_")]
                weights = [w for w in weights if not w[1].startswith("moving_")] + moving
            for i, (owner, short, array) in enumerate(weights):
                if keras2:
                    if classes.get(owner) == "DepthwiseConv2D" and short == "kernel":
                        short = "depthwise_kernel"
                    name = f"{owner}/{short}:0"
                else:
                    name = f"{lname}/vars/{i}"
                group.create_dataset(name, data=array)
                names.append(name.encode())
            group.attrs["weight_names"] = np.array(names, dtype="S") if names else np.zeros(0)


def chunk_attribute(group, name, parts):
    """Replace the name-list attribute ``name`` by ``name0`` ... ``name{parts-1}``."""
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in group.attrs[name]]
    del group.attrs[name]
    for i, chunk in enumerate(np.array_split(np.array(values, dtype=object), parts)):
        group.attrs[f"{name}{i}"] = np.array([v.encode() for v in chunk], dtype="S")
