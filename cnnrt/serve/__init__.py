"""HTTP serving: an ASGI application (Starlette) around one cnnrt model.

``create_app(model_path)`` returns a Starlette application that can be run
by itself (``cnnrt-serve MODEL``) or mounted in a FastAPI / Starlette
service::

    from fastapi import FastAPI
    from cnnrt.serve import create_app

    api = FastAPI()
    api.mount("/digits", create_app("models/digits.h5"))

Endpoints:

- ``POST /predict`` with the raw bytes of an image (any ``Content-Type``
  but JSON and multipart), or a multipart form with a ``file`` (or
  ``image``) field: ``{"index", "label", "probability" | "score", "top": [...]}``.
- ``POST /predict`` with ``Content-Type: application/json`` and
  ``{"inputs": tensor}``: a tensor of shape ``(C, H, W)`` or ``(N, C, H, W)``
  in the model's layout; answers ``{"outputs": ...}`` (same leading shape).
- ``GET /healthz``: ``{"status": "ok"}``.
- ``GET /model``: input shape and layout, output shape, labels,
  preprocessing and the node table.

Concurrent image requests are batched: a request waits at most
``batch_window_ms`` for others to join it, up to ``max_batch`` images run as
one ``predict`` call, and one sample gives the same bits alone or in a batch,
so batching never changes an answer.  Inference runs on one worker thread
(the model's own OpenMP threads do the parallel work), image decoding on the
thread pool, never on the event loop.  A full queue (``max_queue`` waiting
images) answers 503; an empty body 400, a body over ``max_body_bytes`` 413,
bytes that are not an image 415, a bad JSON tensor 400; the server stays up.
"""
import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
from typing import Optional

import numpy as np

__all__ = ["create_app"]


class _HTTPError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _json_number(x):
    x = float(x)
    return x if math.isfinite(x) else None


class _Batcher:
    """Collects single-image requests into batches for one inference thread."""

    def __init__(self, model, max_batch, window, max_queue):
        self.model = model
        self.max_batch = max_batch
        self.window = window
        self.queue: Optional[asyncio.Queue] = None
        self.max_queue = max_queue
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cnnrt-infer")
        self.task = None
        self.batches = 0
        self.images = 0

    async def start(self):
        self.queue = asyncio.Queue(self.max_queue)
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, x):
        if self.queue is None:
            await self.start()
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((x, fut))
        except asyncio.QueueFull:
            raise _HTTPError(503, f"server busy: {self.max_queue} images already waiting") from None
        return await fut

    async def run(self, fn, *args):
        """Run ``fn`` on the inference thread (serialised with the batches)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            items = [first]
            deadline = loop.time() + self.window
            while len(items) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            items = [(x, f) for x, f in items if not f.cancelled()]
            if not items:
                continue
            batch = np.stack([x for x, _ in items])
            try:
                out = await loop.run_in_executor(self.executor, self.model.predict, batch)
            except Exception as exc:  # surfaces as a 500 for each waiting request
                for _, f in items:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(items)
            for i, (_, f) in enumerate(items):
                if not f.done():
                    f.set_result(out[i])


def create_app(model_path, *, threads: Optional[int] = None, max_batch: int = 16,
               batch_window_ms: float = 2.0, max_queue: int = 256,
               max_body_bytes: int = 20 * 1024 * 1024, top_k: int = 5):
    """A Starlette application serving the cnnrt model at ``model_path`` (see the module doc)."""
    try:
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse
        from starlette.routing import Route
    except ImportError:
        raise ImportError('cnnrt.serve needs Starlette: pip install "cnnrt[serve]"') from None
    import cnnrt
    from ..cli import _output_op
    from ..image import ImageError, load_image

    for name, value, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1),
                             ("max_body_bytes", max_body_bytes, 1), ("top_k", top_k, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(batch_window_ms, (int, float)) and 0 <= batch_window_ms <= 10000):
        raise ValueError(f"batch_window_ms must be between 0 and 10000, got {batch_window_ms!r}")

    model = cnnrt.load(model_path, threads=threads, isolate=True)
    labels = model.labels
    kind = "probability" if _output_op(model.graph) == "softmax" else "score"
    batcher = _Batcher(model, max_batch, batch_window_ms / 1000.0, max_queue)
    shape, layout, pre = model.graph.input_shape, model.input_layout, model.preprocess
    want = tuple(model.input_shape)

    def label_of(i):
        return labels[i] if labels is not None and i < len(labels) else str(i)

    def describe(scores):
        flat = np.asarray(scores, dtype=np.float64).reshape(-1)
        k = min(top_k, flat.size)
        order = np.argsort(-flat, kind="stable")[:k]
        best = int(order[0])
        return {"index": best, "label": label_of(best), kind: _json_number(flat[best]),
                "top": [{"index": int(i), "label": label_of(int(i)), kind: _json_number(flat[i])}
                        for i in order]}

    async def read_body(request):
        length = request.headers.get("content-length")
        if length is not None:
            try:
                if int(length) > max_body_bytes:
                    raise _HTTPError(413, f"body of {int(length)} bytes is over the limit of {max_body_bytes}")
            except ValueError:
                raise _HTTPError(400, "bad Content-Length header") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise _HTTPError(413, f"body is over the limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict_tensor(body):
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _HTTPError(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise _HTTPError(400, 'JSON body must be an object {"inputs": tensor}')
        try:
            x = np.asarray(payload["inputs"], dtype=np.float32)
        except (ValueError, TypeError):
            raise _HTTPError(400, f"'inputs' must be a numeric tensor of shape {list(want)} or "
                                  f"[N, {', '.join(map(str, want))}]") from None
        single = x.shape == want
        if single:
            x = x[None]
        try:
            out = await batcher.run(model.predict, x)
        except ValueError as exc:
            raise _HTTPError(400, str(exc)) from None
        out = out[0] if single else out
        # JSON has no NaN or infinity: non-finite outputs become null
        return {"outputs": np.where(np.isfinite(out), out.astype(object), None).tolist()}

    async def predict(request):
        try:
            ctype = request.headers.get("content-type", "").lower()
            if ctype.startswith("application/json"):
                return JSONResponse(await predict_tensor(await read_body(request)))
            if ctype.startswith("multipart/form-data"):
                length = request.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > max_body_bytes:
                    raise _HTTPError(413, f"body of {int(length)} bytes is over the limit of {max_body_bytes}")
                try:
                    form = await request.form(max_files=1, max_fields=8)
                except Exception as exc:
                    raise _HTTPError(400, f"bad multipart body: {exc}") from None
                upload = form.get("file") or form.get("image")
                if upload is None or isinstance(upload, str):
                    raise _HTTPError(400, "multipart body needs a 'file' (or 'image') upload")
                data = await upload.read()
                await form.close()
                if len(data) > max_body_bytes:
                    raise _HTTPError(413, f"upload is over the limit of {max_body_bytes} bytes")
            else:
                data = await read_body(request)
            if not data:
                raise _HTTPError(400, "empty body: send the bytes of an image")
            try:
                x = await run_in_threadpool(load_image, data, shape, layout, pre)
            except ImageError as exc:
                raise _HTTPError(415, str(exc)) from None
            scores = await batcher.submit(x)
            return JSONResponse(describe(scores))
        except _HTTPError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    async def info(request):
        return JSONResponse({
            "path": os.path.abspath(os.fspath(model_path)),
            "input_shape": list(model.input_shape), "input_layout": layout,
            "output_shape": list(model.output_shape), "labels": labels, "preprocess": pre,
            "threads": model.threads, "max_batch": max_batch, "batch_window_ms": batch_window_ms,
            "batches": batcher.batches, "images": batcher.images,
            "summary": model.summary(),
        })

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # (a mounted sub-application gets no lifespan events: the batcher
        # then starts with the first request)
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]),
                            Route("/healthz", healthz, methods=["GET"]),
                            Route("/model", info, methods=["GET"])],
                    lifespan=lifespan)
    app.state.model = model
    app.state.batcher = batcher
    return app


def _app_from_env():
    """Application factory for uvicorn workers (``cnnrt-serve --workers N``)."""
    cfg = json.loads(os.environ["CNNRT_SERVE_CONFIG"])
    return create_app(cfg.pop("model"), **cfg)
