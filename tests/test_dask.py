"""cnnrt.dask on a LocalCluster with two worker processes."""
import os
import shutil

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import cnnrt  # noqa: E402
import cnnrt.dask  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(os.path.dirname(HERE), "models")
DIGITS = os.path.join(MODELS, "digits.h5")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_predict_images_in_order_and_identical(client, tmp_path):
    samples = [os.path.join(MODELS, "samples", f"digit_{i}.png") for i in range(10)]
    paths = []
    for k in range(7):
        for i, s in enumerate(samples):
            p = tmp_path / f"img{k}_{i}.png"
            shutil.copy(s, p)
            paths.append(str(p))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    paths.insert(13, str(bad))
    results = cnnrt.dask.predict_images(client, DIGITS, paths, batch_size=8, top_k=2)
    assert [r["path"] for r in results] == paths
    model = cnnrt.load(DIGITS, threads=1)
    for r in results:
        if r["path"] == str(bad):
            assert "error" in r and "label" not in r
            continue
        probs = model.predict_image(r["path"])
        best = int(np.argmax(probs))
        assert r["index"] == best and r["label"] == model.labels[best]
        assert np.float32(r["probability"]) == probs[best]
        assert [t["index"] for t in r["top"]] == list(np.argsort(-probs.astype(np.float64), kind="stable")[:2])
    # each worker process loaded the model once and kept it
    cached = client.run(lambda: len(__import__("cnnrt.dask").dask._models))
    assert all(v <= 1 for v in cached.values()) and sum(cached.values()) >= 1


def test_arguments(client):
    assert cnnrt.dask.predict_images(client, DIGITS, []) == []
    with pytest.raises(ValueError, match="batch_size"):
        cnnrt.dask.predict_images(client, DIGITS, ["a.png"], batch_size=0)
    with pytest.raises(ValueError, match="sequence of paths"):
        cnnrt.dask.predict_images(client, DIGITS, "a.png")
