"""cnnrt.serve: a real server on 127.0.0.1 hit by concurrent clients, and the edge cases."""
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import cnnrt  # noqa: E402
from cnnrt.serve import create_app  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(os.path.dirname(HERE), "models")
DIGITS = os.path.join(MODELS, "digits.h5")
SAMPLES = [os.path.join(MODELS, "samples", f"digit_{i}.png") for i in range(10)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    app = create_app(DIGITS, threads=2, max_batch=8, batch_window_ms=5, max_body_bytes=200_000)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(timeout=30)


def expected(path):
    model = cnnrt.load(DIGITS, threads=1)
    return model.predict_image(path)


def test_concurrent_clients_get_exactly_predict_image(server):
    url, app = server
    model = cnnrt.load(DIGITS, threads=1)
    want = {p: model.predict_image(p) for p in SAMPLES}
    jobs = SAMPLES * 6

    def ask(path):
        with open(path, "rb") as fh:
            r = httpx.post(url + "/predict", content=fh.read(),
                           headers={"content-type": "image/png"}, timeout=30)
        return path, r

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, jobs))
    for path, r in answers:
        assert r.status_code == 200, r.text
        body = r.json()
        probs = want[path]
        best = int(np.argmax(probs))
        assert body["index"] == best and body["label"] == model.labels[best]
        # bit-identical: the served probability is the float32 predict_image gives
        assert np.float32(body["probability"]) == probs[best]
        tops = [t["index"] for t in body["top"]]
        assert tops == list(np.argsort(-probs.astype(np.float64), kind="stable")[:5])
    info = httpx.get(url + "/model", timeout=10).json()
    assert info["images"] >= len(jobs)
    assert info["batches"] < info["images"]  # concurrent requests were batched together


def test_multipart_upload(server):
    url, _ = server
    with open(SAMPLES[4], "rb") as fh:
        r = httpx.post(url + "/predict", files={"file": ("four.png", fh, "image/png")}, timeout=30)
    assert r.status_code == 200 and r.json()["label"] == "4"


def test_json_tensor(server):
    url, _ = server
    model = cnnrt.load(DIGITS, threads=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3,) + model.input_shape).astype(np.float32)
    r = httpx.post(url + "/predict", json={"inputs": x.tolist()}, timeout=30)
    assert r.status_code == 200
    got = np.asarray(r.json()["outputs"], dtype=np.float32)
    assert np.array_equal(got, model.predict(x))
    r = httpx.post(url + "/predict", json={"inputs": x[0].tolist()}, timeout=30)
    assert np.asarray(r.json()["outputs"]).shape == (10,)


@pytest.mark.parametrize("body,ctype,status,fragment", [
    (b"", "image/png", 400, "empty body"),
    (b"not an image at all", "image/png", 415, ""),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "application/octet-stream", 415, ""),
    (b"x" * 300_000, "image/png", 413, "over the limit"),
    (b"{not json", "application/json", 400, "JSON"),
    (b'{"inputs": [[1, 2], [3]]}', "application/json", 400, ""),
    (b'{"inputs": [1, 2, 3]}', "application/json", 400, "expected"),
    (b'{"tensor": 1}', "application/json", 400, "inputs"),
    (b"--zz\r\nbroken", "multipart/form-data; boundary=zz", 400, ""),
])
def test_junk_gets_4xx_and_server_stays_up(server, body, ctype, status, fragment):
    url, _ = server
    r = httpx.post(url + "/predict", content=body, headers={"content-type": ctype}, timeout=30)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    assert httpx.get(url + "/healthz", timeout=10).json() == {"status": "ok"}
    with open(SAMPLES[7], "rb") as fh:
        assert httpx.post(url + "/predict", content=fh.read(), timeout=30).json()["label"] == "7"


def test_model_endpoint(server):
    url, _ = server
    info = httpx.get(url + "/model", timeout=10).json()
    assert info["input_shape"] == [1, 16, 16] and info["labels"][:3] == ["0", "1", "2"]
    assert info["preprocess"]["color"] == "L" and "conv" in info["summary"]
    assert httpx.get(url + "/nothing", timeout=10).status_code == 404
    assert httpx.get(url + "/predict", timeout=10).status_code == 405


def test_mounted_in_another_app():
    import asyncio

    from starlette.applications import Starlette
    from starlette.routing import Mount

    inner = create_app(DIGITS, threads=1, batch_window_ms=0)
    outer = Starlette(routes=[Mount("/digits", app=inner)])
    with open(SAMPLES[2], "rb") as fh:
        data = fh.read()

    async def go():
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/digits/predict", content=data)
            h = await client.get("/digits/healthz")
        await inner.state.batcher.stop()
        return r, h

    r, h = asyncio.run(go())
    assert r.status_code == 200 and r.json()["label"] == "2"
    assert h.json() == {"status": "ok"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_batch"):
        create_app(DIGITS, max_batch=0)
    with pytest.raises(ValueError, match="batch_window_ms"):
        create_app(DIGITS, batch_window_ms=-1)
    with pytest.raises(cnnrt.ModelFormatError):
        create_app(os.path.join(MODELS, "samples", "digit_0.png"))


def test_cnnrt_serve_bad_model_one_line(capsys, tmp_path):
    from cnnrt.serve.cli import main

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"nope")
    assert main([str(bad), "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnnrt-serve: error:") and err.count("\n") == 1
    assert main(["--port", "x"]) == 2


def test_cnnrt_serve_command(tmp_path):
    import subprocess
    import sys

    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(cnnrt.__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "cnnrt.serve.cli", DIGITS, "--port", str(port),
                             "--threads", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "cnnrt-serve did not come up"
            time.sleep(0.2)
        with open(SAMPLES[3], "rb") as fh:
            r = httpx.post(f"http://127.0.0.1:{port}/predict", content=fh.read(), timeout=30)
        assert r.status_code == 200 and r.json()["label"] == "3"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
