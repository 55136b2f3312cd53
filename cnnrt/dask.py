"""Scoring many images on a Dask cluster.

``predict_images(client, model_path, image_paths)`` splits the paths into
batches, scores each batch on a worker and returns one result per path, in
input order::

    from dask.distributed import Client, LocalCluster
    import cnnrt.dask

    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    results = cnnrt.dask.predict_images(client, "models/digits.h5", paths, batch_size=64)
    # [{"path": ..., "index": 3, "label": "3", "probability": 0.99}, ...]

The model is not shipped with the tasks: every task carries the model's
path, and each worker process loads the file once and keeps it (a cache
keyed by path, size and modification time, so a replaced file is reloaded).
Workers must therefore see the model and the images under the same paths (a
shared or replicated file system, or object storage mounted alike).
Images are decoded on the workers.  A bad image gives a result with an
``error`` message instead of a label; the other images are unaffected.
"""
import os
import threading
from typing import Dict, List, Optional, Sequence

__all__ = ["predict_images", "score_batch"]

_models: Dict[tuple, object] = {}
_lock = threading.Lock()


def _model(path, threads):
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, threads)
    with _lock:
        model = _models.get(key)
        if model is None:
            import cnnrt

            for old in [k for k in _models if k[0] == key[0]]:
                del _models[old]
            model = _models[key] = cnnrt.load(path, threads=threads, isolate=True)
    return model


def score_batch(model_path, paths: Sequence[str], top_k: int = 1,
                threads: Optional[int] = None) -> List[dict]:
    """Score ``paths`` with the (cached) model at ``model_path``: one dict per path.

    Runs wherever it is called: on a Dask worker as a task, or locally.
    """
    import numpy as np

    from .cli import _output_op, _top
    from .image import ImageError, load_image

    model = _model(model_path, threads)
    labels = model.labels
    kind = "probability" if _output_op(model.graph) == "softmax" else "score"
    shape, layout, pre = model.graph.input_shape, model.input_layout, model.preprocess
    xs, results, where = [], [], []
    for path in paths:
        try:
            xs.append(load_image(path, shape, layout, pre))
            where.append(len(results))
            results.append(None)
        except (ImageError, OSError, ValueError) as exc:
            results.append({"path": path, "error": " ".join(str(exc).split())})
    if xs:
        scores = model.predict(np.stack(xs))
        for row, slot in zip(scores, where):
            flat, best = _top(row, top_k)
            i = int(best[0])
            rec = {"path": paths[slot], "index": i,
                   "label": labels[i] if labels is not None and i < len(labels) else str(i),
                   kind: float(flat[i])}
            if top_k > 1:
                rec["top"] = [{"index": int(j),
                               "label": labels[j] if labels is not None and j < len(labels) else str(j),
                               kind: float(flat[j])} for j in best]
            results[slot] = rec
    return results


def predict_images(client, model_path, image_paths: Sequence[str], batch_size: int = 64,
                   top_k: int = 1, threads: Optional[int] = 1) -> List[dict]:
    """Score every path on the cluster behind ``client``; results in input order.

    ``threads`` is each task's kernel thread count (default 1: one task per
    worker thread keeps every core busy without oversubscription).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if isinstance(image_paths, (str, bytes)):
        raise ValueError("image_paths must be a sequence of paths, not one string")
    paths = [os.fspath(p) for p in image_paths]
    model_path = os.path.abspath(os.fspath(model_path))
    if not paths:
        return []
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    futures = client.map(score_batch, [model_path] * len(batches), batches,
                         top_k=top_k, threads=threads, pure=False)
    out: List[dict] = []
    for chunk in client.gather(futures):
        out.extend(chunk)
    return out
