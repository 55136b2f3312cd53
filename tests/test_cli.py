"""The command line (cnnrt.cli): cnnrt-run and cnnrt-inspect.

The commands run in-process (``main_run``/``main_inspect`` with capsys) and
as real processes.  Printed probabilities are checked against a float64
NumPy forward pass of the model file written here, on images decoded and
resized with Pillow directly.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnnrt.cli import main_inspect, main_run
from cnnrt.format import Graph, node, read_model, write_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "models", "demo.h5")
SAMPLES = os.path.join(REPO, "models", "samples")
EXPECTED = {
    "stripes_horizontal.png": "horizontal stripes",
    "stripes_vertical.png": "vertical stripes",
    "checkerboard.png": "checkerboard",
    "blank.png": "blank",
}


def sample(name):
    return os.path.join(SAMPLES, name)


# --------------------------------------------------------------------------
# float64 reference of the ops the test models use
# --------------------------------------------------------------------------

def ref_conv(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (pad[0], pad[2]), (pad[1], pad[3])))
    k, c, kh, kw = w.shape
    h2 = (x.shape[1] - kh) // stride[0] + 1
    w2 = (x.shape[2] - kw) // stride[1] + 1
    out = np.zeros((k, h2, w2))
    for i in range(h2):
        for j in range(w2):
            patch = x[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            out[:, i, j] = np.tensordot(w, patch, axes=3)
    if b is not None:
        out += b[:, None, None]
    return out


def ref_forward(graph, x):
    t = {graph.inputs[0]: np.asarray(x, dtype=np.float64)}
    for n in graph.nodes:
        a = t[n.inputs[0]]
        w = {k: v.astype(np.float64) for k, v in n.weights.items()}
        if n.op == "conv2d":
            assert n.attrs["groups"] == 1 and tuple(n.attrs["dilation"]) == (1, 1)
            y = ref_conv(a, w["weight"], w.get("bias"), n.attrs["stride"], n.attrs["padding"])
        elif n.op == "avgpool2d":
            kh, kw = n.attrs["kernel"]
            assert tuple(n.attrs["stride"]) == (kh, kw) and not any(n.attrs["padding"])
            c, h, wd = a.shape
            y = a[:, :h // kh * kh, :wd // kw * kw].reshape(c, h // kh, kh, wd // kw, kw).mean(axis=(2, 4))
        elif n.op == "globalavgpool":
            y = a.mean(axis=(1, 2), keepdims=True)
        elif n.op == "dense":
            y = w["weight"] @ a.reshape(-1) + w.get("bias", 0.0)
        elif n.op == "softmax":
            e = np.exp(a - a.max())
            y = e / e.sum()
        else:
            raise AssertionError(f"reference has no {n.op}")
        if n.attrs.get("activation") == "relu":
            y = np.maximum(y, 0.0)
        t[n.outputs[0]] = y
    return t[graph.outputs[0]]


def reference_scores(path):
    """Demo model scores: Pillow L + bilinear 32x32, /255, float64 forward pass."""
    graph = read_model(DEMO)
    img = Image.open(path).convert("L").resize((32, 32), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float64)[None] / 255.0
    return ref_forward(graph, x)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def run(capsys, *argv):
    code = main_run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def inspect(capsys, *argv):
    code = main_inspect(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err, prog="cnnrt-run"):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ")
    assert "Traceback" not in err
    return lines[0]


TEXT_LINE = re.compile(r"^(?P<image>.+): (?P<label>.+) \((?P<kind>probability|score) (?P<value>-?\d+\.\d{4})\)$")
TOP_LINE = re.compile(r"^  (?P<label>.+?)\s+\((?P<kind>probability|score) (?P<value>-?\d+\.\d{4})\)$")


@pytest.fixture
def bad_png(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
    return str(path)


# --------------------------------------------------------------------------
# cnnrt-run
# --------------------------------------------------------------------------

def test_demo_samples_are_classified(capsys):
    names = sorted(EXPECTED)
    code, out, err = run(capsys, DEMO, *[sample(n) for n in names])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(names)
    for name, line in zip(names, lines):
        m = TEXT_LINE.match(line)
        assert m, line
        assert m["image"] == sample(name)
        assert m["label"] == EXPECTED[name]
        assert m["kind"] == "probability"
        ref = reference_scores(sample(name))
        assert float(m["value"]) == pytest.approx(ref.max(), abs=1.5e-4)
        assert ref.max() > 0.9


def test_top_k(capsys):
    code, out, err = run(capsys, DEMO, sample("checkerboard.png"), "--top", "3")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{sample('checkerboard.png')}:"
    assert len(lines) == 4
    ref = reference_scores(sample("checkerboard.png"))
    labels = read_model(DEMO).labels
    order = np.argsort(-ref)[:3]
    for line, i in zip(lines[1:], order):
        m = TOP_LINE.match(line)
        assert m, line
        assert m["label"] == labels[i]
        assert float(m["value"]) == pytest.approx(ref[i], abs=1.5e-4)


def test_top_larger_than_classes_shows_all(capsys):
    code, out, _ = run(capsys, DEMO, sample("blank.png"), "--top", "50")
    assert code == 0
    assert len(out.splitlines()) == 1 + 4


def test_json(capsys):
    names = sorted(EXPECTED)
    code, out, err = run(capsys, DEMO, *[sample(n) for n in names], "--json", "--top", "4")
    assert code == 0 and err == ""
    labels = read_model(DEMO).labels
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == len(names)
    for name, rec in zip(names, records):
        assert rec["image"] == sample(name)
        top = rec["top"]
        assert len(top) == 4
        assert top[0]["label"] == EXPECTED[name]
        ref = reference_scores(sample(name))
        for entry in top:
            assert entry["label"] == labels[entry["index"]]
            assert entry["score"] == pytest.approx(ref[entry["index"]], abs=1e-5)
        assert [e["score"] for e in top] == sorted((e["score"] for e in top), reverse=True)
        assert sorted(e["index"] for e in top) == [0, 1, 2, 3]


def test_json_default_is_top_one(capsys):
    code, out, _ = run(capsys, DEMO, sample("stripes_vertical.png"), "--json")
    assert code == 0
    rec = json.loads(out)
    assert [e["label"] for e in rec["top"]] == ["vertical stripes"]


def test_threads_do_not_change_results(capsys):
    images = [sample(n) for n in sorted(EXPECTED)]
    outs = []
    for threads in ("1", "2"):
        code, out, err = run(capsys, DEMO, *images, "--json", "--top", "4", "--threads", threads)
        assert code == 0 and err == ""
        outs.append(out)
    assert outs[0] == outs[1]


def test_scores_without_softmax_or_labels(tmp_path, capsys):
    """A model without softmax prints 'score'; a 2x2x2 output is ranked flattened, by index."""
    w = np.random.default_rng(3).normal(size=(2, 1, 3, 3))
    b = np.array([0.5, -0.25])
    graph = Graph(
        nodes=[node("conv2d", "conv", ["input"], "output", weights={"weight": w, "bias": b},
                    kernel=(3, 3), stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                    groups=1, activation="none")],
        input_shape=(1, 4, 4),
    )
    model_path = tmp_path / "conv.h5"
    write_model(model_path, graph)
    a = np.random.default_rng(4).integers(0, 256, (4, 4), dtype=np.uint8)
    img = tmp_path / "x.png"
    Image.fromarray(a).save(img)
    ref = ref_forward(read_model(model_path), a[None].astype(np.float64)).reshape(-1)

    code, out, err = run(capsys, str(model_path), str(img), "--top", "8")
    assert code == 0 and err == ""
    lines = out.splitlines()[1:]
    assert len(lines) == 8
    order = np.argsort(-ref, kind="stable")
    for line, i in zip(lines, order):
        m = TOP_LINE.match(line)
        assert m, line
        assert m["kind"] == "score" and m["label"] == str(i)
        assert float(m["value"]) == pytest.approx(ref[i], rel=1e-5, abs=1e-3)

    code, out, _ = run(capsys, str(model_path), str(img))
    m = TEXT_LINE.match(out.strip())
    assert m and m["kind"] == "score" and m["label"] == str(order[0])


# --------------------------------------------------------------------------
# cnnrt-run errors
# --------------------------------------------------------------------------

def test_missing_model(tmp_path, capsys):
    missing = str(tmp_path / "nope.h5")
    code, out, err = run(capsys, missing, sample("blank.png"))
    assert code == 1 and out == ""
    assert missing in assert_one_error_line(err)


def test_corrupt_model(tmp_path, capsys):
    path = tmp_path / "random.h5"
    path.write_bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    code, out, err = run(capsys, str(path), sample("blank.png"))
    assert code == 1 and out == ""
    assert str(path) in assert_one_error_line(err)


def test_truncated_model(tmp_path, capsys):
    data = open(DEMO, "rb").read()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: len(data) // 2])
    code, out, err = run(capsys, str(path), sample("blank.png"))
    assert code == 1 and out == ""
    assert_one_error_line(err)


def test_model_is_a_directory(tmp_path, capsys):
    code, _, err = run(capsys, str(tmp_path), sample("blank.png"))
    assert code == 1
    assert_one_error_line(err)


def test_missing_image(tmp_path, capsys):
    missing = str(tmp_path / "nope.png")
    code, out, err = run(capsys, DEMO, missing)
    assert code == 1 and out == ""
    assert missing in assert_one_error_line(err)


def test_corrupt_image(capsys, bad_png):
    code, out, err = run(capsys, DEMO, bad_png)
    assert code == 1 and out == ""
    assert bad_png in assert_one_error_line(err)


def test_empty_and_truncated_images(tmp_path, capsys):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    noise = np.random.default_rng(6).integers(0, 256, (64, 64), dtype=np.uint8)
    full = tmp_path / "full.png"
    Image.fromarray(noise).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:1000])
    for path in (empty, cut):
        code, out, err = run(capsys, DEMO, str(path))
        assert code == 1 and out == ""
        assert str(path) in assert_one_error_line(err)


def test_one_bad_image_among_good_ones(tmp_path, capsys, bad_png):
    missing = str(tmp_path / "missing.png")
    images = [sample("stripes_horizontal.png"), bad_png, sample("checkerboard.png"), missing,
              sample("blank.png")]
    code, out, err = run(capsys, DEMO, *images)
    assert code == 1
    lines = out.splitlines()
    assert [TEXT_LINE.match(line)["label"] for line in lines] == [
        "horizontal stripes", "checkerboard", "blank"]
    errors = err.splitlines()
    assert len(errors) == 2 and "Traceback" not in err
    assert bad_png in errors[0] and missing in errors[1]
    assert all(e.startswith("cnnrt-run: error: ") for e in errors)


@pytest.mark.parametrize("argv", [
    ["--top", "0"], ["--top", "-2"], ["--top", "x"], ["--threads", "0"], ["--threads", "two"],
    ["--unknown"],
])
def test_bad_options(capsys, argv):
    code, out, err = run(capsys, DEMO, sample("blank.png"), *argv)
    assert code == 2 and out == ""
    line = assert_one_error_line(err)
    assert argv[0] in line


def test_missing_arguments(capsys):
    code, out, err = run(capsys, DEMO)
    assert code == 2 and out == ""
    assert "IMAGE" in assert_one_error_line(err)


def test_help(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0 and "--top" in out and "--threads" in out and err == ""


# --------------------------------------------------------------------------
# cnnrt-inspect
# --------------------------------------------------------------------------

def test_inspect_demo(capsys):
    code, out, err = inspect(capsys, DEMO)
    assert code == 0 and err == ""
    graph = read_model(DEMO)
    assert f"producer:     {graph.producer}" in out
    assert "Fixed-weight demonstration model" in out
    assert "[C, H, W] = [1, 32, 32]" in out and "layout NCHW" in out
    assert "output:       'output' [4]" in out
    assert "labels:       4: horizontal stripes, vertical stripes, checkerboard, blank" in out
    assert "color=L" in out and "resize=[32, 32]" in out and "scale=0.00392157" in out
    assert "meta weights:" in out
    for n in graph.nodes:  # the node table
        assert re.search(rf"^{re.escape(n.name)}\s+{n.op}\s", out, re.M)
    assert re.search(r"^total\s+5 nodes\s+60\s+", out, re.M)  # 4*9+4 conv + 4*4+4 dense


def test_inspect_many_labels_and_no_preprocess(tmp_path, capsys):
    labels = [f"class{i}" for i in range(25)]
    graph = Graph(
        nodes=[node("globalavgpool", "gap", ["input"], "pooled"),
               node("dense", "fc", ["pooled"], "output", weights={"weight": np.ones((25, 3))},
                    activation="none")],
        input_shape=(3, 8, 8), labels=labels, meta={"epochs": 3, "dataset": "synthetic"},
    )
    path = tmp_path / "m.h5"
    write_model(path, graph)
    code, out, _ = inspect(capsys, str(path), "--labels", "3")
    assert code == 0
    assert "labels:       25: class0, class1, class2, ... (22 more)" in out
    assert "preprocess:   none" in out
    assert "meta dataset: synthetic" in out and "meta epochs: 3" in out
    assert "written by dense node 'fc'" in out


@pytest.mark.parametrize("content", [None, b"", b"not a model at all" * 50])
def test_inspect_bad_model(tmp_path, capsys, content):
    path = tmp_path / "bad.h5"
    if content is not None:
        path.write_bytes(content)
    code, out, err = inspect(capsys, str(path))
    assert code == 1 and out == ""
    assert str(path) in assert_one_error_line(err, "cnnrt-inspect")


def test_inspect_invalid_graph(tmp_path, capsys):
    """A file that is valid HDF5 but not a valid model: one line naming the node."""
    import h5py

    path = tmp_path / "m.h5"
    shutil.copy(DEMO, path)
    with h5py.File(path, "a") as fh:
        fh["nodes/0000"].attrs["op"] = "conv9d"
    code, out, err = inspect(capsys, str(path))
    assert code == 1 and out == ""
    line = assert_one_error_line(err, "cnnrt-inspect")
    assert "conv9d" in line and "0000" in line
    code, out, err = run(capsys, str(path), sample("blank.png"))
    assert code == 1 and out == ""
    assert "conv9d" in assert_one_error_line(err)


# --------------------------------------------------------------------------
# real processes
# --------------------------------------------------------------------------

def _env():
    """Environment in which a child process imports the cnnrt these tests import.

    The child runs in a scratch folder, so that a source checkout in the
    current folder cannot shadow an installed cnnrt.
    """
    import cnnrt

    env = dict(os.environ)
    where = os.path.dirname(os.path.dirname(os.path.abspath(cnnrt.__file__)))
    env["PYTHONPATH"] = where + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _python_command(func):
    code = f"import sys; from cnnrt.cli import {func}; sys.exit({func}())"
    return [sys.executable, "-c", code]


def test_process_exit_status_and_streams(tmp_path, bad_png):
    images = [sample("stripes_vertical.png"), bad_png]
    proc = subprocess.run(_python_command("main_run") + [DEMO, *images], capture_output=True,
                          text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert TEXT_LINE.match(proc.stdout.strip())["label"] == "vertical stripes"
    assert_one_error_line(proc.stderr)

    proc = subprocess.run(_python_command("main_run") + [DEMO, sample("blank.png"), "--top", "0"],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_error_line(proc.stderr)

    proc = subprocess.run(_python_command("main_inspect") + [str(tmp_path / "none.h5")],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert_one_error_line(proc.stderr, "cnnrt-inspect")


@pytest.mark.skipif(shutil.which("cnnrt-run") is None or shutil.which("cnnrt-inspect") is None,
                    reason="cnnrt console scripts are not installed")
def test_console_scripts(bad_png):
    images = [sample(n) for n in sorted(EXPECTED)]
    proc = subprocess.run(["cnnrt-run", DEMO, *images, "--json", "--threads", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line)["top"][0]["label"] for line in proc.stdout.splitlines()]
    assert got == [EXPECTED[n] for n in sorted(EXPECTED)]

    proc = subprocess.run(["cnnrt-run", DEMO, bad_png], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert_one_error_line(proc.stderr)

    proc = subprocess.run(["cnnrt-inspect", DEMO], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "horizontal stripes" in proc.stdout
