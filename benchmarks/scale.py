"""Throughput of cnnrt inside Python services and on Dask.

    python benchmarks/scale.py threads     # caller-thread scaling, idle CPU
    python benchmarks/scale.py http        # HTTP requests/s with and without batching
    python benchmarks/scale.py dask        # Dask images/s with 1 and 2 worker processes
    python benchmarks/scale.py all

``threads``: N Python threads call one shared model at once (a model with 1
kernel thread, and one with every core) for a few seconds; images/s for
N = 1, 2, 4, 8.  Then the process sits idle for 10 s after a burst of calls
and its CPU time over those 10 s is reported (worker threads must not spin).

``http``: a real uvicorn server on 127.0.0.1 (in this process, its own
thread) and C concurrent clients posting PNG bytes; requests/s with the
batching window on (2 ms, up to 16 images) and off (max_batch 1).

``dask``: a LocalCluster with 1 and with 2 worker processes (1 thread each)
scores a folder of PNG files with ``cnnrt.dask.predict_images``.

The model is ``--model`` (default: a 3x64x64 ResNet-style network written to
a temporary file; ``models/digits.h5`` is too small to show anything).
"""
import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def synthetic_model(path):
    """A small ResNet-ish classifier on 3x64x64 images, fixed random weights."""
    from cnnrt.format import Graph, node, write_model

    rng = np.random.default_rng(0)

    def conv(name, x, cin, cout, k, s, act="relu"):
        w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        return node("conv2d", name, [x], name, {"weight": w, "bias": np.zeros(cout, np.float32)},
                    kernel=(k, k), stride=(s, s), padding=(k // 2,) * 4, dilation=(1, 1), groups=1,
                    activation=act)

    nodes = [conv("stem", "input", 3, 32, 3, 2)]
    x, c = "stem", 32
    for i, (cout, s) in enumerate([(32, 1), (64, 2), (64, 1), (128, 2)]):
        a = conv(f"b{i}a", x, c, cout, 3, s)
        b = conv(f"b{i}b", a.outputs[0], cout, cout, 3, 1, act="none")
        extra = [] if (s == 1 and c == cout) else [conv(f"b{i}s", x, c, cout, 1, s, act="none")]
        sc = extra[0].outputs[0] if extra else x
        nodes += [a, b] + extra + [node("add", f"b{i}add", [b.outputs[0], sc], f"b{i}add"),
                                   node("relu", f"b{i}relu", [f"b{i}add"], f"b{i}relu")]
        x, c = f"b{i}relu", cout
    w = (rng.standard_normal((10, c)) / np.sqrt(c)).astype(np.float32)
    nodes += [node("globalavgpool", "gap", [x], "gap"),
              node("dense", "fc", ["gap"], "fc", {"weight": w}, activation="none"),
              node("softmax", "softmax", ["fc"], "output", axis=1)]
    write_model(path, Graph(nodes, input_shape=(3, 64, 64), labels=[f"class{i}" for i in range(10)],
                            preprocess={"color": "RGB", "resize": [64, 64], "scale": 1 / 255}))


def sample_pngs(folder, n, size):
    from PIL import Image

    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"img{i:05d}.png")
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def bench_threads(model_path, seconds):
    import cnnrt

    print(f"caller-thread scaling ({os.cpu_count()} cores), one shared model, batch 1, "
          f"{seconds:.0f} s per point:")
    for kt in (1, cnnrt.get_num_threads()):
        model = cnnrt.load(model_path, threads=kt)
        x = np.random.default_rng(0).random((1,) + model.input_shape).astype(np.float32)
        base = None
        for callers in (1, 2, 4, 8):
            stop = time.perf_counter() + seconds
            counts = [0] * callers

            def work(i):
                while time.perf_counter() < stop:
                    model.predict(x)
                    counts[i] += 1

            threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rate = sum(counts) / (time.perf_counter() - t0)
            base = base or rate
            print(f"  model threads={kt}  callers={callers}  {rate:8.1f} images/s  x{rate / base:.2f}")
    model = cnnrt.load(model_path)
    x = np.random.default_rng(0).random((8,) + model.input_shape).astype(np.float32)
    for _ in range(50):
        model.predict(x)
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(10)
    c1, t1 = time.process_time(), time.perf_counter()
    print(f"  idle after a burst: {1e3 * (c1 - c0):.1f} ms of CPU in {t1 - t0:.1f} s "
          f"({100 * (c1 - c0) / (t1 - t0):.2f}% of one core)")


def bench_http(model_path, seconds, clients):
    import httpx
    import uvicorn

    from cnnrt.serve import create_app

    with tempfile.TemporaryDirectory() as tmp:
        pngs = [open(p, "rb").read() for p in sample_pngs(tmp, 32, 64)]
    print(f"HTTP POST /predict (PNG bytes), {clients} concurrent clients, {seconds:.0f} s per point:")
    for label, kw in (("batching off (max_batch 1)", dict(max_batch=1, batch_window_ms=0)),
                      ("batching on (window 2 ms, max 16)", dict(max_batch=16, batch_window_ms=2))):
        app = create_app(model_path, **kw)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        th = threading.Thread(target=srv.run, daemon=True)
        th.start()
        while not srv.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/predict"
        stop = time.perf_counter() + seconds
        done = [0] * clients

        def client(i):
            with httpx.Client(timeout=30) as c:
                k = i
                while time.perf_counter() < stop:
                    r = c.post(url, content=pngs[k % len(pngs)], headers={"content-type": "image/png"})
                    assert r.status_code == 200, r.text
                    done[i] += 1
                    k += clients

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        rate = sum(done) / (time.perf_counter() - t0)
        b = app.state.batcher
        print(f"  {label:36s} {rate:8.1f} requests/s  (mean batch {b.images / max(b.batches, 1):.1f})")
        srv.should_exit = True
        th.join()


def bench_dask(model_path, n_images):
    from distributed import Client, LocalCluster

    import cnnrt.dask

    with tempfile.TemporaryDirectory() as tmp:
        paths = sample_pngs(tmp, n_images, 64)
        print(f"Dask: {n_images} PNG files (64x64), batch_size 64, 1 thread per worker:")
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
                cnnrt.dask.predict_images(client, model_path, paths[:128])  # load the model on workers
                t0 = time.perf_counter()
                res = cnnrt.dask.predict_images(client, model_path, paths, batch_size=64)
                dt = time.perf_counter() - t0
                assert len(res) == n_images and all("label" in r for r in res)
                print(f"  {workers} worker process(es): {n_images / dt:8.1f} images/s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["threads", "http", "dask", "all"])
    ap.add_argument("--model", default=None, help="model file (default: a synthetic 3x64x64 ResNet-ish net)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--images", type=int, default=4000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model
        if model_path is None:
            model_path = os.path.join(tmp, "resnetish.h5")
            synthetic_model(model_path)
        if args.what in ("threads", "all"):
            bench_threads(model_path, args.seconds)
        if args.what in ("http", "all"):
            bench_http(model_path, args.seconds, args.clients)
        if args.what in ("dask", "all"):
            bench_dask(model_path, args.images)


if __name__ == "__main__":
    sys.exit(main())
