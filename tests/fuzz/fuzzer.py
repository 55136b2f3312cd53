"""Model-file fuzzer: mutate valid cnnrt files, load each mutant in a child process.

Every mutant must either be refused with ``cnnrt.ModelFormatError`` (with a
message that names the problem) or load and give the float64 reference's
result.  Anything else is a failure: another exception, a crash (the child
dies from a signal), a hang (the child outlives its time limit), a
MemoryError, or wrong values.

The parent imports cnnrt, h5py and the reference once and forks a child per
mutant, so a mutant costs milliseconds: a long run of 100,000 mutants takes
minutes, not hours.  Children run under an address-space limit so that an
attempted huge allocation fails fast instead of taking the machine down.

    python tests/fuzz/run_fuzz.py --count 100000 --seed 1 --jobs 2 --save failures/
"""
import json
import os
import random
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import h5py  # noqa: E402

import cnnrt  # noqa: E402
from cnnrt.format import Graph, node, read_model, write_model  # noqa: E402

import reference  # noqa: E402

CHILD_MEMORY = 6 << 30   # bytes of address space a child may map
TIMEOUT = 30.0           # seconds before a child counts as hung
LOAD_LIMIT = 1 << 30     # memory_limit for cnnrt.load in the children


# ---------------------------------------------------------------- seeds

def seed_graphs():
    """Small valid graphs that together use every op, both layouts, labels and preprocessing."""
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    g1 = Graph([
        node("conv2d", "conv", ["input"], "c", {"weight": r(4, 3, 3, 3), "bias": r(4)}, kernel=(3, 3),
             stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1, activation="relu"),
        node("batchnorm2d", "bn", ["c"], "b", {"gamma": r(4), "beta": r(4), "mean": r(4),
                                              "var": np.abs(r(4)) + 0.5}, epsilon=1e-3),
        node("maxpool2d", "mp", ["b"], "m", kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0)),
        node("conv2d", "dw", ["m"], "d", {"weight": r(4, 1, 3, 3)}, kernel=(3, 3), stride=(1, 1),
             padding=(1, 1, 1, 1), dilation=(1, 1), groups=4, activation="relu6"),
        node("add", "add", ["d", "m"], "a"),
        node("concat", "cat", ["a", "m"], "k", axis=1),
        node("avgpool2d", "ap", ["k"], "p", kernel=(2, 2), stride=(1, 1), padding=(0, 0, 1, 1),
             count_include_pad=0),
        node("flatten", "flat", ["p"], "f"),
        node("dense", "fc", ["f"], "fc", {"weight": r(5, 8 * 4 * 4), "bias": r(5)}, activation="tanh"),
        node("softmax", "sm", ["fc"], "output", axis=1),
    ], input_shape=(3, 8, 8), labels=list("abcde"),
        preprocess={"color": "RGB", "resize": [8, 8], "scale": 1 / 255, "mean": [0.5], "std": [0.25]})
    g2 = Graph([
        node("locally_connected2d", "lc", ["input"], "l", {"weight": r(4, 4, 3, 2, 2, 2), "bias": r(3, 4, 4)},
             kernel=(2, 2), stride=(1, 1), padding=(0, 0, 1, 1), dilation=(1, 1), groups=1,
             activation="sigmoid"),
        node("l2pool2d", "lp", ["l"], "q", kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0)),
        node("leaky_relu", "lr", ["q"], "lr", alpha=0.1),
        node("clip", "clip", ["lr"], "cl", min=-0.5, max=0.5),
        node("sigmoid", "sig", ["cl"], "s"),
        node("tanh", "th", ["s"], "t"),
        node("relu", "relu", ["t"], "u"),
        node("globalmaxpool", "gmp", ["u"], "g1"),
        node("globalavgpool", "gap", ["u"], "g2"),
        node("add", "add", ["g1", "g2"], "output"),
    ], input_shape=(2, 4, 4), input_layout="NHWC", description="fuzz seed")
    return [g1, g2]


def write_seeds(folder):
    paths = []
    for i, g in enumerate(seed_graphs()):
        p = os.path.join(folder, f"seed{i}.h5")
        write_model(p, g)
        paths.append(p)
    for name in ("digits.h5", "demo.h5"):
        src = os.path.join(ROOT, "models", name)
        if os.path.exists(src):
            dst = os.path.join(folder, name)
            shutil.copy(src, dst)
            paths.append(dst)
    return paths


# ---------------------------------------------------------------- mutators

BAD_VALUES = [0, -1, 1 << 40, -(1 << 40), 2 ** 63 - 1, float("nan"), float("inf"), -0.5, 1e300,
              "junk", b"\xff\xfe", [], [1], [1, 2, 3, 4, 5, 6, 7], np.array([[1, 2], [3, 4]]),
              np.array([1.5, 2.5]), True]


def _groups(fh):
    return [fh["nodes"][k] for k in sorted(fh["nodes"].keys())] if "nodes" in fh else []


def _datasets(fh):
    out = []
    for g in _groups(fh):
        for k in g.keys():
            if (isinstance(g.get(k, getlink=True), h5py.HardLink) and isinstance(g[k], h5py.Dataset)
                    and g[k].size < 1 << 22):  # not one an earlier mutation made huge
                out.append((g, k))
    return out


def _set_attr(attrs, key, value):
    if key in attrs:
        del attrs[key]
    if isinstance(value, str):
        attrs[key] = value
    else:
        attrs[key] = value


def m_attr_value(fh, rnd):
    gs = _groups(fh)
    targets = [(g.attrs, k) for g in gs for k in g.attrs.keys()]
    targets += [(fh.attrs, k) for k in fh.attrs.keys()]
    if "meta" in fh:
        targets += [(fh["meta"].attrs, k) for k in fh["meta"].attrs.keys()]
        if "preprocess" in fh["meta"]:
            targets += [(fh["meta/preprocess"].attrs, k) for k in fh["meta/preprocess"].attrs.keys()]
    attrs, key = rnd.choice(targets)
    _set_attr(attrs, key, rnd.choice(BAD_VALUES))
    return f"attr {key} <- bad value"


def m_attr_tweak(fh, rnd):
    """Small numeric changes that often stay valid (exercise the accepted path)."""
    gs = _groups(fh)
    targets = [(g.attrs, k) for g in gs for k in g.attrs.keys()
               if k in ("kernel", "stride", "padding", "dilation", "groups", "axis", "alpha", "min",
                        "max", "epsilon", "count_include_pad")]
    if not targets:
        return "noop"
    attrs, key = rnd.choice(targets)
    v = np.array(attrs[key])
    if v.ndim == 0:
        v = v + rnd.choice([-2, -1, 1, 2, 3])
    else:
        v = v.copy()
        i = rnd.randrange(v.size)
        v.flat[i] = v.flat[i] + rnd.choice([-2, -1, 1, 2, 5])
    _set_attr(attrs, key, v)
    return f"attr {key} tweaked"


def m_attr_delete(fh, rnd):
    targets = [(g.attrs, k) for g in _groups(fh) for k in g.attrs.keys()]
    targets += [(fh.attrs, k) for k in fh.attrs.keys()]
    attrs, key = rnd.choice(targets)
    del attrs[key]
    return f"attr {key} deleted"


def m_root(fh, rnd):
    key = rnd.choice(["input_shape", "input_layout", "format", "format_version", "inputs", "outputs"])
    values = {
        "input_shape": [np.array([0, 8, 8]), np.array([-3, 8, 8]), np.array([100000, 100000, 3]),
                        np.array([3, 100000, 100000]), np.array([3, 8]), np.array([1, 1, 1]),
                        np.array([3, 9, 8]), np.array([2 ** 62, 1, 1])],
        "input_layout": ["NCWH", "", "nhwc", "NHWC", "NCHW"],
        "format": ["cnnrt2", "", "onnx"],
        "format_version": [0, 2, -1, 1 << 40],
        "inputs": [np.array(["x"], dtype=object), np.array(["input", "input"], dtype=object), np.array([], dtype=object)],
        "outputs": [np.array(["nothing"], dtype=object), np.array(["input"], dtype=object),
                    np.array(["c", "output"], dtype=object)],
    }[key]
    v = rnd.choice(values)
    if isinstance(v, np.ndarray) and v.dtype == object:
        if key in fh.attrs:
            del fh.attrs[key]
        fh.attrs.create(key, v, dtype=h5py.string_dtype())
    else:
        _set_attr(fh.attrs, key, v)
    return f"root {key}"


def m_dataset(fh, rnd):
    ds = _datasets(fh)
    if not ds:
        return "noop"
    g, k = rnd.choice(ds)
    data = g[k][()]
    kind = rnd.randrange(8)
    del g[k]
    if kind == 0:
        g.create_dataset(k, data=data.reshape(-1))
    elif kind == 1:
        g.create_dataset(k, data=np.concatenate([data.reshape(-1), [1.0]]).astype(np.float32))
    elif kind == 2:
        g.create_dataset(k, data=data.astype(np.float64))
    elif kind == 3:
        g.create_dataset(k, data=data.astype(np.int32))
    elif kind == 4:
        bad = data.astype(np.float32).copy()
        bad.flat[rnd.randrange(bad.size)] = rnd.choice([np.nan, np.inf, -np.inf])
        g.create_dataset(k, data=bad)
    elif kind == 5:
        g.create_dataset(k, data=np.zeros((0,), np.float32))
    elif kind == 6:
        g.create_dataset(k, data=np.array("text"))
    else:
        g.create_dataset(k, data=(data * 1e30).astype(np.float32))
    return f"dataset {k} kind {kind}"


def m_huge_dataset(fh, rnd):
    """A dataset that declares a huge shape but stores (almost) nothing."""
    ds = _datasets(fh)
    if not ds:
        return "noop"
    g, k = rnd.choice(ds)
    del g[k]
    shape = rnd.choice([(50000, 50000), (1 << 20, 1 << 20), (1 << 31,), (40000, 40000, 1, 1)])
    if rnd.random() < 0.5:
        g.create_dataset(k, shape=shape, dtype=np.float32, chunks=True, compression="gzip", fillvalue=0.0)
    else:
        g.create_dataset(k, shape=shape, dtype=np.float32, chunks=True, fillvalue=1.0)
    return f"huge dataset {k} {shape}"


def m_links(fh, rnd, folder):
    ds = _datasets(fh)
    if not ds:
        return "noop"
    g, k = rnd.choice(ds)
    data = g[k][()]
    del g[k]
    kind = rnd.randrange(4)
    if kind == 0:
        other = os.path.join(folder, "other.h5")
        with h5py.File(other, "w") as o:
            o.create_dataset("w", data=data)
        g[k] = h5py.ExternalLink(other, "/w")
    elif kind == 1:
        g[k] = h5py.SoftLink("/nodes")
    elif kind == 2:
        raw = os.path.join(folder, "raw.bin")
        data.astype(np.float32).tofile(raw)
        g.create_dataset(k, shape=data.shape, dtype=np.float32, external=[(raw, 0, h5py.h5f.UNLIMITED)])
    else:
        other = os.path.join(folder, "src.h5")
        with h5py.File(other, "w") as o:
            o.create_dataset("w", data=data.astype(np.float32))
        layout = h5py.VirtualLayout(shape=data.shape, dtype=np.float32)
        layout[...] = h5py.VirtualSource(other, "w", shape=data.shape)
        g.create_virtual_dataset(k, layout)
    return f"link kind {kind} on {k}"


def m_wiring(fh, rnd):
    gs = _groups(fh)
    kind = rnd.randrange(6)
    if kind == 0 and len(gs) > 1:  # read a tensor written later
        i = rnd.randrange(len(gs) - 1)
        later = gs[rnd.randrange(i + 1, len(gs))].attrs["outputs"]
        gs[i].attrs.create("inputs", np.array([later[0]], dtype=object), dtype=h5py.string_dtype())
        return "read of a later tensor"
    if kind == 1 and len(gs) > 1:  # a tensor written twice
        a, b = rnd.sample(range(len(gs)), 2)
        gs[b].attrs.create("outputs", np.array(gs[a].attrs["outputs"], dtype=object), dtype=h5py.string_dtype())
        return "tensor written twice"
    if kind == 2:  # dangling input
        g = rnd.choice(gs)
        g.attrs.create("inputs", np.array(["nowhere"], dtype=object), dtype=h5py.string_dtype())
        return "dangling input"
    if kind == 3 and gs:  # remove a node
        g = rnd.choice(gs)
        del fh["nodes"][g.name.split("/")[-1]]
        return "node removed"
    if kind == 4 and gs:  # duplicate a node under a new number
        g = rnd.choice(gs)
        fh["nodes"].copy(g, f"{len(gs) + 5:04d}")
        return "node duplicated"
    if kind == 5 and len(gs) > 1:  # swap two nodes' order
        a, b = rnd.sample([g.name.split("/")[-1] for g in gs], 2)
        fh["nodes"].move(a, "tmp")
        fh["nodes"].move(b, a)
        fh["nodes"].move("tmp", b)
        return "nodes reordered"
    return "noop"


def m_meta(fh, rnd):
    if "meta" not in fh:
        fh.create_group("meta")
    m = fh["meta"]
    kind = rnd.randrange(4)
    if kind == 0:
        m.attrs.create("labels", np.array(["only one"], dtype=object), dtype=h5py.string_dtype())
    elif kind == 1:
        p = m.require_group("preprocess")
        key = rnd.choice(["color", "resize", "scale", "mean", "std", "invert"])
        _set_attr(p.attrs, key, rnd.choice(BAD_VALUES))
    elif kind == 2:
        m.attrs["labels"] = 7
    else:
        del fh["meta"]
        fh["meta"] = h5py.SoftLink("/nodes")
    return f"meta kind {kind}"


MUTATORS = [m_attr_value, m_attr_tweak, m_attr_tweak, m_attr_delete, m_root, m_dataset,
            m_huge_dataset, m_links, m_wiring, m_wiring, m_meta]


def mutate_file(seed_path, out_path, rnd, folder):
    """Write a mutant of ``seed_path`` to ``out_path``; returns a description."""
    roll = rnd.random()
    data = open(seed_path, "rb").read()
    if roll < 0.06:  # truncation
        cut = rnd.randrange(0, len(data))
        open(out_path, "wb").write(data[:cut])
        return f"truncated at {cut}"
    if roll < 0.14:  # random byte damage
        buf = bytearray(data)
        for _ in range(rnd.choice([1, 2, 8, 64])):
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        open(out_path, "wb").write(bytes(buf))
        return "byte damage"
    if roll < 0.16:  # not HDF5 at all
        junk = rnd.choice([b"", b"hello", os.urandom(rnd.randrange(1, 4096)), b"\x89HDF\r\n\x1a\n" + os.urandom(64)])
        open(out_path, "wb").write(junk)
        return "not HDF5"
    shutil.copy(seed_path, out_path)
    descs = []
    with h5py.File(out_path, "r+") as fh:
        for _ in range(rnd.choice([1, 1, 1, 2, 3])):
            mut = rnd.choice(MUTATORS)
            try:
                if mut is m_links:
                    descs.append(mut(fh, rnd, folder))
                else:
                    descs.append(mut(fh, rnd))
            except (KeyError, ValueError, TypeError, OSError, IndexError, MemoryError) as exc:
                descs.append(f"{mut.__name__} skipped ({type(exc).__name__})")
    return "; ".join(descs)


# ---------------------------------------------------------------- oracle (in the child)

def check_mutant(path):
    """Returns ('refused', msg) or ('accepted', None); raises AssertionError on a wrong result."""
    try:
        model = cnnrt.load(path, threads=1, memory_limit=LOAD_LIMIT)
    except cnnrt.ModelFormatError as exc:
        msg = str(exc)
        assert msg.strip(), "empty ModelFormatError message"
        return "refused", msg
    graph = read_model(path, memory_limit=LOAD_LIMIT)
    rng = np.random.default_rng(0)
    shape = tuple(model.input_shape)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    got = model.predict(x)
    # the float64 reference, noting whether any tensor leaves float32's range
    # (weights near 1e38 overflow in float32 and legitimately give inf/NaN)
    big = False
    with np.errstate(all="ignore"):
        xr = x.astype(np.float64)
        if graph.input_layout == "NHWC":
            xr = xr.transpose(0, 3, 1, 2)
        env = {graph.inputs[0]: xr}
        for nd in graph.nodes:
            ins = [env[t] for t in nd.inputs]
            out = reference.run_node(nd, ins)
            env[nd.outputs[0]] = out
            # products of huge weights and inputs overflow float32 even when a
            # saturating activation brings the sum back into range
            w = max((float(np.abs(v).max(initial=0)) for v in nd.weights.values()), default=0.0)
            a = max(float(np.abs(i).max(initial=0)) for i in ins)
            big = (big or not np.all(np.isfinite(out)) or np.abs(out).max(initial=0) > 1e30
                   or w * a > 1e30)
        want = env[graph.outputs[0]]
    assert got.shape == want.shape, f"shape {got.shape} != reference {want.shape}"
    if not big:
        scale = max(1.0, float(np.abs(want).max(initial=0)))
        err = float(np.abs(got - want).max(initial=0))
        assert np.all(np.isfinite(got)) and err <= 1e-3 * scale, f"max error {err:.3g} (scale {scale:.3g})"
    return "accepted", None


def _child(path, wfd):
    import faulthandler

    faulthandler.disable()  # a crash is reported by the parent, not dumped here
    if "asan" not in os.environ.get("LD_PRELOAD", ""):  # ASan maps terabytes of shadow memory
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    try:
        outcome, msg = check_mutant(path)
        res = {"outcome": outcome, "message": (msg or "")[:300]}
    except AssertionError as exc:
        res = {"outcome": "wrong", "message": str(exc)[:300]}
    except BaseException as exc:  # noqa: BLE001 - every other exception is a finding
        res = {"outcome": "error", "message": f"{type(exc).__name__}: {exc}"[:300],
               "trace": traceback.format_exc()[-1500:]}
    os.write(wfd, json.dumps(res).encode())
    os.close(wfd)
    os._exit(0)


def run_one(path, timeout=TIMEOUT):
    """Load ``path`` in a forked child; returns a result dict with 'outcome'."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(path, wfd)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(rfd)
            return {"outcome": "hang", "message": f"no answer in {timeout:.0f} s"}
        ready, _, _ = select.select([rfd], [], [], left)
        if ready:
            data = os.read(rfd, 65536)
            if not data:
                break
            chunks.append(data)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"outcome": "crash", "message": f"killed by signal {os.WTERMSIG(status)}"}
    try:
        return json.loads(b"".join(chunks).decode())
    except ValueError:
        return {"outcome": "crash", "message": f"child exited with status {status} and no answer"}


def fuzz(count, seed, save=None, progress=None):
    """Run ``count`` mutants; returns the counts and the list of failures."""
    rnd = random.Random(seed)
    counts = {"tried": 0, "refused": 0, "accepted": 0, "wrong": 0, "error": 0, "crash": 0, "hang": 0}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        seeds = write_seeds(tmp)
        work = os.path.join(tmp, "work")
        os.mkdir(work)
        mutant = os.path.join(work, "mutant.h5")
        for i in range(count):
            desc = mutate_file(rnd.choice(seeds), mutant, rnd, work)
            res = run_one(mutant)
            counts["tried"] += 1
            counts[res["outcome"]] += 1
            if res["outcome"] not in ("refused", "accepted"):
                failures.append({"index": i, "mutation": desc, **res})
                if save:
                    os.makedirs(save, exist_ok=True)
                    shutil.copy(mutant, os.path.join(save, f"mutant{i:07d}.h5"))
                    with open(os.path.join(save, f"mutant{i:07d}.json"), "w") as fh:
                        json.dump(failures[-1], fh, indent=1)
            for extra in os.listdir(work):
                if extra != "mutant.h5":
                    os.unlink(os.path.join(work, extra))
            if progress and (i + 1) % progress == 0:
                print(f"{i + 1} mutants: {counts}", flush=True)
    return counts, failures
