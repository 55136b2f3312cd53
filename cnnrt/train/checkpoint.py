"""Training checkpoints: plain NumPy ``.npz`` archives, no pickles.

A checkpoint holds everything needed to continue a run exactly where it
stopped: the architecture (JSON), parameters and batch-norm statistics, the
optimizer state, the best weights so far, the history, the number of epochs
done, the training settings and a fingerprint of the training data.  It is
read with ``np.load(..., allow_pickle=False)``, so loading one never runs
code.  Arrays are stored under ``params/<layer>/<name>``,
``optimizer/<key>`` and ``best/<layer>/<name>``; the rest is the JSON string
``info``.  Files are written to a temporary name and renamed into place.
"""
import hashlib
import json
import os

import numpy as np

from ..format import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "check_compatible", "data_fingerprint",
           "CheckpointError"]

KIND = "cnnrt.train checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the run it should resume."""


def data_fingerprint(x, y):
    """A short digest of the training arrays (shape, labels and pixel values)."""
    h = hashlib.sha256()
    h.update(repr((tuple(x.shape), str(x.dtype))).encode())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()[:32]


def save_checkpoint(path, net, optimizer, history, best_state, epoch, settings, fingerprint,
                    extra=None):
    arrays = {}
    for k, v in net.state_arrays().items():
        arrays[f"params/{k}"] = v
    for k, v in optimizer.state_arrays().items():
        arrays[f"optimizer/{k}"] = np.asarray(v)
    for k, v in (best_state or {}).items():
        arrays[f"best/{k}"] = v
    info = {"kind": KIND, "version": VERSION, "network": net.config(),
            "dtype": np.dtype(net.dtype).name, "epoch": int(epoch),
            "history": history.to_dict(), "settings": settings, "fingerprint": fingerprint,
            "extra": extra or {}}
    arrays["info"] = np.array(json.dumps(info))
    with atomic_path(path, ".npz.tmp") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_checkpoint(path):
    """Read a checkpoint: dict with info (JSON data), params, optimizer, best."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({' '.join(str(exc).split())})") from None
    if "info" not in data:
        raise CheckpointError(f"{path}: not a cnnrt.train checkpoint (no 'info' entry)")
    try:
        info = json.loads(str(data.pop("info")))
    except ValueError as exc:
        raise CheckpointError(f"{path}: damaged checkpoint info ({exc})") from None
    if not isinstance(info, dict) or info.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a cnnrt.train checkpoint")
    if info.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {info.get('version')} is newer than "
                              f"this cnnrt reads ({VERSION})")
    out = {"info": info, "params": {}, "optimizer": {}, "best": {}, "path": path}
    for key, arr in data.items():
        group, _, rest = key.partition("/")
        if group in ("params", "optimizer", "best") and rest:
            out[group][rest] = arr
    return out


def check_compatible(state, net, fingerprint):
    """Refuse to resume with another architecture or other training data."""
    info = state["info"]
    path = state.get("path", "checkpoint")
    if info["network"]["layers"] != net.config()["layers"] or \
            list(info["network"]["input_shape"]) != list(net.input_shape):
        raise CheckpointError(f"{path}: the checkpoint's network differs from this one")
    if info.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{path}: the checkpoint was made with other training data "
                              "(or another validation split / seed)")
