"""Every op of the format against the float64 reference in tests/numpy_ref.py.

Random parameters over odd sizes, asymmetric padding, dilation 2 and 3,
groups, strides larger than the kernel, batch 1 and larger; agreement within
1e-4 relative.  Also: determinism across thread counts and batch positions,
concurrent callers, NHWC models, and the checks on predict's input.
"""
import concurrent.futures
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cnnrt
from cnnrt.format import Graph, node, write_model

import numpy_ref as ref

RTOL = 1e-4


def assert_close(got, want):
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * max(1.0, np.abs(want).max()))


def rand(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def run_both(graph, batch=2, seed=0, threads=2, tmp_path=None):
    """Predict with cnnrt (through a file when tmp_path is given) and the reference."""
    if tmp_path is not None:
        path = tmp_path / "m.h5"
        write_model(path, graph)
        model = cnnrt.load(path, threads=threads)
    else:
        model = cnnrt.Model(graph, threads=threads)
    x = rand(np.random.default_rng(seed), batch, *model.input_shape)
    got = model.predict(x)
    assert_close(got, ref.run_graph(graph, x))
    return model, x, got


def single(op, shape, weights=None, **attrs):
    return Graph([node(op, op, ["input"], "output", weights, **attrs)], input_shape=shape)


# ---------------------------------------------------------------- conv2d

@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 6), k=st.integers(1, 9), h=st.integers(1, 13), w=st.integers(1, 13),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 5), sw=st.integers(1, 5),
       dil=st.integers(1, 3), pads=st.tuples(*[st.integers(0, 3)] * 4),
       groups=st.sampled_from([1, 2, 3]), bias=st.booleans(), batch=st.integers(1, 3),
       activation=st.sampled_from(["none", "relu", "relu6", "sigmoid", "tanh"]),
       seed=st.integers(0, 2 ** 16))
def test_conv2d_random(c, k, h, w, kh, kw, sh, sw, dil, pads, groups, bias, batch, activation, seed):
    c, k = c * groups, k * groups
    if ref.out_size(h, kh, sh, pads[0], pads[2], dil) < 1 or \
            ref.out_size(w, kw, sw, pads[1], pads[3], dil) < 1:
        return
    rng = np.random.default_rng(seed)
    g = single("conv2d", (c, h, w),
               {"weight": rand(rng, k, c // groups, kh, kw), "bias": rand(rng, k) if bias else None},
               kernel=(kh, kw), stride=(sh, sw), padding=pads, dilation=(dil, dil),
               groups=groups, activation=activation)
    run_both(g, batch=batch, seed=seed)


@pytest.mark.parametrize("c,mult,stride,dil", [(8, 1, 1, 1), (7, 2, 2, 1), (5, 1, 3, 2), (4, 3, 1, 3)])
def test_conv2d_depthwise(c, mult, stride, dil):
    rng = np.random.default_rng(c)
    g = single("conv2d", (c, 13, 11), {"weight": rand(rng, c * mult, 1, 3, 3), "bias": rand(rng, c * mult)},
               kernel=(3, 3), stride=(stride, stride), padding=(1, 2, 0, 1),
               dilation=(dil, dil), groups=c, activation="relu6")
    run_both(g, batch=3)


def test_conv2d_stride_larger_than_kernel():
    rng = np.random.default_rng(1)
    g = single("conv2d", (3, 17, 19), {"weight": rand(rng, 5, 3, 2, 2)}, kernel=(2, 2),
               stride=(5, 4), padding=(0, 1, 0, 0), dilation=(1, 1), groups=1, activation="none")
    run_both(g, batch=1)


# ------------------------------------------------------ locally connected

@pytest.mark.parametrize("k,kernel,stride,pad,dil", [
    (4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), (3, (2, 3), (2, 1), (0, 2, 1, 0), (2, 1)),
    (2, (1, 1), (3, 3), (0, 0, 0, 0), (1, 1))])
def test_locally_connected2d(k, kernel, stride, pad, dil):
    rng = np.random.default_rng(2)
    c, h, w = 3, 9, 8
    h2 = ref.out_size(h, kernel[0], stride[0], pad[0], pad[2], dil[0])
    w2 = ref.out_size(w, kernel[1], stride[1], pad[1], pad[3], dil[1])
    g = single("locally_connected2d", (c, h, w),
               {"weight": rand(rng, h2, w2, k, c, *kernel), "bias": rand(rng, k, h2, w2)},
               kernel=kernel, stride=stride, padding=pad, dilation=dil, groups=1, activation="tanh")
    run_both(g, batch=2)


# ---------------------------------------------------------------- dense

@pytest.mark.parametrize("shape,out,bias,activation", [
    ((3, 5, 7), 10, True, "none"), ((1, 1, 1), 1, False, "relu"), ((2, 4, 4), 33, True, "sigmoid"),
    ((17, 1, 1), 129, True, "tanh")])
@pytest.mark.parametrize("batch", [1, 5])
def test_dense(shape, out, bias, activation, batch):
    rng = np.random.default_rng(3)
    n_in = int(np.prod(shape))
    g = single("dense", shape, {"weight": rand(rng, out, n_in), "bias": rand(rng, out) if bias else None},
               activation=activation)
    run_both(g, batch=batch)


# --------------------------------------------------------------- pooling

@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(["maxpool2d", "avgpool2d", "l2pool2d"]), h=st.integers(1, 12),
       w=st.integers(1, 12), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 5),
       sw=st.integers(1, 5), pads=st.tuples(*[st.integers(0, 3)] * 4), inc=st.integers(0, 1),
       batch=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_pool_random(op, h, w, kh, kw, sh, sw, pads, inc, batch, seed):
    pt, pl, pb, pr = pads
    if max(pt, pb) >= kh or max(pl, pr) >= kw:
        return
    if ref.out_size(h, kh, sh, pt, pb) < 1 or ref.out_size(w, kw, sw, pl, pr) < 1:
        return
    attrs = dict(kernel=(kh, kw), stride=(sh, sw), padding=pads)
    if op == "avgpool2d":
        attrs["count_include_pad"] = inc
    run_both(single(op, (3, h, w), **attrs), batch=batch, seed=seed)


@pytest.mark.parametrize("op", ["globalavgpool", "globalmaxpool"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (16, 14, 14)])
def test_global_pools(op, shape):
    run_both(single(op, shape), batch=3)


# ------------------------------------------------------------ element-wise

@pytest.mark.parametrize("op,attrs", [
    ("relu", {}), ("sigmoid", {}), ("tanh", {}), ("leaky_relu", {"alpha": 0.1}),
    ("leaky_relu", {"alpha": -2.5}), ("clip", {"min": 0.0, "max": 6.0}),
    ("clip", {"min": -0.5, "max": 0.25}), ("clip", {"min": -np.inf, "max": 1.0})])
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1, 1), (4, 64, 65)])
def test_elementwise(op, attrs, shape):
    run_both(single(op, shape, **attrs), batch=2)


def test_elementwise_large_values():
    g = single("sigmoid", (2, 3, 3))
    model = cnnrt.Model(g)
    x = np.linspace(-200, 200, 36, dtype=np.float32).reshape(2, 2, 3, 3)
    assert_close(model.predict(x), ref.run_graph(g, x))


@pytest.mark.parametrize("shape", [(6, 5, 4), (9, 1, 1)])
def test_batchnorm2d(shape):
    rng = np.random.default_rng(4)
    c = shape[0]
    g = single("batchnorm2d", shape, {"gamma": rand(rng, c), "beta": rand(rng, c),
                                      "mean": rand(rng, c), "var": np.abs(rand(rng, c)) + 0.1},
               epsilon=1e-5)
    run_both(g, batch=3)


def test_batchnorm2d_after_dense():
    rng = np.random.default_rng(5)
    g = Graph([node("dense", "fc", ["input"], "h", {"weight": rand(rng, 7, 12)}, activation="none"),
               node("batchnorm2d", "bn", ["h"], "output",
                    {"gamma": rand(rng, 7), "beta": rand(rng, 7), "mean": rand(rng, 7),
                     "var": np.abs(rand(rng, 7)) + 0.5}, epsilon=1e-3)],
              input_shape=(3, 2, 2))
    run_both(g, batch=4)


@pytest.mark.parametrize("axis", [1, 2, 3, -1, -3])
def test_softmax_image_axes(axis):
    g = single("softmax", (4, 3, 5), axis=axis)
    model, x, got = run_both(g, batch=2)
    np.testing.assert_allclose(got.sum(axis=axis), 1.0, rtol=1e-5)


def test_softmax_after_dense_is_stable():
    rng = np.random.default_rng(6)
    g = Graph([node("dense", "fc", ["input"], "z", {"weight": rand(rng, 10, 12, scale=300.0)},
                    activation="none"),
               node("softmax", "sm", ["z"], "output", axis=1)], input_shape=(3, 2, 2))
    model, x, got = run_both(g, batch=3)
    assert np.isfinite(got).all()


def test_flatten_then_dense_uses_chw_order():
    rng = np.random.default_rng(7)
    g = Graph([node("flatten", "fl", ["input"], "f"),
               node("dense", "fc", ["f"], "output", {"weight": rand(rng, 4, 60)}, activation="none")],
              input_shape=(3, 4, 5))
    run_both(g, batch=2)


def test_add_three_inputs_and_same_tensor_twice():
    g = Graph([node("relu", "r", ["input"], "a"), node("tanh", "t", ["input"], "b"),
               node("add", "add3", ["a", "b", "input"], "c"),
               node("add", "twice", ["c", "c"], "output")], input_shape=(2, 3, 4))
    run_both(g, batch=3)


@pytest.mark.parametrize("axis,shapes", [
    (1, [(2, 3, 4), (5, 3, 4), (1, 3, 4)]), (2, [(2, 3, 4), (2, 1, 4)]), (3, [(2, 3, 4), (2, 3, 2)]),
    (-1, [(2, 3, 4), (2, 3, 1)])])
def test_concat(axis, shapes):
    rng = np.random.default_rng(8)
    nodes, names = [], []
    for i, s in enumerate(shapes):
        c_out = s[0]
        # a 1x1 conv makes each branch's channels; pools reshape its spatial size
        name = f"b{i}"
        nodes.append(node("conv2d", f"conv{i}", ["input"], name,
                          {"weight": rand(rng, c_out, 2, 1, 1)}, kernel=(1, 1), stride=(1, 1),
                          padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, activation="none"))
        if s[1:] != (3, 4):
            kh, kw = 3 - s[1] + 1, 4 - s[2] + 1
            nodes.append(node("maxpool2d", f"pool{i}", [name], name + "p", kernel=(kh, kw),
                              stride=(1, 1), padding=(0, 0, 0, 0)))
            name += "p"
        names.append(name)
    nodes.append(node("concat", "cat", names, "output", axis=axis))
    run_both(Graph(nodes, input_shape=(2, 3, 4)), batch=2)


def test_concat_feature_vectors():
    rng = np.random.default_rng(9)
    g = Graph([node("dense", "a", ["input"], "x", {"weight": rand(rng, 3, 8)}, activation="none"),
               node("dense", "b", ["input"], "y", {"weight": rand(rng, 5, 8)}, activation="none"),
               node("concat", "cat", ["x", "y"], "output", axis=1)], input_shape=(2, 2, 2))
    run_both(g, batch=2)


# --------------------------------------------------- whole-model behaviour

def small_cnn(seed=0):
    rng = np.random.default_rng(seed)
    return Graph([
        node("conv2d", "conv1", ["input"], "c1", {"weight": rand(rng, 8, 3, 3, 3), "bias": rand(rng, 8)},
             kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1,
             activation="relu"),
        node("maxpool2d", "pool1", ["c1"], "p1", kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0)),
        node("conv2d", "conv2", ["p1"], "c2", {"weight": rand(rng, 16, 8, 3, 3)}, kernel=(3, 3),
             stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1, activation="none"),
        node("relu", "relu2", ["c2"], "r2"),
        node("globalavgpool", "gap", ["r2"], "g"),
        node("dense", "fc", ["g"], "z", {"weight": rand(rng, 5, 16), "bias": rand(rng, 5)},
             activation="none"),
        node("softmax", "prob", ["z"], "output", axis=1),
    ], input_shape=(3, 15, 13), labels=list("abcde"))


def test_file_round_trip_and_prediction(tmp_path):
    model, x, got = run_both(small_cnn(), batch=4, tmp_path=tmp_path)
    assert model.labels == list("abcde")
    assert model.output_shape == (5,)


def test_bit_identical_across_threads_and_batch_positions():
    model = cnnrt.Model(small_cnn(1), threads=2)
    x = rand(np.random.default_rng(10), 7, 3, 15, 13)
    got = model.predict(x)
    for threads in (1, 2, 3, 4):
        assert np.array_equal(model.predict(x, threads=threads), got)
    for i in range(7):
        assert np.array_equal(model.predict(x[i:i + 1])[0], got[i])


@contextlib.contextmanager
def batch_chunk_bytes(nbytes):
    """Run batches in chunks of about ``nbytes`` of activations per thread."""
    from cnnrt import _engine
    previous = _engine.set_batch_chunk_bytes(nbytes)
    try:
        yield
    finally:
        _engine.set_batch_chunk_bytes(previous)


def assert_chunked_runs_agree(model, x, want, bad_at, bad=np.nan):
    """The same bits as ``want`` for 1 to 3 threads, and a non-finite value at
    ``bad_at`` (sample, flat index) refused."""
    for threads in (1, 2, 3):
        assert np.array_equal(model.predict(x, threads=threads), want)
    damaged = x.copy()
    damaged[bad_at[0]].flat[bad_at[1]] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.predict(damaged)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_batches_run_in_chunks(layout):
    """A batch runs chunk by chunk (a few samples per thread) with the same
    bits as all at once, and a NaN anywhere in it is still refused."""
    from cnnrt import _engine
    graph = small_cnn(2)
    if layout == "NHWC":
        graph = Graph(graph.nodes, input_shape=graph.input_shape, input_layout="NHWC",
                      labels=graph.labels)
    model = cnnrt.Model(graph, threads=2)
    x = rand(np.random.default_rng(11), 9, *model.input_shape)
    with batch_chunk_bytes(1 << 40):
        whole = model.predict(x)
        assert model._plan.arena_size(9, 2) - model._plan.arena_size(1, 2) > 0
        _engine.set_batch_chunk_bytes(1)  # one sample per thread per chunk
        assert model._plan.arena_size(9, 2) == model._plan.arena_size(2, 2)
        assert_chunked_runs_agree(model, x, whole, bad_at=(8, 5))


def heavy_tail_cnn(seed=0, residual=False):
    """Convolutions on a 20x20 map, then layers whose weights outweigh their
    activations: a 1x1 convolution on 5x5 and a large dense layer (and, with
    ``residual``, a skip connection around the 1x1 convolution)."""
    rng = np.random.default_rng(seed)
    nodes = [
        node("conv2d", "conv1", ["input"], "c1", {"weight": rand(rng, 16, 3, 3, 3)}, kernel=(3, 3),
             stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1, activation="relu"),
        node("maxpool2d", "pool1", ["c1"], "p1", kernel=(4, 4), stride=(4, 4), padding=(0, 0, 0, 0)),
        node("conv2d", "conv2", ["p1"], "c2", {"weight": rand(rng, 64, 16, 3, 3, scale=0.2)},
             kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1,
             activation="relu"),
        node("conv2d", "conv3", ["c2"], "c3", {"weight": rand(rng, 64, 64, 1, 1, scale=0.2),
                                               "bias": rand(rng, 64)},
             kernel=(1, 1), stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1,
             activation="none"),
    ]
    last = "c3"
    if residual:
        nodes.append(node("add", "skip", ["c3", "c2"], "s"))
        last = "s"
    nodes += [
        node("flatten", "flat", [last], "f"),
        node("dense", "fc1", ["f"], "h", {"weight": rand(rng, 300, 64 * 25, scale=0.05),
                                         "bias": rand(rng, 300)}, activation="relu"),
        node("dense", "fc2", ["h"], "output", {"weight": rand(rng, 10, 300)}, activation="none"),
    ]
    return Graph(nodes, input_shape=(3, 20, 20))


@pytest.mark.parametrize("residual", [False, True])
def test_heavy_tail_runs_on_whole_batches(residual):
    """Layers whose weights outweigh their activations run once on the whole
    batch while the rest runs in chunks: the same bits as sample by sample and
    for any chunk size and thread count, and the float64 reference's values."""
    from cnnrt import _engine
    graph = heavy_tail_cnn(residual=residual)
    model = cnnrt.Model(graph, threads=2)
    tail = model._tail_nodes
    assert tail[-3:] == ["flat", "fc1", "fc2"]
    # one tensor crosses into the tail: it cannot start between the two
    # readers of the skip connection's input
    assert tail[0] != "skip"
    assert [r["name"] for r in model.profile(rand(np.random.default_rng(0), 2, 3, 20, 20))]
    x = rand(np.random.default_rng(12), 11, 3, 20, 20)
    got = model.predict(x)
    assert_close(got, ref.run_graph(graph, x))
    for i in range(11):
        assert np.array_equal(model.predict(x[i:i + 1])[0], got[i])
    with batch_chunk_bytes(1):  # head: one sample per thread per chunk
        assert_chunked_runs_agree(model, x, got, bad_at=(9, 7), bad=np.inf)
        # tail chunks of 4 samples (2 per thread), head chunks of 2 within them
        plan = model._plan
        tail_bytes = 4 * (plan.tail_sample_size + plan.tail_scratch_size)
        _engine.set_batch_chunk_bytes(2 * tail_bytes // cnnrt.model.TAIL_CHUNK_FACTOR)
        assert plan.arena_size(11, 2) - plan.arena_size(4, 2) == 0
        assert plan.arena_size(4, 2) > plan.arena_size(2, 2)
        assert np.array_equal(model.predict(x, threads=2), got)
    # without a tail: the same bits
    saved = cnnrt.model.TAIL_MIN_GAIN
    cnnrt.model.TAIL_MIN_GAIN = 1 << 62
    try:
        plain = cnnrt.Model(graph, threads=2)
    finally:
        cnnrt.model.TAIL_MIN_GAIN = saved
    assert plain._tail_nodes == []
    assert np.array_equal(plain.predict(x), got)


def test_no_tail_when_weights_are_light():
    assert cnnrt.Model(small_cnn(0))._tail_nodes == []


@pytest.mark.parametrize("shift", [1, 3, 8, 15])
def test_arena_alignment_does_not_change_results(shift, monkeypatch):
    """The engine moves its arena to a cache-line boundary itself: an arena
    at any float offset gives the same bits.  ``aligned_empty``, which holds
    weights that are not aligned already, starts on a cache line."""
    from cnnrt import _engine
    arr = _engine.aligned_empty(1000)
    assert arr.shape == (1000,) and arr.ctypes.data % 64 == 0
    model = cnnrt.Model(small_cnn(2), threads=2)
    x = rand(np.random.default_rng(5), 3, *model.input_shape)
    want = model.predict(x)
    raw_take = cnnrt.Model._take_arena

    def shifted(self, size):
        base = raw_take(self, size + shift)
        return base[shift:] if base.ctypes.data % 64 == 0 else base[:size]

    monkeypatch.setattr(cnnrt.Model, "_take_arena", shifted)
    model._arenas.clear()
    for threads in (1, 2):
        assert np.array_equal(model.predict(x, threads=threads), want)


def test_shared_model_many_threads():
    model = cnnrt.Model(small_cnn(2), threads=2)
    rng = np.random.default_rng(11)
    batches = [rand(rng, n, 3, 15, 13) for n in (1, 2, 3, 5, 1, 4, 2, 3)]
    serial = [model.predict(b) for b in batches]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            results = list(pool.map(model.predict, batches))
            for a, b in zip(results, serial):
                assert np.array_equal(a, b)


def test_nhwc_model_matches_nchw():
    g = small_cnn(3)
    nhwc = Graph(g.nodes, input_shape=g.input_shape, input_layout="NHWC")
    a, b = cnnrt.Model(g), cnnrt.Model(nhwc)
    assert b.input_shape == (15, 13, 3)
    x = rand(np.random.default_rng(12), 2, 3, 15, 13)
    assert np.array_equal(a.predict(x), b.predict(x.transpose(0, 2, 3, 1)))
    assert_close(b.predict(x.transpose(0, 2, 3, 1)), ref.run_graph(g, x))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float64, np.float16])
def test_any_real_dtype(dtype):
    model = cnnrt.Model(small_cnn(4))
    x = (np.random.default_rng(13).random((2, 3, 15, 13)) * 100).astype(dtype)
    assert_close(model.predict(x), ref.run_graph(model.graph, x.astype(np.float64)))


@pytest.mark.parametrize("x,match", [
    (np.zeros((3, 15, 13)), r"no batch axis.*\(N, 3, 15, 13\)"),
    (np.zeros((2, 3, 13, 15)), r"\(N, 3, 15, 13\)"),
    (np.zeros((2, 15, 13, 3)), r"\(N, 3, 15, 13\)"),
    (np.zeros((2, 3, 15, 13, 1)), r"\(N, 3, 15, 13\)"),
    (np.zeros((0, 3, 15, 13)), r"empty"),
    (np.full((1, 3, 15, 13), np.nan), r"NaN or infinite"),
    (np.full((1, 3, 15, 13), np.inf), r"NaN or infinite"),
    (np.full((1, 3, 15, 13), 1e300), r"NaN or infinite"),
    (np.zeros((1, 3, 15, 13), dtype=complex), r"real numeric"),
    (np.array([["a"]]), r"real numeric"),
])
def test_predict_rejects_bad_input(x, match):
    model = cnnrt.Model(small_cnn(5))
    with pytest.raises(ValueError, match=match):
        model.predict(x)


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_bad_thread_counts(threads):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        cnnrt.Model(small_cnn(), threads=threads)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        cnnrt.Model(small_cnn()).predict(np.zeros((1, 3, 15, 13)), threads=threads)


def test_summary_counts_params_and_macs():
    model = cnnrt.Model(small_cnn())
    rows = {r["name"]: r for r in model.layers()}
    assert rows["conv1"]["params"] == 8 * 3 * 9 + 8
    assert rows["conv1"]["macs"] == 8 * 15 * 13 * 3 * 9
    assert rows["conv2"]["macs"] == 16 * 7 * 6 * 8 * 9
    assert rows["fc"]["macs"] == 16 * 5
    text = model.summary()
    for name in ("conv1", "pool1", "gap", "prob", "total"):
        assert name in text
    total = sum(r["params"] for r in rows.values())
    assert f"{total:,}" in text


def test_profile_names_every_node():
    model = cnnrt.Model(small_cnn())
    rows = model.profile(np.zeros((2, 3, 15, 13), np.float32), repeats=2)
    names = set()
    for r in rows:
        names.update(r["name"].split("+"))
        assert r["ms"] >= 0
    assert names == {n.name for n in model.graph.nodes}
