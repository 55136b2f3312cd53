"""The float32 training kernels of cnnrt._train against float64 NumPy references
(every GEMM micro-kernel variant, odd shapes), thread-count independence, and
the optimizer and augmentation kernels."""
import numpy as np
import pytest

from cnnrt import _train as T

def _supported(isa):
    try:
        T.set_isa(isa)
    except ValueError:
        return False
    finally:
        T.set_isa("best")
    return True


ISAS = [isa for isa in ("scalar", "avx2", "avx512") if _supported(isa)]


@pytest.fixture(params=ISAS)
def isa(request):
    T.set_isa(request.param)
    yield request.param
    T.set_isa("best")


# --------------------------------------------------------------------------
# References (float64 NumPy)
# --------------------------------------------------------------------------

def conv_ref(x, w, b, stride, pad, dil, groups):
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    pt, pl, pb, pr = pad
    sh, sw = stride
    dh, dw = dil
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr))
    xp[:, :, pt:pt + H, pl:pl + W] = x
    H2 = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    W2 = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, K, H2, W2))
    Kg = K // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * Cg:(g + 1) * Cg,
                           i * dh:i * dh + sh * (H2 - 1) + 1:sh,
                           j * dw:j * dw + sw * (W2 - 1) + 1:sw]
                y[:, g * Kg:(g + 1) * Kg] += np.einsum("nchw,kc->nkhw", patch,
                                                       w[g * Kg:(g + 1) * Kg, :, i, j])
    return y + b[None, :, None, None]


def pool_ref(x, kernel, stride, pad, kind, include_pad=True):
    N, C, H, W = x.shape
    kh, kw = kernel
    sh, sw = stride
    pt, pl, pb, pr = pad
    H2 = (H + pt + pb - kh) // sh + 1
    W2 = (W + pl + pr - kw) // sw + 1
    y = np.zeros((N, C, H2, W2))
    for oh in range(H2):
        for ow in range(W2):
            i0, j0 = oh * sh - pt, ow * sw - pl
            a, b = max(i0, 0), min(i0 + kh, H)
            c, d = max(j0, 0), min(j0 + kw, W)
            win = x[:, :, a:b, c:d]
            if kind == "max":
                y[:, :, oh, ow] = win.max(axis=(2, 3))
            else:
                cnt = kh * kw if include_pad else (b - a) * (d - c)
                y[:, :, oh, ow] = win.sum(axis=(2, 3)) / cnt
    return y


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(1.0, np.abs(b).max()))


# --------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------

@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (7, 33, 5), (8, 32, 256), (9, 31, 257),
                                   (17, 1030, 3), (64, 65, 300)])
def test_matmul(isa, M, N, K):
    rng = np.random.default_rng(M * 1000 + N)
    a = rng.standard_normal((M, K))
    b = rng.standard_normal((K, N))
    ref = a @ b
    for av, bv in [(a, b), (a.T.copy().T, b.T.copy().T)]:  # C- and F-ordered views
        c = np.empty((M, N), np.float32)
        T.matmul(av.astype(np.float32), bv.astype(np.float32), c, n_threads=2)
        assert _rel(c, ref) < 1e-5
        c2 = np.ones((M, N), np.float32)
        T.matmul(av.astype(np.float32), bv.astype(np.float32), c2, accumulate=True, n_threads=2)
        assert _rel(c2, ref + 1) < 1e-5


def test_matmul_float64_exact():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((13, 21)), rng.standard_normal((21, 17))
    c = np.empty((13, 17))
    T.matmul(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-13, atol=1e-13)


def test_matmul_shape_mismatch():
    with pytest.raises(ValueError, match="shapes"):
        T.matmul(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32),
                 np.zeros((2, 2), np.float32))


# --------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------

CONV = [
    # N, C, H, W, K, (kh, kw), stride, padding, dilation, groups
    (2, 1, 16, 16, 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1),
    (3, 4, 7, 9, 6, (3, 3), (2, 2), (1, 1, 1, 1), (2, 2), 2),
    (2, 3, 5, 5, 4, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (9, 3, 33, 31, 40, (3, 2), (2, 1), (0, 2, 1, 1), (1, 1), 1),
    (2, 2, 40, 37, 3, (3, 3), (1, 3), (1, 1, 1, 1), (3, 1), 1),
    (4, 6, 9, 9, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6),
    (1, 64, 6, 6, 70, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # K over 256 taps
]


@pytest.mark.parametrize("case", CONV)
def test_conv2d_float32(isa, case):
    N, C, H, W, K, k, stride, pad, dil, groups = case
    rng = np.random.default_rng(N * 100 + C)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C // groups) + k)
    b = rng.standard_normal(K)
    ref = conv_ref(x, w, b, stride, pad, dil, groups)
    y = np.empty(ref.shape, np.float32)
    T.conv2d_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), y,
                     stride, pad, dil, groups, 2)
    assert _rel(y, ref) < 1e-5
    # Backward: float32 against the float64 kernels (checked by finite differences).
    dy = rng.standard_normal(ref.shape)
    out = {}
    for dt in (np.float64, np.float32):
        dx, dw, db = np.empty(x.shape, dt), np.empty(w.shape, dt), np.empty(K, dt)
        T.conv2d_backward(x.astype(dt), w.astype(dt), dy.astype(dt), dx, dw, db, stride, pad,
                          dil, groups, True, 2)
        out[dt] = (dx, dw, db)
    for got, want in zip(out[np.float32], out[np.float64]):
        assert _rel(got, want) < 1e-5
    # Without dx, the weight gradients are the same.
    dw2, db2 = np.empty(w.shape, np.float32), np.empty(K, np.float32)
    T.conv2d_backward(x.astype(np.float32), w.astype(np.float32), dy.astype(np.float32),
                      np.empty((0, 0, 0, 0), np.float32), dw2, db2, stride, pad, dil, groups,
                      False, 2)
    np.testing.assert_array_equal(dw2, out[np.float32][1])
    np.testing.assert_array_equal(db2, out[np.float32][2])


def test_conv2d_results_do_not_depend_on_threads():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((13, 3, 12, 11)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    dy = rng.standard_normal((13, 5, 12, 11)).astype(np.float32)
    results = []
    for threads in (1, 2, 3, 5):
        y = np.empty((13, 5, 12, 11), np.float32)
        T.conv2d_forward(x, w, b, y, (1, 1), (1, 1, 1, 1), (1, 1), 1, threads)
        dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
        T.conv2d_backward(x, w, dy, dx, dw, db, (1, 1), (1, 1, 1, 1), (1, 1), 1, True, threads)
        results.append((y, dx, dw, db))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


def test_conv2d_bad_shapes():
    x = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="groups"):
        T.conv2d_forward(x, np.zeros((3, 2, 3, 3), np.float32), np.zeros(3, np.float32),
                         np.zeros((1, 3, 3, 3), np.float32), (1, 1), (0, 0, 0, 0), (1, 1), 2)
    with pytest.raises(ValueError, match="output"):
        T.conv2d_forward(x, np.zeros((3, 4, 3, 3), np.float32), np.zeros(3, np.float32),
                         np.zeros((1, 3, 4, 4), np.float32), (1, 1), (0, 0, 0, 0), (1, 1), 1)


# --------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------

@pytest.mark.parametrize("N,I,O", [(1, 1, 1), (5, 33, 7), (64, 320, 10), (3, 700, 130)])
def test_dense_float32(isa, N, I, O):
    rng = np.random.default_rng(I)
    x, w, b = rng.standard_normal((N, I)), rng.standard_normal((O, I)), rng.standard_normal(O)
    dy = rng.standard_normal((N, O))
    f = np.float32
    y = np.empty((N, O), f)
    T.dense_forward(x.astype(f), w.astype(f), b.astype(f), y, 2)
    assert _rel(y, x @ w.T + b) < 1e-5
    dx, dw, db = np.empty((N, I), f), np.empty((O, I), f), np.empty(O, f)
    T.dense_backward(x.astype(f), w.astype(f), dy.astype(f), dx, dw, db, True, 2)
    assert _rel(dx, dy @ w) < 1e-5
    assert _rel(dw, dy.T @ x) < 1e-5
    assert _rel(db, dy.sum(axis=0)) < 1e-5


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------

POOL = [((2, 2), (2, 2), (0, 0, 0, 0), (2, 3, 8, 8)),
        ((3, 3), (2, 2), (1, 1, 1, 1), (2, 2, 7, 9)),
        ((3, 2), (1, 2), (1, 0, 1, 1), (1, 3, 5, 6)),
        ((2, 2), (1, 1), (0, 0, 0, 0), (3, 1, 4, 5))]


@pytest.mark.parametrize("kernel,stride,pad,shape", POOL)
def test_maxpool_float32(kernel, stride, pad, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    ref = pool_ref(x, kernel, stride, pad, "max")
    y = np.empty(ref.shape, np.float32)
    idx = np.empty(ref.shape, np.int32)
    T.maxpool2d_forward(x.astype(np.float32), y, idx, kernel, stride, pad, 2)
    np.testing.assert_array_equal(y, ref.astype(np.float32))
    # The index points at the winner; the backward pass routes dy there.
    flat = x.reshape(shape[0], shape[1], -1)
    np.testing.assert_array_equal(np.take_along_axis(flat, idx.reshape(shape[0], shape[1], -1), 2)
                                  .reshape(ref.shape), ref)
    dy = rng.standard_normal(ref.shape).astype(np.float32)
    dx = np.empty(shape, np.float32)
    T.maxpool2d_backward(dy, idx, dx, 2)
    want = np.zeros(flat.shape)
    for n in range(shape[0]):
        for c in range(shape[1]):
            np.add.at(want[n, c], idx[n, c].reshape(-1), dy[n, c].reshape(-1))
    np.testing.assert_allclose(dx.reshape(flat.shape), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("kernel,stride,pad,shape", POOL)
def test_avgpool_float32(kernel, stride, pad, shape, include_pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    ref = pool_ref(x, kernel, stride, pad, "avg", include_pad)
    y = np.empty(ref.shape, np.float32)
    T.avgpool2d_forward(x.astype(np.float32), y, kernel, stride, pad, include_pad, 2)
    assert _rel(y, ref) < 1e-6


# --------------------------------------------------------------------------
# element-wise, batchnorm, loss
# --------------------------------------------------------------------------

def test_relu_float32():
    x = np.random.default_rng(0).standard_normal(10007).astype(np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    T.relu_forward(x, y, 2)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dy = np.arange(x.size, dtype=np.float32)
    T.relu_backward(y, dy, dx, 2)
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))


def test_dropout_mask():
    a = np.empty(200000, np.uint8)
    b = np.empty(200000, np.uint8)
    T.dropout_mask(42, 0.3, a, 1)
    T.dropout_mask(42, 0.3, b, 2)
    np.testing.assert_array_equal(a, b)  # same seed, any thread count
    assert abs(a.mean() - 0.7) < 0.005
    T.dropout_mask(43, 0.3, b, 2)
    assert not np.array_equal(a, b)
    x = np.ones(a.size, np.float32)
    y = np.empty_like(x)
    T.dropout_apply(x, a, 1 / 0.7, y, 2)
    np.testing.assert_allclose(y, a / np.float32(0.7), rtol=1e-6)
    with pytest.raises(ValueError, match="rate"):
        T.dropout_mask(1, 1.0, a, 1)


def test_batchnorm_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 25)) * 3 + 1
    g, b = rng.standard_normal(3), rng.standard_normal(3)
    f = np.float32
    y = np.empty(x.shape, f)
    mean, inv, var = np.empty(3), np.empty(3), np.empty(3)
    T.batchnorm_forward_train(x.astype(f), g.astype(f), b.astype(f), 1e-5, y, mean, inv, var, 2)
    m = x.astype(f).astype(np.float64).mean(axis=(0, 2))
    v = x.astype(f).astype(np.float64).var(axis=(0, 2))
    np.testing.assert_allclose(mean, m, rtol=1e-10)
    np.testing.assert_allclose(var, v, rtol=1e-10)
    ref = (x - m[None, :, None]) / np.sqrt(v[None, :, None] + 1e-5) * g[None, :, None] + b[None, :, None]
    assert _rel(y, ref) < 1e-5


def test_softmax_xent_float32():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((7, 5)) * 20).astype(np.float32)
    labels = rng.integers(0, 5, 7)
    probs = np.empty_like(logits)
    losses = np.empty(7)
    loss = T.softmax_xent_forward(logits, labels, probs, losses, 2)
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    np.testing.assert_allclose(losses, lse - z[np.arange(7), labels], rtol=1e-6, atol=1e-6)
    assert abs(loss - losses.mean()) < 1e-12
    np.testing.assert_allclose(probs, np.exp(z - lse[:, None]), rtol=1e-5, atol=1e-7)
    d = np.empty_like(probs)
    T.softmax_xent_backward(probs, labels, 1 / 7, d, 2)
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(d, (probs - onehot) / 7, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="label 5"):
        T.softmax_xent_forward(logits, np.full(7, 5), probs, losses, 1)


# --------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------

@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_update(nesterov):
    rng = np.random.default_rng(0)
    p, v = rng.standard_normal(101), rng.standard_normal(101)
    g = rng.standard_normal(101)
    pr, vr = p.copy(), v.copy()
    T.sgd_update(p, g, v, 0.1, 0.9, 0.01, nesterov, 2)
    gg = g + 0.01 * pr
    vr = 0.9 * vr + gg
    pr = pr - 0.1 * (gg + 0.9 * vr if nesterov else vr)
    np.testing.assert_allclose(v, vr, rtol=1e-14)
    np.testing.assert_allclose(p, pr, rtol=1e-14)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_update(decoupled):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(57)
    m, v = np.zeros(57), np.zeros(57)
    pr, mr, vr = p.copy(), m.copy(), v.copy()
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.05
    for step in range(1, 4):
        g = rng.standard_normal(57)
        T.adam_update(p, g, m, v, lr, b1, b2, eps, wd, step, decoupled, 2)
        if decoupled:
            pr = pr - lr * wd * pr
        else:
            g = g + wd * pr
        mr = b1 * mr + (1 - b1) * g
        vr = b2 * vr + (1 - b2) * g * g
        pr = pr - lr * (mr / (1 - b1 ** step)) / (np.sqrt(vr / (1 - b2 ** step)) + eps)
    np.testing.assert_allclose(p, pr, rtol=1e-12)


def test_shift_flip():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 5, 6)).astype(np.float32)
    shifts = np.array([[1, -2], [0, 0], [-3, 4]], np.int32)
    flips = np.array([0, 1, 1], np.uint8)
    y = np.empty_like(x)
    T.shift_flip(x, shifts, flips, y, 2)
    for n in range(3):
        src = x[n, :, :, ::-1] if flips[n] else x[n]
        ii = np.clip(np.arange(5) - shifts[n, 0], 0, 4)
        jj = np.clip(np.arange(6) - shifts[n, 1], 0, 5)
        np.testing.assert_array_equal(y[n], src[:, ii][:, :, jj])
