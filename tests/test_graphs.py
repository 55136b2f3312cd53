"""Whole graphs against the vectorised float64 reference (tests/reference.py).

Random graphs of every op, drawn by hypothesis, exercise what single-op
tests cannot: the memory plan (buffers reused between tensors, element-wise
ops written over their dying input, free flattens), the plan-level fusions
(an activation folded into the conv, dense or add before it, a batchnorm
folded into the conv before it) and tensors read by several nodes, read
twice by one node, or read after being the graph's output.  Each graph goes
through a file (cnnrt's writer and cnnrt.load) and must give the reference's
values, the same bits with 1 or 2 threads, and the same bits for a sample
alone as inside the batch.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import cnnrt
from cnnrt.format import Graph, node

import reference as ref
from conftest import assert_close, make_model, rand

ACTS = ["none", "relu", "relu6", "sigmoid", "tanh"]


class Builder:
    """Draws a random valid graph, one node at a time, with hypothesis choices."""

    def __init__(self, draw, input_shape):
        self.draw = draw
        self.rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1), label="weights seed"))
        self.tensors = [("input", tuple(input_shape))]
        self.nodes = []

    def pick(self, rank=None, label="input"):
        choices = [t for t in self.tensors if rank is None or len(t[1]) == rank]
        return self.draw(st.sampled_from(choices), label=label) if choices else None

    def emit(self, op, inputs, out_shape, weights=None, **attrs):
        name = f"t{len(self.nodes)}"
        self.nodes.append(node(op, f"{op}{len(self.nodes)}", inputs, name, weights, **attrs))
        self.tensors.append((name, tuple(out_shape)))

    def window(self, shape, dilate, pool):
        """Kernel, stride, padding (and dilation) that leave an output on this image."""
        d = self.draw
        _, h, w = shape
        kh, kw = d(st.integers(1, 4)), d(st.integers(1, 4))
        sh, sw = d(st.integers(1, 3)), d(st.integers(1, 3))
        dil = (d(st.integers(1, 3)), d(st.integers(1, 3))) if dilate else (1, 1)
        top = kh - 1 if pool else 3
        left = kw - 1 if pool else 3
        pad = (d(st.integers(0, top)), d(st.integers(0, left)),
               d(st.integers(0, top)), d(st.integers(0, left)))
        h2 = ref.out_len(h, kh, sh, pad[0], pad[2], dil[0])
        w2 = ref.out_len(w, kw, sw, pad[1], pad[3], dil[1])
        if h2 < 1 or w2 < 1:
            return None
        return (kh, kw), (sh, sw), pad, dil, (h2, w2)

    def step(self):
        d = self.draw
        op = d(st.sampled_from([
            "conv2d", "conv2d", "depthwise", "locally_connected2d", "dense", "maxpool2d",
            "avgpool2d", "l2pool2d", "globalavgpool", "globalmaxpool", "relu", "sigmoid",
            "tanh", "leaky_relu", "clip", "relu6", "batchnorm2d", "softmax", "flatten", "add",
            "concat"]), label="op")
        rng = self.rng
        if op in ("relu", "sigmoid", "tanh"):
            name, shape = self.pick()
            self.emit(op, [name], shape)
        elif op == "relu6":  # the clip the runtime folds into the node before it
            name, shape = self.pick()
            self.emit("clip", [name], shape, min=0.0, max=6.0)
        elif op == "leaky_relu":
            name, shape = self.pick()
            self.emit(op, [name], shape, alpha=d(st.sampled_from([0.0, 0.1, -0.5, 1.5])))
        elif op == "clip":
            name, shape = self.pick()
            lo = d(st.sampled_from([-1.0, -0.25, 0.0]))
            self.emit(op, [name], shape, min=lo, max=lo + d(st.sampled_from([0.5, 2.0])))
        elif op == "batchnorm2d":
            name, shape = self.pick()
            c = shape[0]
            self.emit(op, [name], shape, {"gamma": rand(rng, c), "beta": rand(rng, c),
                                          "mean": rand(rng, c),
                                          "var": np.abs(rand(rng, c)) + 0.25},
                      epsilon=d(st.sampled_from([0.0, 1e-5, 1e-3])))
        elif op == "softmax":
            name, shape = self.pick()
            rank = len(shape)
            axis = d(st.sampled_from(list(range(1, rank + 1)) + list(range(-rank, 0))))
            self.emit(op, [name], shape, axis=axis)
        elif op == "flatten":
            name, shape = self.pick()
            self.emit(op, [name], (int(np.prod(shape)),))
        elif op == "dense":
            name, shape = self.pick()
            n_in = int(np.prod(shape))
            n_out = d(st.integers(1, 12))
            bias = rand(rng, n_out) if d(st.booleans()) else None
            self.emit(op, [name], (n_out,),
                      {"weight": rand(rng, n_out, n_in, scale=1 / np.sqrt(n_in)), "bias": bias},
                      activation=d(st.sampled_from(ACTS)))
        elif op == "add":
            name, shape = self.pick()
            same = [t for t, s in self.tensors if s == shape]
            k = d(st.integers(2, 3))
            self.emit(op, [name] + [d(st.sampled_from(same)) for _ in range(k - 1)], shape)
        elif op == "concat":
            name, shape = self.pick()
            rank = len(shape)
            axis = d(st.sampled_from(list(range(1, rank + 1)) + [-1]))
            a = axis - 1 if axis > 0 else rank - 1
            fits = [(t, s) for t, s in self.tensors
                    if len(s) == rank and all(s[i] == shape[i] for i in range(rank) if i != a)]
            others = [d(st.sampled_from(fits)) for _ in range(d(st.integers(0, 2)))]
            out = list(shape)
            out[a] += sum(s[a] for _, s in others)
            self.emit(op, [name] + [t for t, _ in others], out, axis=axis)
        else:  # ops on images
            picked = self.pick(rank=3)
            if picked is None:
                return
            name, shape = picked
            c, h, w = shape
            if op in ("globalavgpool", "globalmaxpool"):
                self.emit(op, [name], (c, 1, 1))
                return
            win = self.window(shape, dilate=op in ("conv2d", "depthwise", "locally_connected2d"),
                              pool=op.endswith("pool2d"))
            if win is None:
                return
            kernel, stride, pad, dil, (h2, w2) = win
            if op.endswith("pool2d"):
                attrs = dict(kernel=kernel, stride=stride, padding=pad)
                if op == "avgpool2d":
                    attrs["count_include_pad"] = d(st.integers(0, 1))
                self.emit(op, [name], (c, h2, w2), **attrs)
                return
            if op == "depthwise":
                groups = c
                k = c * d(st.integers(1, 2))
            else:
                groups = d(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
                k = groups * d(st.integers(1, 4 if groups > 1 else 10))
            fan_in = (c // groups if op != "locally_connected2d" else c) * kernel[0] * kernel[1]
            if op == "locally_connected2d":
                groups = 1
                wshape = (h2, w2, k, c) + kernel
                bshape = (k, h2, w2)
            else:
                wshape = (k, c // groups) + kernel
                bshape = (k,)
            weights = {"weight": rand(rng, *wshape, scale=1.5 / np.sqrt(fan_in)),
                       "bias": rand(rng, *bshape) if d(st.booleans()) else None}
            self.emit("locally_connected2d" if op == "locally_connected2d" else "conv2d",
                      [name], (k, h2, w2), weights, kernel=kernel, stride=stride, padding=pad,
                      dilation=dil, groups=groups, activation=d(st.sampled_from(ACTS)))


@st.composite
def graphs(draw):
    shape = (draw(st.integers(1, 5), label="C"), draw(st.integers(1, 9), label="H"),
             draw(st.integers(1, 9), label="W"))
    b = Builder(draw, shape)
    for _ in range(draw(st.integers(1, 9), label="nodes")):
        b.step()
    if not b.nodes:
        b.emit("relu", ["input"], shape)
    # usually the last tensor; sometimes an earlier one, leaving later nodes dead
    out = b.tensors[-1][0]
    if draw(st.integers(0, 4), label="earlier output") == 0:
        out = draw(st.sampled_from([t for t, _ in b.tensors[1:]]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]), label="layout")
    return Graph(b.nodes, input_shape=shape, outputs=[out], input_layout=layout)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(), batch=st.integers(1, 4), seed=st.integers(0, 2 ** 16))
def test_random_graph_matches_reference(shared_dir, graph, batch, seed):
    model = make_model(shared_dir, graph, None, threads=2)
    x = rand(np.random.default_rng(seed), batch, *model.input_shape)
    got = model.predict(x)
    assert got.dtype == np.float32
    assert got.shape == (batch,) + tuple(model.output_shape)
    assert_close(got, ref.run_graph(graph, x))
    assert np.array_equal(model.predict(x, threads=1), got)
    assert np.array_equal(model.predict(x[-1:])[0], got[-1])


# ------------------------------------------- fusions the planner performs

def conv(name, src, dst, c, k, rng, act="none", groups=1, bias=True, kernel=3, pad=1):
    return node("conv2d", name, [src], dst,
                {"weight": rand(rng, k, c // groups, kernel, kernel, scale=0.5),
                 "bias": rand(rng, k) if bias else None},
                kernel=(kernel, kernel), stride=(1, 1), padding=(pad,) * 4, dilation=(1, 1),
                groups=groups, activation=act)


def bn(name, src, dst, c, rng, eps=1e-3):
    return node("batchnorm2d", name, [src], dst,
                {"gamma": rand(rng, c), "beta": rand(rng, c), "mean": rand(rng, c),
                 "var": np.abs(rand(rng, c)) + 0.1}, epsilon=eps)


def fusion_cases():
    """(id, nodes, input_shape, outputs) of graphs the planner fuses, or must not."""
    r = np.random.default_rng(0)
    c = 20  # 3x3 convs of >= 16 channels run as Winograd
    return [
        ("conv+relu", [conv("c", "input", "a", 3, 8, r), node("relu", "r", ["a"], "output")],
         (3, 7, 6), None),
        ("conv+clip0..6", [conv("c", "input", "a", 3, 8, r),
                           node("clip", "r", ["a"], "output", min=0.0, max=6.0)], (3, 7, 6), None),
        ("conv+clip-not-relu6", [conv("c", "input", "a", 3, 8, r),
                                 node("clip", "r", ["a"], "output", min=0.0, max=0.5)],
         (3, 7, 6), None),
        ("conv+bn+relu", [conv("c", "input", "a", 3, 8, r, bias=False), bn("bn", "a", "b", 8, r),
                          node("relu", "r", ["b"], "output")], (3, 7, 6), None),
        ("winograd+bn+sigmoid", [conv("c", "input", "a", c, c, r), bn("bn", "a", "b", c, r),
                                 node("sigmoid", "s", ["b"], "output")], (c, 9, 10), None),
        ("depthwise+bn+relu6", [conv("c", "input", "a", 8, 8, r, groups=8), bn("bn", "a", "b", 8, r),
                                node("clip", "r", ["b"], "output", min=0.0, max=6.0)],
         (8, 7, 6), None),
        ("grouped+bn", [conv("c", "input", "a", 6, 9, r, groups=3), bn("bn", "a", "output", 9, r)],
         (6, 5, 5), None),
        ("conv(relu)+bn is not folded",
         [conv("c", "input", "a", 3, 8, r, act="relu"), bn("bn", "a", "output", 8, r)], (3, 7, 6), None),
        ("conv(tanh)+relu", [conv("c", "input", "a", 3, 8, r, act="tanh"),
                             node("relu", "r", ["a"], "output")], (3, 7, 6), None),
        ("conv read twice", [conv("c", "input", "a", 3, 3, r), node("relu", "r", ["a"], "b"),
                             node("add", "s", ["a", "b"], "output")], (3, 7, 6), None),
        ("bn output is graph output", [conv("c", "input", "a", 3, 4, r), bn("bn", "a", "b", 4, r),
                                       node("relu", "r", ["b"], "c")], (3, 5, 5), ["b"]),
        ("conv output is graph output", [conv("c", "input", "a", 3, 4, r),
                                         node("relu", "r", ["a"], "b")], (3, 5, 5), ["a"]),
        ("add+relu in place", [conv("c", "input", "a", 3, 3, r),
                               node("add", "s", ["a", "input", "a"], "b"),
                               node("relu", "r", ["b"], "output")], (3, 7, 6), None),
        ("dense+relu6", [node("dense", "d", ["input"], "a", {"weight": rand(r, 10, 42, scale=3)},
                              activation="none"),
                         node("clip", "c", ["a"], "output", min=0.0, max=6.0)], (1, 6, 7), None),
        ("locally connected+tanh",
         [node("locally_connected2d", "lc", ["input"], "a", {"weight": rand(r, 2, 2, 4, 2, 3, 3)},
               kernel=(3, 3), stride=(2, 2), padding=(1, 0, 0, 0), dilation=(1, 1), groups=1,
               activation="none"),
          node("tanh", "t", ["a"], "output")], (2, 5, 6), None),
        ("graph output is the input", [node("relu", "r", ["input"], "a")], (2, 3, 4), ["input"]),
        ("only a flatten", [node("flatten", "f", ["input"], "output")], (2, 3, 4), None),
        ("element-wise chain over the input",
         [node("relu", "r", ["input"], "a"), node("leaky_relu", "l", ["a"], "b", alpha=0.3),
          node("clip", "c", ["b"], "d", min=-0.5, max=0.5), node("add", "s", ["d", "a"], "output")],
         (3, 4, 4), None),
    ]


@pytest.mark.parametrize("case", fusion_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("batch", [1, 3])
def test_fusion_and_memory_plan(tmp_path, case, batch):
    _, nodes, shape, outputs = case
    kw = {"outputs": outputs} if outputs else {}
    model = make_model(tmp_path, nodes, shape, threads=2, **kw)
    x = rand(np.random.default_rng(batch), batch, *shape)
    got = model.predict(x)
    assert_close(got, ref.run_graph(model.graph, x))
    assert np.array_equal(model.predict(x, threads=1), got)


# which plans read the caller's input where it lies and write the caller's output array
_IN_PLACE_IO = {
    "conv+relu": (True, True),
    "conv read twice": (True, True),
    "add+relu in place": (False, True),  # the sum reads the input through the arena
    "graph output is the input": (False, False),
    "only a flatten": (False, False),
    "element-wise chain over the input": (True, True),
    "dense+relu6": (True, True),
}


@pytest.mark.parametrize("case", fusion_cases(), ids=lambda c: c[0])
def test_caller_arrays_used_in_place(tmp_path, case):
    """Steps read the input from the caller's array and write the output into
    the returned one where the plan allows: the input is never written, and a
    read-only input, a misaligned one and a batch run in chunks give the same
    bits as an aligned copy run whole."""
    name, nodes, shape, outputs = case
    kw = {"outputs": outputs} if outputs else {}
    model = make_model(tmp_path, nodes, shape, threads=2, **kw)
    if name in _IN_PLACE_IO:
        assert (model._plan.ext_in, model._plan.ext_out) == _IN_PLACE_IO[name]
    x = rand(np.random.default_rng(7), 5, *shape)
    want = model.predict(x.copy())
    assert_close(want, ref.run_graph(model.graph, x))
    frozen = x.copy()
    frozen.setflags(write=False)
    assert np.array_equal(model.predict(frozen), want)
    assert np.array_equal(frozen, x)
    raw = np.empty(x.size + 1, dtype=np.float32)[1:]  # 4 bytes past an allocation's start
    raw[:] = x.reshape(-1)
    assert np.array_equal(model.predict(raw.reshape(x.shape)), want)
    assert np.array_equal(raw, x.reshape(-1))
    odd = np.frombuffer(bytearray(x.nbytes + 1), dtype=np.float32, offset=1, count=x.size)
    assert not odd.flags.aligned  # one byte past a float boundary: copied first
    odd = odd.reshape(x.shape)
    odd[...] = x
    assert np.array_equal(model.predict(odd), want)
    before = cnnrt._engine.set_batch_chunk_bytes(1)  # one sample per thread at a time
    try:
        assert np.array_equal(model.predict(x), want)
    finally:
        cnnrt._engine.set_batch_chunk_bytes(before)
    bad = x.copy()
    bad[3].flat[-1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.predict(bad)


def test_stale_buffers_do_not_leak_between_calls():
    """A call after calls on other inputs and batch sizes gives what a fresh model gives."""
    r = np.random.default_rng(5)
    nodes = [conv("c1", "input", "a", 20, 20, r), node("relu", "r", ["a"], "b"),
             node("maxpool2d", "p", ["b"], "c", kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)),
             conv("dw", "c", "d", 20, 20, r, groups=20),
             node("avgpool2d", "ap", ["d"], "e", kernel=(2, 2), stride=(2, 2), padding=(1, 1, 0, 0),
                  count_include_pad=0),
             node("flatten", "f", ["e"], "g"),
             node("dense", "fc", ["g"], "output", {"weight": rand(r, 7, 20 * 3 * 3)},
                  activation="none")]
    graph = Graph(nodes, input_shape=(20, 11, 11))
    x = rand(r, 2, 20, 11, 11)
    fresh = cnnrt.Model(graph).predict(x)
    used = cnnrt.Model(graph)
    for n in (5, 1, 3):
        used.predict(rand(r, n, 20, 11, 11, scale=1e3))
    assert np.array_equal(used.predict(x), fresh)
    assert_close(fresh, ref.run_graph(graph, x))
