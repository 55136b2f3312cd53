"""Every kernel variant against a float64 reference, on the boundaries of its tiling.

The convolution runs as one of several kernels depending on its shape
(packed GEMM in either orientation, Winograd F(4x4,3x3), depthwise planes of
stride 1 or 2, depthwise rows), and each with the scalar, AVX2 or AVX-512
micro-kernels.  These tests force each variant and sweep sizes equal to,
below, above and multiples of the tile sizes (MR=8 channels, NR=32
positions, 128-position blocks, 256-tap blocks, 4x4 Winograd tiles).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnrt
from cnnrt import _engine
from cnnrt import model as model_mod
from cnnrt.format import Graph, node

import numpy_ref as ref

ISAS = [isa for isa in ("scalar", "avx2", "avx512") if _engine.isa_supported(isa)]


@pytest.fixture(params=ISAS)
def isa(request):
    before = _engine.get_isa()
    _engine.set_isa(request.param)
    yield request.param
    _engine.set_isa(before)


@pytest.fixture(params=["packed", "direct", "direct-multi"])
def gemm_path(request, monkeypatch):
    """GEMM convolutions either pack their input or read it in place (one
    grid tile per task, or several sharing each weight block)."""
    direct = request.param != "packed"
    monkeypatch.setattr(model_mod, "USE_DIRECT", direct)
    monkeypatch.setattr(model_mod, "CONV_ROWS", "never")
    if direct:  # every shape, pointwise included, however much the grid wastes
        monkeypatch.setattr(model_mod, "DIRECT_POINTWISE", True)
        monkeypatch.setattr(model_mod, "DIRECT_MIN_EFFICIENCY", 0.0)
        monkeypatch.setattr(model_mod, "DIRECT_SHARED_WEIGHTS",
                            0 if request.param == "direct-multi" else 1 << 40)
    return "direct" if direct else "packed"


def conv_model(c, h, w, k, kernel, stride=1, pad=0, dil=1, groups=1, act="none",
               bias=True, seed=0):
    rng = np.random.default_rng(seed)
    kh, kw = (kernel, kernel) if np.isscalar(kernel) else kernel
    pad = (pad,) * 4 if np.isscalar(pad) else tuple(pad)
    weight = (rng.standard_normal((k, c // groups, kh, kw)) / np.sqrt(c // groups * kh * kw)
              ).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    graph = Graph([node("conv2d", "conv", ["input"], "output",
                        {"weight": weight, "bias": b}, kernel=(kh, kw),
                        stride=(stride, stride), padding=pad, dilation=(dil, dil),
                        groups=groups, activation=act)],
                  input_shape=(c, h, w))
    return graph, weight, b, pad


def check(graph, weight, b, pad, batch=2, seed=1, rtol=1e-4):
    node_ = graph.nodes[0]
    m = cnnrt.Model(graph, threads=2)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + tuple(graph.input_shape)).astype(np.float32)
    got = m.predict(x)
    want = ref.conv2d(x, weight, b, node_.attrs["kernel"], node_.attrs["stride"], pad,
                      node_.attrs["dilation"], node_.attrs["groups"], node_.attrs["activation"])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, np.abs(want).max()))
    # the same bits for any thread count, and for a sample alone or in a batch
    assert np.array_equal(m.predict(x, threads=1), got)
    assert np.array_equal(m.predict(x[-1:])[0], got[-1])
    return m


# GEMM: output channels around MR=8, positions around NR=32 and the
# 128-position block, taps around the 256-tap block.
@pytest.mark.parametrize("k", [1, 7, 8, 9, 33])
@pytest.mark.parametrize("hw", [(4, 8), (5, 7), (8, 16), (11, 12), (9, 29)])
def test_gemm_conv_tile_edges(isa, gemm_path, monkeypatch, k, hw):
    monkeypatch.setattr(model_mod, "USE_WINOGRAD", False)
    monkeypatch.setattr(model_mod, "conv_transposed", lambda p, k: False)
    graph, w, b, pad = conv_model(3, hw[0], hw[1], k, 3, pad=1, act="relu")
    m = check(graph, w, b, pad)
    assert m._plan_variants == [gemm_path]


@pytest.mark.parametrize("c,kernel", [(28, 3), (29, 3), (64, 2), (257, 1), (300, 1)])
def test_gemm_conv_tap_blocks(isa, gemm_path, monkeypatch, c, kernel):
    """Q = C*kh*kw below, at and above one 256-tap block, and several blocks."""
    monkeypatch.setattr(model_mod, "USE_WINOGRAD", False)
    monkeypatch.setattr(model_mod, "conv_transposed", lambda p, k: False)
    graph, w, b, pad = conv_model(c, 6, 7, 10, kernel, pad=kernel // 2)
    m = check(graph, w, b, pad)
    assert m._plan_variants == [gemm_path]


@pytest.mark.parametrize("shape", [
    dict(c=40, h=14, w=20, k=24, kernel=1),
    dict(c=300, h=14, w=14, k=10, kernel=1, act="relu6"),
    dict(c=20, h=28, w=28, k=16, kernel=3, stride=2, pad=1),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_gemm_conv_column_panels_per_thread(isa, monkeypatch, shape, batch):
    """Few column blocks but many column panels and few weights: each thread
    packs and multiplies its own panels (same bits as one thread)."""
    monkeypatch.setattr(model_mod, "USE_WINOGRAD", False)
    monkeypatch.setattr(model_mod, "USE_DIRECT", False)
    monkeypatch.setattr(model_mod, "CONV_ROWS", "never")
    monkeypatch.setattr(model_mod, "conv_transposed", lambda p, k: False)
    graph, w, b, pad = conv_model(**shape)
    m = check(graph, w, b, pad, batch=batch)
    assert m._plan_variants == ["packed"]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shape", [
    dict(c=16, h=7, w=7, k=40, kernel=1),
    dict(c=8, h=5, w=6, k=70, kernel=3, stride=2, pad=(1, 0, 2, 1)),
    dict(c=12, h=9, w=9, k=33, kernel=3, dil=2, pad=2, groups=3),
    dict(c=10, h=4, w=3, k=8, kernel=(2, 3), act="tanh", bias=False),
    # large strided stems (stride phases), and several grid rows per tile
    dict(c=3, h=31, w=35, k=20, kernel=11, stride=4, act="relu"),
    dict(c=5, h=23, w=41, k=16, kernel=7, stride=2, pad=3),
    dict(c=4, h=20, w=6, k=9, kernel=3, stride=3, pad=(2, 1, 0, 2), act="relu6"),
])
def test_gemm_conv_both_orientations(isa, gemm_path, monkeypatch, transposed, shape):
    monkeypatch.setattr(model_mod, "USE_WINOGRAD", False)
    monkeypatch.setattr(model_mod, "conv_transposed", lambda p, k: transposed)
    graph, w, b, pad = conv_model(**shape)
    m = check(graph, w, b, pad, batch=3)
    assert m._plan_ops == ["conv2d"]
    assert m._plan_variants == ["transposed" if transposed else gemm_path]


@pytest.mark.parametrize("shape", [
    # runs of 8 output positions: rows of 1, 7, 8, 9 and 17 positions
    dict(c=3, h=5, w=1, k=5, kernel=3, pad=1),
    dict(c=3, h=9, w=15, k=32, kernel=3, stride=2, pad=1, act="relu"),
    dict(c=4, h=6, w=8, k=33, kernel=1),
    dict(c=2, h=7, w=19, k=31, kernel=3, stride=2, pad=(1, 0, 0, 1), act="relu6"),
    dict(c=5, h=13, w=35, k=9, kernel=3, stride=2, pad=(0, 2, 1, 1)),
    # 11x11 stride 4 (no padding: the input read in place), 7x7 stride 2
    dict(c=3, h=31, w=43, k=40, kernel=11, stride=4, act="relu"),
    dict(c=3, h=23, w=41, k=64, kernel=7, stride=2, pad=3),
    # taps around the 64-tap pass (63, 64, 65, 261, 300: several passes and
    # a remainder); strided 1x1; dilation; no bias
    dict(c=7, h=9, w=11, k=32, kernel=3, stride=2, pad=1),
    dict(c=65, h=6, w=9, k=33, kernel=1, stride=2),
    dict(c=29, h=6, w=10, k=65, kernel=3, stride=2, pad=1),
    dict(c=300, h=7, w=9, k=40, kernel=1, stride=2),
    dict(c=64, h=8, w=8, k=36, kernel=1, stride=2, bias=False),
    dict(c=4, h=12, w=17, k=20, kernel=3, stride=3, dil=2, pad=(2, 1, 0, 2), act="tanh"),
    # more runs than one task holds (16), across images
    dict(c=6, h=40, w=20, k=8, kernel=5, stride=2, pad=2, act="sigmoid"),
])
def test_conv_rows(isa, monkeypatch, shape):
    """Vectors along output channels, taps broadcast from the input in place
    (panels of 48 channels where K is 33, 36, 40 or 65, else of 32)."""
    monkeypatch.setattr(model_mod, "CONV_ROWS", "always")
    monkeypatch.setattr(model_mod, "USE_WINOGRAD", False)
    graph, w, b, pad = conv_model(**shape)
    m = check(graph, w, b, pad, batch=3)
    assert m._plan_variants == ["rows"]
    assert m._plan_panels == [48 if shape["k"] in (33, 36, 40, 65) else 32]


@pytest.mark.parametrize("k,widths", [
    (8, [32]), (32, [32]), (33, [48]), (48, [48]), (64, [32, 32]), (80, [48, 32]),
    (96, [48, 48]), (112, [48, 32, 32]), (128, [48, 48, 32]), (256, [48] * 4 + [32] * 2),
    (512, [48] * 10 + [32]), (1024, [48] * 20 + [32] * 2), (200, [48] * 3 + [32] * 2),
])
def test_pointwise_panels(k, widths, monkeypatch):
    """Channel-blocked pointwise panels cover exactly ceil(K/16) blocks of 16,
    48 channels wide where they can be; the packing puts channel k0 + i of a
    panel of width w at [k0 * C + q * w + i]."""
    assert model_mod.pw_panels(k) == widths
    assert sum(widths) == -(-k // 16) * 16 or widths == [32] * -(-k // 32)
    rng = np.random.default_rng(k)
    weight = rng.standard_normal((k, 5, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    packed, b2 = model_mod.pack_pointwise_panels(weight, bias, widths)
    assert packed.size == sum(widths) * 5 and b2.size == sum(widths)
    k0 = 0
    for w in widths:
        panel = packed[k0 * 5:(k0 + w) * 5].reshape(5, w)
        real = max(0, min(w, k - k0))
        np.testing.assert_array_equal(panel[:, :real].T, weight[k0:k0 + real, :, 0, 0])
        assert not panel[:, real:].any()
        k0 += w
    np.testing.assert_array_equal(b2[:k], bias)
    assert not b2[k:].any()
    monkeypatch.setattr(model_mod, "PW_PANELS48", False)
    assert model_mod.pw_panels(k) == [32] * -(-k // 32)


@pytest.mark.parametrize("k,panel", [
    (1, 32), (16, 32), (32, 32), (33, 48), (40, 48), (48, 48), (49, 32), (64, 32),
    (65, 48), (96, 48), (128, 32), (144, 48), (192, 48), (512, 32),
])
def test_rows_panel_width(k, panel):
    """Panels of 48 channels wherever they leave no more channels empty than 32."""
    assert model_mod.rows_panel(k) == panel
    weight = np.random.default_rng(k).standard_normal((k, 3, 2, 2)).astype(np.float32)
    packed = model_mod.pack_conv_weights_t(weight, 1, panel)
    assert packed.shape == (1, -(-k // panel), 12, panel)
    # panel j, tap q, lane i holds channel j * panel + i's tap q; the rest is zero
    full = packed[0].transpose(0, 2, 1).reshape(-1, 12)
    np.testing.assert_array_equal(full[:k], weight.reshape(k, 12))
    assert not full[k:].any()


@pytest.mark.parametrize("case,rows", [
    (dict(c=3, h=30, w=30, k=32, kernel=7, stride=2, pad=3), True),
    (dict(c=64, h=14, w=14, k=128, kernel=1, stride=2), True),
    (dict(c=128, h=7, w=7, k=128, kernel=3, pad=1), True),  # stride 1, 7 of 8 filled
    (dict(c=3, h=32, w=32, k=32, kernel=3, pad=1), True),
    # too few channels for NR-wide vectors, one group of several, rows that
    # fill their tiles worse than the other orientation, stride-1 pointwise
    (dict(c=3, h=30, w=30, k=16, kernel=7, stride=2, pad=3), False),
    (dict(c=4, h=30, w=30, k=64, kernel=3, stride=2, pad=1, groups=2), False),
    (dict(c=3, h=12, w=12, k=32, kernel=3, pad=1), False),  # rows of 12 fill 12 of 16
    (dict(c=64, h=7, w=7, k=64, kernel=1), False),
])
def test_conv_rows_chosen_where_it_fills_tiles(case, rows):
    graph, w, b, pad = conv_model(**case)
    m = check(graph, w, b, pad)
    assert (m._plan_variants == ["rows"]) == rows


@pytest.mark.parametrize("c,k,h,w,pad", [
    (16, 16, 4, 4, 1), (17, 31, 5, 9, (0, 1, 2, 1)), (24, 40, 13, 11, 1),
    (32, 8, 8, 8, (2, 0, 0, 2)), (300, 33, 6, 7, 1),
])
@pytest.mark.parametrize("act", ["none", "relu6"])
def test_winograd(isa, monkeypatch, c, k, h, w, pad, act):
    monkeypatch.setattr(model_mod, "WINOGRAD_MIN_TILES", 1)  # tiny images exercise the borders
    graph, wt, b, pad = conv_model(c, h, w, k, 3, pad=pad, act=act)
    m = check(graph, wt, b, pad, batch=3)
    assert m._plan_ops == (["winograd3x3"] if k >= 16 else ["conv2d"])


@pytest.mark.parametrize("c,h,w,wino", [
    (16, 7, 7, True), (16, 8, 8, True), (16, 12, 8, True), (16, 14, 14, True), (16, 9, 16, True),
    (16, 4, 4, False), (16, 7, 4, False), (16, 56, 56, True),
    # 4 to 7 tiles only with transformed weights that stay in cache
    (128, 8, 8, False), (128, 14, 14, True),
])
def test_winograd_only_with_enough_tiles(c, h, w, wino):
    graph, wt, b, pad = conv_model(c, h, w, 128 if c == 128 else 16, 3, pad=1)
    m = check(graph, wt, b, pad, batch=2)
    assert m._plan_ops == (["winograd3x3"] if wino else ["conv2d"])


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("case", [
    dict(c=5, h=13, w=11, kernel=3, pad=1),
    dict(c=4, h=12, w=17, kernel=5, pad=(2, 1, 0, 2)),
    dict(c=3, h=9, w=9, kernel=3, pad=(0, 2, 1, 0), dil=2),
    dict(c=6, h=2, w=3, kernel=(1, 3), pad=(0, 1, 0, 1)),
    # several 16-column vectors per row, blocks of four rows plus a remainder,
    # interior blocks without masks and border blocks with them
    dict(c=3, h=11, w=37, kernel=3, pad=1),
    dict(c=2, h=14, w=64, kernel=3, pad=(1, 0, 2, 1)),
    dict(c=2, h=9, w=50, kernel=5, pad=2, dil=2),
    # 3x3 and 5x5 taps whose input rows are loaded once per block of rows
    dict(c=2, h=21, w=45, kernel=5, pad=(2, 1, 2, 3)),
    dict(c=2, h=19, w=35, kernel=3, pad=(0, 1, 1, 1)),
    dict(c=2, h=6, w=40, kernel=(3, 17), pad=(1, 8, 1, 8)),
    # channel groups of 16 and a partial group, rows of 8 positions and fewer
    dict(c=37, h=9, w=11, kernel=5, pad=2),
    dict(c=17, h=5, w=6, kernel=3, pad=(1, 0, 1, 2)),
    dict(c=20, h=3, w=3, kernel=3, pad=1),
])
@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize("dw16", [True, False])
def test_depthwise(isa, monkeypatch, stride, case, mult, dw16):
    """Plane by plane, and (multiplier 1, AVX-512) 16 channels at a time."""
    monkeypatch.setattr(model_mod, "DEPTHWISE_16", "always" if dw16 else "never")
    case = dict(case)
    c = case.pop("c")
    graph, w, b, pad = conv_model(c, k=c * mult, groups=c, stride=stride, act="relu", **case)
    m = check(graph, w, b, pad, batch=2)
    assert m._plan_ops == ["depthwise2d"]


def test_variant_switch_is_checked():
    with pytest.raises(ValueError, match="unknown kernel variant"):
        cnnrt.set_isa("sse9")
    assert cnnrt.get_isa() in ISAS


@pytest.mark.parametrize("op", ["maxpool2d", "avgpool2d"])
@pytest.mark.parametrize("case", [
    # several 16-output vectors per row, blocks inside the row and at both borders
    dict(h=9, w=55, kernel=3, stride=2, pad=(0, 0, 0, 0)),
    dict(h=7, w=64, kernel=2, stride=2, pad=(0, 0, 0, 0)),
    dict(h=8, w=40, kernel=3, stride=1, pad=(1, 1, 1, 1)),
    dict(h=6, w=37, kernel=(3, 5), stride=2, pad=(1, 2, 0, 2)),
    dict(h=5, w=50, kernel=3, stride=3, pad=(1, 0, 1, 2)),
    dict(h=4, w=45, kernel=(2, 17), stride=1, pad=(0, 8, 1, 8)),
    # max pooling reduces the input rows of a band of output rows at a time:
    # several bands, windows across their boundaries, and windows taller than a band
    dict(h=150, w=21, kernel=3, stride=2, pad=(1, 1, 1, 1)),
    dict(h=140, w=18, kernel=(5, 2), stride=1, pad=(2, 0, 2, 1)),
    dict(h=70, w=9, kernel=(66, 2), stride=2, pad=(0, 0, 0, 0)),
])
def test_pool_kernels(isa, op, case):
    kh, kw = (case["kernel"],) * 2 if np.isscalar(case["kernel"]) else case["kernel"]
    stride = (case["stride"],) * 2
    graph = Graph([node(op, "pool", ["input"], "output", kernel=(kh, kw), stride=stride,
                        padding=case["pad"], **({"count_include_pad": 1} if op == "avgpool2d" else {}))],
                  input_shape=(3, case["h"], case["w"]))
    m = cnnrt.Model(graph, threads=2)
    x = np.random.default_rng(3).standard_normal((2, 3, case["h"], case["w"])).astype(np.float32)
    got = m.predict(x)
    kind = "max" if op == "maxpool2d" else "avg"
    want = ref.pool2d(x.astype(np.float64), kind, (kh, kw), stride, case["pad"],
                      count_include_pad=1 if kind == "avg" else 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(m.predict(x, threads=1), got)


@pytest.mark.parametrize("kernel,stride,pad", [
    ((3, 3), (2, 2), (1, 1, 1, 1)), ((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 2), (1, 1), (1, 0, 1, 1)),
    ((5, 3), (1, 2), (2, 1, 2, 1))])
def test_maxpool_keeps_first_of_equal_values(isa, kernel, stride, pad):
    """Of equal values (0.0 and -0.0 among them) every kernel returns the
    first in (ky, kx) order, so zero signs agree bit for bit with a scan."""
    rng = np.random.default_rng(11)
    h, w = 70, 37
    x = rng.choice(np.array([0.0, -0.0, -1.0], np.float32), size=(2, 3, h, w))
    graph = Graph([node("maxpool2d", "pool", ["input"], "output", kernel=kernel, stride=stride,
                        padding=pad)], input_shape=(3, h, w))
    got = cnnrt.Model(graph, threads=2).predict(x)
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = kernel, stride, pad
    want = np.empty(got.shape, np.float32)
    for oy in range(got.shape[2]):
        for ox in range(got.shape[3]):
            y0, x0 = oy * sh - pt, ox * sw - pl
            win = x[:, :, max(y0, 0):min(y0 + kh, h), max(x0, 0):min(x0 + kw, w)]
            flat = win.reshape(2, 3, -1)  # (ky, kx) order
            first = np.argmax(flat == flat.max(axis=2, keepdims=True), axis=2)
            want[:, :, oy, ox] = np.take_along_axis(flat, first[..., None], axis=2)[..., 0]
    assert np.array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


@settings(max_examples=60, deadline=None)
@given(c=st.integers(2, 6), k=st.integers(1, 20), h=st.integers(1, 14), w=st.integers(1, 40),
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 4), sw=st.integers(1, 4),
       dil=st.integers(1, 3), pads=st.tuples(*[st.integers(0, 3)] * 4),
       groups=st.sampled_from([1, 2]), multi=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_direct_conv_random(c, k, h, w, kh, kw, sh, sw, dil, pads, groups, multi, seed):
    """The in-place GEMM path on random shapes, strides, dilations and paddings."""
    pt, pl, pb, pr = pads
    if ref.out_size(h, kh, sh, pt, pb, dil) < 1 or ref.out_size(w, kw, sw, pl, pr, dil) < 1:
        return
    c, k = c * groups, k * groups
    saved = {name: getattr(model_mod, name) for name in
             ("USE_WINOGRAD", "USE_DIRECT", "DIRECT_POINTWISE", "DIRECT_MIN_EFFICIENCY",
              "DIRECT_SHARED_WEIGHTS", "conv_transposed", "CONV_ROWS")}
    try:
        model_mod.USE_WINOGRAD = False
        model_mod.CONV_ROWS = "never"
        model_mod.USE_DIRECT = model_mod.DIRECT_POINTWISE = True
        model_mod.DIRECT_MIN_EFFICIENCY = 0.0
        model_mod.DIRECT_SHARED_WEIGHTS = 0 if multi else 1 << 40
        model_mod.conv_transposed = lambda p, q: False
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((k, c // groups, kh, kw)).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32)
        graph = Graph([node("conv2d", "conv", ["input"], "output", {"weight": weight, "bias": b},
                            kernel=(kh, kw), stride=(sh, sw), padding=pads, dilation=(dil, dil),
                            groups=groups, activation="relu")], input_shape=(c, h, w))
        m = cnnrt.Model(graph, threads=2)
        assert m._plan_variants == ["direct"]
        x = rng.standard_normal((2, c, h, w)).astype(np.float32)
        got = m.predict(x)
        want = ref.conv2d(x, weight, b, (kh, kw), (sh, sw), pads, (dil, dil), groups, "relu")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
        assert np.array_equal(m.predict(x, threads=1), got)
    finally:
        for name, value in saved.items():
            setattr(model_mod, name, value)


@settings(max_examples=60, deadline=None)
@given(c=st.integers(2, 6), k=st.integers(1, 40), h=st.integers(1, 14), w=st.integers(1, 30),
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 4), sw=st.integers(1, 4),
       dil=st.integers(1, 3), pads=st.tuples(*[st.integers(0, 3)] * 4),
       batch=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_conv_rows_random(c, k, h, w, kh, kw, sh, sw, dil, pads, batch, seed):
    """Vectors along output channels on random shapes, strides, dilations and paddings."""
    pt, pl, pb, pr = pads
    if ref.out_size(h, kh, sh, pt, pb, dil) < 1 or ref.out_size(w, kw, sw, pl, pr, dil) < 1:
        return
    saved = {name: getattr(model_mod, name) for name in ("USE_WINOGRAD", "CONV_ROWS")}
    try:
        model_mod.USE_WINOGRAD = False
        model_mod.CONV_ROWS = "always"
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((k, c, kh, kw)).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32)
        graph = Graph([node("conv2d", "conv", ["input"], "output", {"weight": weight, "bias": b},
                            kernel=(kh, kw), stride=(sh, sw), padding=pads, dilation=(dil, dil),
                            groups=1, activation="relu")], input_shape=(c, h, w))
        m = cnnrt.Model(graph, threads=2)
        assert m._plan_variants == ["rows"]
        x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
        got = m.predict(x)
        want = ref.conv2d(x, weight, b, (kh, kw), (sh, sw), pads, (dil, dil), 1, "relu")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
        assert np.array_equal(m.predict(x, threads=1), got)
        assert np.array_equal(m.predict(x[:1])[0], got[0])
    finally:
        for name, value in saved.items():
            setattr(model_mod, name, value)


# ------------------------------------------------ channel-blocked chains

def c16_graph(c, h, w, specs, seed=0):
    """A chain of layers from specs: ("dw", kernel, stride, pad, dil, act),
    ("pw", out_channels, act), ("conv", out, kernel, stride, pad, act),
    ("maxpool", kernel, stride, pad), ("add", steps back), ("relu",) or
    ("sigmoid",); tensor t<i> is layer i's output."""
    rng = np.random.default_rng(seed)
    nodes, shape, prev = [], (c, h, w), "input"
    for i, spec in enumerate(specs):
        out = f"t{i}"
        kind = spec[0]
        if kind in ("dw", "pw", "conv"):
            cin = shape[0]
            if kind == "dw":
                _, kernel, stride, pad, dil, act = spec
                k, groups = cin, cin
            elif kind == "pw":
                _, k, act = spec
                kernel, stride, pad, dil, groups = 1, 1, 0, 1, 1
            else:
                _, k, kernel, stride, pad, act = spec
                dil, groups = 1, 1
            pads = (pad,) * 4 if np.isscalar(pad) else tuple(pad)
            fan = cin // groups * kernel * kernel
            wt = (rng.standard_normal((k, cin // groups, kernel, kernel)) / np.sqrt(fan)
                  ).astype(np.float32)
            bias = rng.standard_normal(k).astype(np.float32)
            nodes.append(node("conv2d", f"n{i}", [prev], out, {"weight": wt, "bias": bias},
                              kernel=(kernel, kernel), stride=(stride, stride), padding=pads,
                              dilation=(dil, dil), groups=groups, activation=act))
            ho = ref.out_size(shape[1], kernel, stride, pads[0], pads[2], dil)
            wo = ref.out_size(shape[2], kernel, stride, pads[1], pads[3], dil)
            shape = (k, ho, wo)
        elif kind == "maxpool":
            _, kernel, stride, pad = spec
            pads = (pad,) * 4 if np.isscalar(pad) else tuple(pad)
            nodes.append(node("maxpool2d", f"n{i}", [prev], out, kernel=(kernel, kernel),
                              stride=(stride, stride), padding=pads))
            shape = (shape[0], ref.out_size(shape[1], kernel, stride, pads[0], pads[2]),
                     ref.out_size(shape[2], kernel, stride, pads[1], pads[3]))
        elif kind == "add":
            nodes.append(node("add", f"n{i}", [prev, f"t{i - spec[1]}"], out))
        else:
            nodes.append(node(kind, f"n{i}", [prev], out))
        prev = out
    nodes[-1].outputs[0] = "output"
    return Graph(nodes, input_shape=(c, h, w))


def check_graph(graph, batch=2, seed=1, rtol=1e-4, threads=2):
    m = cnnrt.Model(graph, threads=threads)
    x = np.random.default_rng(seed).standard_normal(
        (batch,) + tuple(graph.input_shape)).astype(np.float32)
    got = m.predict(x)
    want = ref.run_graph(graph, x)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, np.abs(want).max()))
    assert np.array_equal(m.predict(x, threads=1), got)
    assert np.array_equal(m.predict(x[-1:])[0], got[-1])
    return m


@pytest.mark.parametrize("case", [
    # channels that fill blocks, and channels that leave lanes of the last block padded
    dict(c=32, h=12, w=12, specs=[("dw", 3, 1, 1, 1, "relu"), ("pw", 64, "relu")]),
    dict(c=24, h=11, w=13, specs=[("dw", 3, 2, 1, 1, "relu6"), ("pw", 40, "none")]),
    dict(c=17, h=9, w=30, specs=[("dw", 5, 1, 2, 1, "none"), ("pw", 33, "relu6"),
                                 ("dw", 5, 2, (2, 1, 2, 1), 1, "relu")]),
    # dilation, kernels without the register-block path, no padding, wide rows
    dict(c=40, h=10, w=40, specs=[("dw", 3, 1, 2, 2, "relu"), ("pw", 16, "relu"),
                                  ("dw", 7, 1, 3, 1, "none"), ("dw", 3, 3, 0, 1, "relu")]),
    # maps narrower than a block of eight positions, 1x1 maps
    dict(c=48, h=3, w=5, specs=[("dw", 3, 1, 1, 1, "relu"), ("pw", 96, "relu"),
                                ("dw", 3, 2, 0, 1, "relu"), ("pw", 8, "none")]),
    # more input channels than one block of taps (256), residual add, an
    # element-wise layer, a tensor read inside and outside the chain
    dict(c=272, h=6, w=7, specs=[("pw", 24, "none"), ("dw", 3, 1, 1, 1, "relu6"),
                                 ("pw", 24, "none"), ("add", 2), ("sigmoid",),
                                 ("dw", 3, 1, 1, 1, "none"), ("add", 2), ("relu",)]),
    # a convolution with vectors along output channels writing the chain's input
    dict(c=3, h=33, w=31, specs=[("conv", 32, 3, 2, 1, "relu6"), ("dw", 3, 1, 1, 1, "relu6"),
                                 ("pw", 24, "none"), ("dw", 3, 2, 1, 1, "none")]),
    # ... or a max pool's (with padding, overlapping windows, then another
    # convolution on planes)
    dict(c=3, h=40, w=31, specs=[("conv", 32, 5, 2, 2, "relu"), ("maxpool", 3, 2, 1),
                                 ("conv", 8, 3, 1, 1, "none")]),
    dict(c=3, h=47, w=47, specs=[("conv", 96, 11, 4, 0, "relu"), ("maxpool", 3, 2, 0)]),
    # panels of 48 channels: three blocks of 16 per panel, the last one
    # partly padded (40 channels), or three panels (144)
    dict(c=3, h=21, w=31, specs=[("conv", 40, 3, 2, 1, "relu"), ("dw", 3, 1, 1, 1, "relu"),
                                 ("pw", 24, "none")]),
    dict(c=5, h=18, w=27, specs=[("conv", 144, 3, 2, 1, "none"), ("maxpool", 2, 2, 0)]),
    # pointwise runs of 7 positions on 7x7 maps (three passes of input
    # channels, a last panel of 8 channels), of 6 on 6x6 and, with a partial
    # run, on 3x3
    dict(c=272, h=7, w=7, specs=[("dw", 3, 1, 1, 1, "relu"), ("pw", 40, "relu6"),
                                 ("dw", 3, 1, 1, 1, "none"), ("pw", 33, "none")]),
    dict(c=48, h=6, w=6, specs=[("dw", 3, 1, 1, 1, "relu"), ("pw", 64, "relu"),
                                ("dw", 3, 2, 1, 1, "relu"), ("pw", 24, "none")]),
    # 5x5 depthwise rows whose inside positions come in blocks of 8, 4, 2 and 1
    dict(c=32, h=7, w=13, specs=[("dw", 5, 1, 2, 1, "relu"), ("pw", 32, "none"),
                                 ("dw", 5, 2, 2, 1, "relu6"), ("pw", 16, "none"),
                                 ("dw", 3, 1, 1, 1, "none"), ("pw", 24, "relu")]),
    # a pool on a partial last block, rows wider than 16 positions
    dict(c=3, h=29, w=75, specs=[("conv", 56, 3, 2, 1, "relu6"),
                                 ("maxpool", 2, 2, (0, 0, 1, 1))]),
    # pointwise panels of 48 channels, then one or two of 32 (80 and 112
    # channels), with a last partial run (9x10: eleven runs of 8 and one of 2)
    dict(c=40, h=9, w=10, specs=[("dw", 3, 1, 1, 1, "relu"), ("pw", 80, "relu6"),
                                 ("dw", 3, 1, 1, 1, "none"), ("pw", 112, "none"),
                                 ("dw", 3, 2, 1, 1, "relu"), ("pw", 200, "relu")]),
    # ... on a map with enough runs that the threads split them, not the panels
    dict(c=16, h=32, w=33, specs=[("dw", 3, 1, 1, 1, "relu"), ("pw", 80, "relu")]),
    # a pool read inside the chain stays channel-blocked
    dict(c=3, h=40, w=31, specs=[("conv", 32, 5, 2, 2, "relu"), ("maxpool", 2, 2, 0),
                                 ("dw", 3, 1, 1, 1, "relu"), ("pw", 20, "none")]),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_c16_chains(isa, monkeypatch, case, batch):
    """Depthwise and pointwise chains on channel-blocked activations, every ISA."""
    monkeypatch.setattr(model_mod, "C16", "always")
    graph = c16_graph(case["c"], case["h"], case["w"], case["specs"])
    m = check_graph(graph, batch=batch)
    # one reorder in, unless a convolution writes the chain's input channel-blocked
    assert m._plan_ops.count("to_c16") == (case["specs"][0][0] != "conv")
    assert "from_c16" in m._plan_ops
    assert m._plan_ops.count("depthwise_c16") == sum(s[0] == "dw" for s in case["specs"])
    assert m._plan_variants.count("c16") == sum(s[0] == "pw" for s in case["specs"])
    assert m._plan_ops.count("maxpool_c16") == sum(s[0] == "maxpool" for s in case["specs"])
    pw_k = [s[1] for s in case["specs"] if s[0] == "pw"]
    assert [p for p, v in zip(m._plan_panels, m._plan_variants) if v == "c16"] == [
        48 if 48 in model_mod.pw_panels(k) else None for k in pw_k]
    if case["specs"][0][0] == "conv":  # written channel-blocked, not reordered
        assert m._plan_ops[0] == "conv2d" and "to_c16" not in m._plan_ops
        assert m._plan_panels[0] == model_mod.rows_panel(case["specs"][0][1])


@pytest.mark.parametrize("k, h, w, stride, act", [
    (16, 23, 24, 2, "relu"),     # one block of 16 channels; runs of 8 and 4
    (24, 21, 21, 2, "relu6"),    # a partial second block; runs of 8 and 3
    (40, 9, 9, 1, "none"),       # a 48-wide panel, its third block partial; runs of 8 and 1
    (80, 11, 29, 2, "relu"),     # two 48-wide panels, the second two blocks; runs of 8 and 7
    (104, 7, 11, 1, "relu"),     # panels of 32: the last one block of 8; runs of 8 and 3
])
@pytest.mark.parametrize("batch", [1, 2])
def test_rows_channel_blocked_stores(isa, monkeypatch, k, h, w, stride, act, batch):
    """Convolutions with vectors along output channels that write a
    channel-blocked chain: every block count and run length, every ISA (on
    AVX-512 the row kernel stores the blocks from its registers)."""
    monkeypatch.setattr(model_mod, "C16", "always")
    monkeypatch.setattr(model_mod, "CONV_ROWS", "always")
    graph = c16_graph(3, h, w, [("conv", k, 3, stride, 1, act), ("dw", 3, 1, 1, 1, "relu"),
                                ("pw", 16, "none")])
    m = check_graph(graph, batch=batch)
    assert m._plan_ops[0] == "conv2d" and m._plan_variants[0] == "rows"
    assert "to_c16" not in m._plan_ops
    assert m._plan_panels[0] == model_mod.rows_panel(k)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("c16", ["always", "never"])
def test_rows_large_tasks_any_thread_count(isa, monkeypatch, threads, c16):
    """Row-kernel tasks with many multiply-adds go to threads as they free up
    (dynamic schedule); the results stay those of one thread, to the bit."""
    monkeypatch.setattr(model_mod, "C16", c16)
    monkeypatch.setattr(model_mod, "CONV_ROWS", "always")
    graph = c16_graph(8, 30, 30, [("conv", 64, 7, 1, 3, "relu"), ("maxpool", 2, 2, 0)])
    m = check_graph(graph, batch=3, threads=threads)
    # 7x7x8 taps, 8 positions by 32 channels and about 16 runs per task:
    # about 3 million flops, past ROWS_DYNAMIC_WORK (2^21)
    assert m._plan_variants[0] == "rows"


@pytest.mark.parametrize("threads", [1, 2])
def test_c16_profile_names_reorders(monkeypatch, threads):
    monkeypatch.setattr(model_mod, "C16", "always")
    graph = c16_graph(16, 8, 8, [("dw", 3, 1, 1, 1, "relu"), ("pw", 16, "relu")])
    m = cnnrt.Model(graph, threads=threads)
    rows = m.profile(np.ones((1, 16, 8, 8), np.float32), repeats=2)
    names = {r["name"]: r["op"] for r in rows}
    assert names["[to c16] input"] == "reorder"
    assert names["[from c16] output"] == "reorder"
    assert names["n0"] == "conv2d" and names["n1"] == "conv2d"


def test_c16_chosen_for_depthwise_chains(monkeypatch):
    """"auto": chains with a depthwise layer and two convolutions of 16 or
    more input channels, on AVX-512 only."""
    chain = c16_graph(32, 10, 10, [("dw", 3, 1, 1, 1, "relu"), ("pw", 32, "relu")])
    lone_dw = c16_graph(32, 10, 10, [("dw", 3, 1, 1, 1, "relu")])
    pointwise = c16_graph(32, 10, 10, [("pw", 32, "relu"), ("pw", 32, "relu")])
    sigmoid_act = c16_graph(32, 10, 10, [("dw", 3, 1, 1, 1, "sigmoid"), ("pw", 32, "relu")])
    conv_pool = c16_graph(3, 32, 32, [("conv", 32, 3, 1, 1, "relu"), ("maxpool", 2, 2, 0)])
    few_channels = c16_graph(8, 10, 10, [("dw", 3, 1, 1, 1, "relu"), ("pw", 8, "relu")])
    before = _engine.get_isa()
    try:
        for isa in ISAS:
            _engine.set_isa(isa)
            ops = cnnrt.Model(chain)._plan_ops
            assert ("depthwise_c16" in ops) == (isa == "avx512"), (isa, ops)
            # the first layer stores its tiles channel-blocked for the pool after it
            ops = cnnrt.Model(conv_pool)._plan_ops
            assert (ops == ["conv2d", "maxpool_c16", "from_c16"]) == (isa == "avx512"), (isa, ops)
            for g in (lone_dw, pointwise, sigmoid_act, few_channels):
                ops = cnnrt.Model(g)._plan_ops
                assert "to_c16" not in ops and "depthwise_c16" not in ops, ops
            monkeypatch.setattr(model_mod, "C16", "never")
            assert "depthwise_c16" not in cnnrt.Model(chain)._plan_ops
            monkeypatch.setattr(model_mod, "C16", "auto")
    finally:
        _engine.set_isa(before)


# ------------------------------------ max pools inside the Winograd transform

@pytest.mark.parametrize("case", [
    # maps whose height and width are multiples of 4, 2 mod 4 (a tile with
    # one row of pooled outputs) and odd (the last row and column dropped)
    dict(c=16, k=16, h=16, w=16, pad=1, act="relu"),
    dict(c=17, k=33, h=10, w=14, pad=1, act="none"),
    dict(c=24, k=70, h=9, w=11, pad=1, act="relu6"),
    dict(c=32, k=20, h=9, w=13, pad=0, act="relu"),
    dict(c=16, k=17, h=6, w=7, pad=(0, 1, 1, 0), act="none"),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_winograd_with_fused_maxpool(isa, monkeypatch, case, batch):
    """A 2x2 stride-2 max pool runs in the Winograd output transform, every
    ISA, channel counts that leave partial blocks of 16 and output-transform
    chunks (64 channels), against the float64 reference; then a ReLU after
    the pool stays a step of its own."""
    monkeypatch.setattr(model_mod, "WINOGRAD_MIN_TILES", 1)
    specs = [("conv", case["k"], 3, 1, case["pad"], case["act"]), ("maxpool", 2, 2, 0)]
    graph = c16_graph(case["c"], case["h"], case["w"], specs)
    m = check_graph(graph, batch=batch)
    assert m._plan_ops == ["winograd3x3"]
    assert m._step_nodes == [["n0", "n1"]]
    graph = c16_graph(case["c"], case["h"], case["w"], specs + [("relu",)])
    m = check_graph(graph, batch=batch)
    assert m._plan_ops == ["winograd3x3", "relu"]


def test_fused_maxpool_keeps_the_unfused_bits(isa, monkeypatch):
    """Ties, and values that overflow to infinities and NaN inside the
    transforms: the fused pool returns exactly the bits of the convolution
    followed by the pooling kernel (which keeps the first greatest value of
    a window and skips a NaN after it)."""
    rng = np.random.default_rng(5)
    c, k, h, w = 16, 24, 12, 10
    wt = rng.choice(np.array([0.0, 1.0, -1.0, 3e38], np.float32), size=(k, c, 3, 3),
                    p=[0.5, 0.2485, 0.2485, 0.003])
    graph = Graph([node("conv2d", "conv", ["input"], "c", {"weight": wt, "bias": None},
                        kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1),
                        groups=1, activation="none"),
                   node("maxpool2d", "pool", ["c"], "output", kernel=(2, 2), stride=(2, 2),
                        padding=(0, 0, 0, 0))], input_shape=(c, h, w))
    x = rng.choice(np.array([0.0, -0.0, 1.0, -2.0], np.float32), size=(2, c, h, w))
    fused = cnnrt.Model(graph, threads=2)
    assert fused._plan_ops == ["winograd3x3"]
    monkeypatch.setattr(model_mod, "POOL_FUSION", "never")
    plain = cnnrt.Model(graph, threads=2)
    assert plain._plan_ops == ["winograd3x3", "maxpool2d"]
    with np.errstate(all="ignore"):
        got, want = fused.predict(x), plain.predict(x)
    # about a third of the convolution's outputs are NaN, a sixth infinite
    assert np.isfinite(got).any() and np.isinf(got).any()
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_maxpool_fuses_only_where_the_tile_holds_it():
    """Not fused: a convolution output read twice, a 3x3 or padded pool, a
    sigmoid before the pool, a convolution that is not Winograd."""
    rng = np.random.default_rng(2)

    def conv(name, inp, out, c, k, kernel=3, act="none", stride=1):
        pad = (kernel // 2,) * 4
        return node("conv2d", name, [inp], out,
                    {"weight": rng.standard_normal((k, c, kernel, kernel)).astype(np.float32),
                     "bias": rng.standard_normal(k).astype(np.float32)},
                    kernel=(kernel, kernel), stride=(stride, stride), padding=pad,
                    dilation=(1, 1), groups=1, activation=act)

    def pool(name, inp, out, kernel=2, stride=2, pad=0, op="maxpool2d"):
        extra = {"count_include_pad": 1} if op == "avgpool2d" else {}
        return node(op, name, [inp], out, kernel=(kernel, kernel), stride=(stride, stride),
                    padding=(pad,) * 4, **extra)

    graphs = {
        "read twice": Graph([conv("a", "input", "c", 16, 16), pool("p", "c", "p"),
                             pool("q", "c", "q", op="avgpool2d"),
                             node("add", "s", ["p", "q"], "output")], input_shape=(16, 16, 16)),
        "3x3 pool": Graph([conv("a", "input", "c", 16, 16), pool("p", "c", "output", 3, 2)],
                          input_shape=(16, 16, 16)),
        "padded pool": Graph([conv("a", "input", "c", 16, 16), pool("p", "c", "output", 2, 2, 1)],
                             input_shape=(16, 16, 16)),
        "sigmoid": Graph([conv("a", "input", "c", 16, 16, act="sigmoid"),
                          pool("p", "c", "output")], input_shape=(16, 16, 16)),
        "5x5 conv": Graph([conv("a", "input", "c", 16, 16, kernel=5), pool("p", "c", "output")],
                          input_shape=(16, 16, 16)),
    }
    x = rng.standard_normal((2, 16, 16, 16)).astype(np.float32)
    for label, graph in graphs.items():
        m = cnnrt.Model(graph, threads=2)
        assert any(op in ("maxpool2d", "maxpool_c16") for op in m._plan_ops), (label, m._plan_ops)
        want = ref.run_graph(graph, x)
        np.testing.assert_allclose(m.predict(x), want, rtol=1e-4,
                                   atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("shape", [(3, 7, 11), (3, 100, 100)])
def test_nonfinite_input_refused(isa, shape):
    """The input check of every ISA finds a single NaN or infinity anywhere
    (vector bodies, the tail of a chunk, across chunks of the parallel pass)
    and lets the largest finite values and subnormals through."""
    g = Graph([node("relu", "r", ["input"], "output")], input_shape=shape)
    m = cnnrt.Model(g, threads=2)
    x = np.random.default_rng(3).standard_normal((2,) + shape).astype(np.float32)
    edge = x.copy()
    edge.flat[::7] = np.finfo(np.float32).max
    edge.flat[1::7] = -np.finfo(np.float32).max
    edge.flat[2::7] = np.finfo(np.float32).tiny / 4  # subnormal
    np.testing.assert_array_equal(m.predict(edge), np.maximum(edge, 0))
    size = x.size
    for at in sorted({0, 15, 16, 17, size // 2 - 1, size // 2, 16384, size - 2, size - 1}):
        for bad in (np.nan, np.inf, -np.inf):
            damaged = x.copy()
            damaged.flat[at % size] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                m.predict(damaged)


def test_pointwise_run_length():
    """Runs of 8 positions unless 7 or 6 leave at least 5% fewer slots empty."""
    want = {1: 6, 9: 6, 15: 8, 16: 8, 25: 7, 36: 6, 42: 7, 49: 7, 64: 8, 100: 8, 196: 8,
            784: 8, 3136: 8}
    for positions, run in want.items():
        assert model_mod.pw_run_length(positions) == run, positions
