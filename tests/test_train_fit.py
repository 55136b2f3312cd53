"""cnnrt.train end to end: training reduces the loss, saved files reproduce the
training module's predictions through cnnrt.load, runs are reproducible, and
checkpoints resume exactly."""

import numpy as np
import pytest

import cnnrt
import cnnrt.train as ct
from cnnrt.format import read_model
from cnnrt.train import (AvgPool2d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU,
                         Sequential)
from cnnrt.train.checkpoint import CheckpointError, load_checkpoint
from cnnrt.train.optim import LRSchedule


def stripes(n, size=8, seed=0):
    """Two classes: vertical (0) or horizontal (1) stripes of random phase, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.empty((n, 1, size, size), np.float32)
    idx = np.arange(size)
    for i in range(n):
        period = rng.integers(2, 4)
        wave = ((idx + rng.integers(0, period)) % period == 0).astype(np.float32)
        img = np.tile(wave, (size, 1))
        x[i, 0] = img if y[i] == 0 else img.T
    x += rng.normal(0, 0.3, x.shape).astype(np.float32)
    return x, y


def test_training_reduces_the_loss():
    x, y = stripes(96)
    net = Sequential([Conv2d(4, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(), Dense(2)],
                     input_shape=(1, 8, 8), seed=1, threads=2)
    before = net.evaluate(x, y)[0]
    opt = ct.Adam(lr=0.01)
    losses = [net.train_step(x[i:i + 32], y[i:i + 32], opt)[0] for i in range(0, 96, 32) for _ in range(4)]
    after, acc = net.evaluate(x, y)
    assert after < 0.5 * before
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert acc > 0.9


def test_fit_history_and_keep_best():
    x, y = stripes(120, seed=2)
    xv, yv = stripes(40, seed=3)
    net = ct.fit(x, y, arch="simple", epochs=4, batch_size=16, seed=0, threads=2,
                 validation_data=(xv, yv), labels=["vertical", "horizontal"])
    h = net.history
    assert len(h) == 4 and h["epoch"] == [1, 2, 3, 4]
    assert h.best_val_acc == max(h["val_acc"])
    assert h.best_epoch == h["val_acc"].index(h.best_val_acc) + 1
    # The kept weights are those of the best epoch.
    assert net.evaluate(xv, yv)[1] == pytest.approx(h.best_val_acc)
    assert h["loss"][-1] < h["loss"][0]
    lr = h["lr"]
    assert lr[0] > lr[-1]  # cosine schedule


NETS = {
    "conv-bn-relu-pool": lambda: [Conv2d(6, 3, padding=1, bias=False), BatchNorm2d(), ReLU(),
                                  MaxPool2d(2), Conv2d(5, 3, stride=2, padding=(1, 1, 0, 0), groups=1),
                                  BatchNorm2d(), AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
                                  Flatten(), Dropout(0.3), Dense(7), ReLU(), Dense(3)],
    "grouped-dilated": lambda: [Conv2d(4, 3, dilation=2, padding=2), ReLU(),
                                Conv2d(8, 3, groups=4, padding="same"), BatchNorm2d(), ReLU(),
                                AvgPool2d(3, stride=2, padding=1), Flatten(), Dense(3)],
    "dense-only": lambda: [Flatten(), Dense(10), ReLU(), Dense(3)],
}


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("name", sorted(NETS))
def test_saved_model_matches_training_forward(tmp_path, name, fold):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 2, 9, 9)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    net = Sequential(NETS[name](), input_shape=(2, 9, 9), seed=5, threads=2)
    net.fit(x, y, epochs=2, batch_size=8, lr=0.01)  # moves batch-norm statistics too
    path = tmp_path / "m.h5"
    net.save(path, labels=["a", "b", "c"], meta={"dataset": "random", "epochs": 2},
             fold_batchnorm=fold)
    model = cnnrt.load(path, threads=2)
    got = model.predict(x)
    want = net.predict(x)
    assert got.shape == (20, 3)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)
    assert model.labels == ["a", "b", "c"]
    graph = read_model(path)
    assert graph.meta["dataset"] == "random" and graph.meta["epochs"] == 2
    assert graph.producer.startswith("cnnrt.train")
    ops = [n.op for n in graph.nodes]
    assert ops[-1] == "softmax"
    assert "dropout" not in ops
    if "bn" in name or "grouped" in name:
        assert ("batchnorm2d" in ops) == (not fold)


@pytest.mark.parametrize("arch", sorted(ct.ARCHITECTURES))
def test_builtin_architectures_export(tmp_path, arch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 16, 16)).astype(np.float32)
    y = np.arange(6) % 4
    net = ct.fit(x, y, arch=arch, epochs=1, batch_size=3, threads=2)
    net.save(tmp_path / "m.h5")
    np.testing.assert_allclose(cnnrt.load(tmp_path / "m.h5").predict(x), net.predict(x), atol=1e-4)


def test_same_seed_same_weights_any_thread_count():
    x, y = stripes(64, seed=4)
    layers = lambda: [Conv2d(4, 3, padding=1), BatchNorm2d(), ReLU(), MaxPool2d(2), Flatten(),
                      Dropout(0.5), Dense(2)]
    runs = []
    for threads in (1, 2, 2):
        net = Sequential(layers(), input_shape=(1, 8, 8), seed=7, threads=threads)
        net.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, augment={"shift": 1, "flip": True})
        runs.append(net.state_arrays())
    for other in runs[1:]:
        assert runs[0].keys() == other.keys()
        for k in runs[0]:
            np.testing.assert_array_equal(runs[0][k], other[k])
    net = Sequential(layers(), input_shape=(1, 8, 8), seed=8, threads=2)
    net.fit(x, y, epochs=2, batch_size=16)
    assert not np.array_equal(net.state_arrays()["conv1/weight"], runs[0]["conv1/weight"])


def test_checkpoint_resume_is_exact(tmp_path):
    x, y = stripes(64, seed=5)
    xv, yv = stripes(16, seed=6)
    layers = lambda: [Conv2d(3, 3), BatchNorm2d(), ReLU(), Flatten(), Dropout(0.2), Dense(2)]
    kw = dict(batch_size=16, validation_data=(xv, yv), augment={"shift": 1}, optimizer="sgd",
              lr=0.05, weight_decay=1e-3)
    full = Sequential(layers(), input_shape=(1, 8, 8), seed=3, threads=2)
    full.fit(x, y, epochs=4, **kw)

    ckpt = tmp_path / "run.ckpt.npz"
    part = Sequential(layers(), input_shape=(1, 8, 8), seed=3, threads=2)
    _fit_interrupted(part, x, y, ckpt, kw)  # stops after epoch 2
    state = load_checkpoint(ckpt)
    assert state["info"]["epoch"] == 2

    resumed = Sequential(layers(), input_shape=(1, 8, 8), seed=3, threads=2)
    resumed.fit(x, y, epochs=4, resume=ckpt, checkpoint=ckpt, **kw)
    assert resumed.history.to_dict()["best_epoch"] == full.history.best_epoch
    assert [e["loss"] for e in resumed.history.epochs] == [e["loss"] for e in full.history.epochs]
    a, b = full.state_arrays(), resumed.state_arrays()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # The checkpoint is plain arrays: it loads with pickles disabled.
    with np.load(ckpt, allow_pickle=False) as z:
        assert "info" in z.files and any(f.startswith("params/") for f in z.files)

    other = Sequential(layers(), input_shape=(1, 8, 8), seed=3, threads=2)
    with pytest.raises(CheckpointError, match="other training data"):
        other.fit(x[:-1], y[:-1], epochs=4, resume=ckpt, **kw)
    wider = Sequential([Conv2d(4, 3), ReLU(), Flatten(), Dense(2)], input_shape=(1, 8, 8))
    with pytest.raises(CheckpointError, match="network differs"):
        wider.fit(x, y, epochs=4, resume=ckpt, **kw)


class _Stop(Exception):
    pass


def _fit_interrupted(net, x, y, ckpt, kw):
    def stop(rec):
        if rec["epoch"] == 2:
            raise _Stop()
    with pytest.raises(_Stop):
        net.fit(x, y, epochs=4, checkpoint=ckpt, on_epoch=stop, **kw)


def test_bad_checkpoint(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a cnnrt.train checkpoint"):
        load_checkpoint(tmp_path / "other.npz")


def test_lr_schedules():
    cos = LRSchedule("cosine", 1.0, 10, final=0.0)
    assert cos(0) == 1.0 and abs(cos(5) - 0.5) < 1e-12 and abs(cos(10)) < 1e-12
    step = LRSchedule("step", 1.0, 9, step_size=3, gamma=0.5)
    assert [step(e) for e in (0, 2.9, 3, 6.5)] == [1.0, 1.0, 0.5, 0.25]
    warm = LRSchedule("cosine", 1.0, 10, warmup=2)
    assert warm(0) == pytest.approx(0.1) and warm(2) == pytest.approx(1.0)
    assert LRSchedule("constant", 0.3, 5)(4) == 0.3
    with pytest.raises(ValueError, match="schedule"):
        LRSchedule("linear", 1.0, 5)


def test_bad_arguments():
    x, y = stripes(8)
    with pytest.raises(ValueError, match="unknown architecture"):
        ct.fit(x, y, arch="resnet")
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        Sequential([Flatten(), Dense(2)], input_shape=(1, 8, 8)).fit(x, y + 1, epochs=1)
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\)"):
        Sequential([Flatten(), Dense(2)], input_shape=(1, 8, 8)).fit(x[:, :, :4], y, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        Sequential([Flatten(), Dense(2)], input_shape=(1, 8, 8)).fit(x, y, epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        Sequential([Flatten(), Dense(2)], input_shape=(1, 8, 8)).fit(x, y, optimizer="lbfgs")
    with pytest.raises(ValueError, match="leaves no output"):
        Sequential([Conv2d(2, 9), Flatten(), Dense(2)], input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="divisible by groups"):
        Sequential([Conv2d(4, 3, groups=2), Flatten(), Dense(2)], input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="vector of class scores"):
        Sequential([Conv2d(2, 3)], input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="padding"):
        MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="dropout rate"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="learning rate"):
        ct.Adam(lr=-1)


def test_loss_blowup_is_reported():
    x, y = stripes(32)
    net = Sequential([Flatten(), Dense(2)], input_shape=(1, 8, 8))
    with pytest.raises(FloatingPointError, match="lower learning rate"):
        net.fit(x * 1e30, y, epochs=3, optimizer="sgd", lr=1e30)
