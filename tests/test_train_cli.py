"""The cnnrt-train command: a model file with labels, preprocessing and provenance
that cnnrt-run reads; checkpoints, resume, plots and one-line errors."""
import os

import numpy as np
import pytest
from PIL import Image

import cnnrt
from cnnrt.cli import main_run
from cnnrt.format import read_model
from cnnrt.train.cli import main


def make_folder(root):
    """Three visually distinct classes of 12x12 RGB images."""
    rng = np.random.default_rng(0)
    for name, colour in (("blue", (0, 0, 200)), ("green", (0, 180, 0)), ("red", (220, 0, 0))):
        os.makedirs(root / name)
        for i in range(6):
            arr = np.clip(np.array(colour) + rng.normal(0, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(root / name / f"{i}.png")
    return root


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_folder_and_run(tmp_path, capsys):
    data = make_folder(tmp_path / "colours")
    model = tmp_path / "colours.h5"
    code, out, err = run(["--data", data, "--out", model, "--arch", "simple", "--epochs", "3",
                          "--size", "8", "--batch", "4", "--lr", "0.01", "--seed", "3",
                          "--val-split", "0.34", "--threads", "2"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 3
    assert lines[-1].startswith(f"wrote {model}")
    assert not os.path.exists(tmp_path / "colours.ckpt.npz")  # default checkpoint removed

    graph = read_model(model)
    assert graph.labels == ["blue", "green", "red"]
    assert graph.input_shape == (3, 8, 8)
    pre = graph.preprocess
    assert pre["color"] == "RGB" and list(pre["resize"]) == [8, 8] and pre["invert"] == 0
    assert pre["scale"] == pytest.approx(1 / 255) and len(pre["mean"]) == 3
    meta = graph.meta
    for key in ("dataset", "epochs", "best_epoch", "val_accuracy", "trained", "arch", "seed"):
        assert key in meta, key
    assert meta["epochs"] == 3 and meta["arch"] == "simple" and meta["val_samples"] == 6
    assert meta["dataset"] == str(data)

    # cnnrt-run applies the recorded preprocessing and names a class.
    code = main_run([str(model), str(data / "red" / "0.png"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert '"label": "' in out
    probs = cnnrt.load(model).predict_image(data / "green" / "1.png")
    assert probs.shape == (3,) and abs(float(probs.sum()) - 1) < 1e-5


def test_interrupt_resume_and_plot(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from cnnrt.train.network import Sequential

    data = make_folder(tmp_path / "c")
    ckpt = tmp_path / "run.npz"
    common = ["--data", data, "--arch", "simple", "--size", "6", "--batch", "8", "--seed", "1",
              "--epochs", "3"]
    # Ctrl-C during the validation of epoch 2: the checkpoint of epoch 1 remains.
    evaluate = Sequential.evaluate
    calls = []

    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(self, *a, **k)

    monkeypatch.setattr(Sequential, "evaluate", interrupted)
    code, out, err = run(common + ["--out", tmp_path / "a.h5", "--checkpoint", ckpt], capsys)
    assert code == 130 and "--resume" in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "a.h5") and os.path.exists(ckpt)
    monkeypatch.setattr(Sequential, "evaluate", evaluate)

    code, out, err = run(common + ["--out", tmp_path / "a.h5", "--checkpoint", ckpt,
                                   "--resume", "--plot", tmp_path / "curves.png"], capsys)
    assert code == 0, err
    assert [l.split()[1] for l in out.splitlines() if l.startswith("epoch")] == ["2/3", "3/3"]
    assert read_model(tmp_path / "a.h5").meta["epochs"] == 3
    with Image.open(tmp_path / "curves.png") as img:
        assert img.format == "PNG" and img.size[0] > 200

    # The same run without the interruption gives the same weights.
    code, _, err = run(common + ["--out", tmp_path / "b.h5"], capsys)
    assert code == 0, err
    a, b = read_model(tmp_path / "a.h5"), read_model(tmp_path / "b.h5")
    for na, nb in zip(a.nodes, b.nodes):
        for k in na.weights:
            np.testing.assert_array_equal(na.weights[k], nb.weights[k])


@pytest.mark.parametrize("args,code,message", [
    (["--data", "x"], 2, "--out"),
    (["--out", "m.h5"], 2, "exactly one of --data DIR or --dataset digits"),
    (["--data", "x", "--dataset", "digits", "--out", "m.h5"], 2, "exactly one of"),
    (["--data", "nowhere", "--out", "m.h5"], 1, "no such folder: nowhere"),
    (["--dataset", "digits", "--out", "m.h5", "--epochs", "0"], 2, "positive integer"),
    (["--dataset", "digits", "--out", "m.h5", "--arch", "vgg"], 2, "invalid choice"),
    (["--dataset", "digits", "--out", "m.h5", "--resume", "none.npz"], 1, "no checkpoint"),
    (["--dataset", "digits", "--out", "nodir/m.h5"], 1, "no such folder"),
])
def test_errors_are_one_line(tmp_path, capsys, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    got, out, err = run(args, capsys)
    assert got == code
    assert err.count("\n") == 1 and err.startswith("cnnrt-train: error: ")
    assert message in err
    assert not os.path.exists(tmp_path / "m.h5")


def test_digits_one_epoch(tmp_path, capsys):
    pytest.importorskip("sklearn")
    model = tmp_path / "d.h5"
    code, out, err = run(["--dataset", "digits", "--out", model, "--epochs", "1", "--arch",
                          "simple", "--quiet"], capsys)
    assert code == 0, err
    assert out == ""
    g = read_model(model)
    assert g.labels == [str(i) for i in range(10)]
    assert g.preprocess["invert"] == 1 and list(g.preprocess["resize"]) == [16, 16]
    assert "digits" in g.meta["dataset"] and g.meta["val_samples"] == 359


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("digit", range(10))
def test_shipped_digits_model(capsys, digit):
    """models/digits.h5 (trained by cnnrt.train) reads its held-out samples right."""
    model = os.path.join(REPO, "models", "digits.h5")
    sample = os.path.join(REPO, "models", "samples", f"digit_{digit}.png")
    code = main_run([model, sample])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"{sample}: {digit} (probability ")
    g = read_model(model)
    assert g.producer.startswith("cnnrt.train") and g.meta["val_accuracy"] >= 0.97
