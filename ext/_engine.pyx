# cython: language_level=3
"""cnnrt execution engine: float32 NCHW kernels and the plan executor.

Each kernel splits its work over output elements only (never a reduction
across threads), and every output element is accumulated in one fixed
order, so results are bit-identical whatever the thread count.

The Python side (``cnnrt.model``) validates the model, infers shapes, plans
the arena and describes every node as a ``Step``; :class:`Plan` owns the
step array and :meth:`Plan.run` executes all of it in one ``nogil`` call.
"""
cimport cython
from cython.parallel cimport prange
from libc.math cimport expf, tanhf, sqrtf, INFINITY
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset

import numpy as np

include "engine_types.pxi"

# Work items of element-wise kernels: contiguous chunks of this many floats.
DEF CHUNK = 16384
# GEMM register tile: MR output rows by NR output columns.
DEF MR = 4
DEF NR = 8
# Columns handled by one parallel GEMM task.
DEF NC = 64


# ==========================================================================
# Activations
# ==========================================================================

cdef inline float activate(float v, int act) noexcept nogil:
    if act == ACT_NONE:
        return v
    if act == ACT_RELU:
        return v if v > 0.0 else 0.0
    if act == ACT_RELU6:
        return 0.0 if v < 0.0 else (6.0 if v > 6.0 else v)
    if act == ACT_SIGMOID:
        return 1.0 / (1.0 + expf(-v))
    return tanhf(v)


cdef inline void activate_row(float* y, Py_ssize_t n, int act) noexcept nogil:
    cdef Py_ssize_t i
    if act == ACT_NONE:
        return
    if act == ACT_RELU:
        for i in range(n):
            y[i] = y[i] if y[i] > 0.0 else 0.0
    elif act == ACT_RELU6:
        for i in range(n):
            y[i] = 0.0 if y[i] < 0.0 else (6.0 if y[i] > 6.0 else y[i])
    else:
        for i in range(n):
            y[i] = activate(y[i], act)


# ==========================================================================
# GEMM: Y[M, P] = act(bias + A[M, Q] @ B[Q, P]), all row-major
# ==========================================================================

cdef inline void gemm_tile_full(const float* A, const float* B, float* Y,
                                const float* bias, Py_ssize_t Q, Py_ssize_t P,
                                Py_ssize_t m0, Py_ssize_t p0) noexcept nogil:
    """A full MR x NR tile, accumulated in registers."""
    cdef float acc[MR * NR]
    cdef float a0, a1, a2, a3, bv
    cdef const float* brow
    cdef const float* a_0 = A + (m0 + 0) * Q
    cdef const float* a_1 = A + (m0 + 1) * Q
    cdef const float* a_2 = A + (m0 + 2) * Q
    cdef const float* a_3 = A + (m0 + 3) * Q
    cdef Py_ssize_t q, j, r
    for r in range(MR):
        bv = bias[m0 + r] if bias != NULL else 0.0
        for j in range(NR):
            acc[r * NR + j] = bv
    for q in range(Q):
        brow = B + q * P + p0
        a0 = a_0[q]
        a1 = a_1[q]
        a2 = a_2[q]
        a3 = a_3[q]
        for j in range(NR):
            acc[0 * NR + j] += a0 * brow[j]
            acc[1 * NR + j] += a1 * brow[j]
            acc[2 * NR + j] += a2 * brow[j]
            acc[3 * NR + j] += a3 * brow[j]
    for r in range(MR):
        memcpy(Y + (m0 + r) * P + p0, &acc[r * NR], NR * sizeof(float))


cdef inline void gemm_tile_edge(const float* A, const float* B, float* Y,
                                const float* bias, Py_ssize_t Q, Py_ssize_t P,
                                Py_ssize_t m0, Py_ssize_t mr,
                                Py_ssize_t p0, Py_ssize_t pw) noexcept nogil:
    """A partial tile (mr <= MR rows, pw <= NR columns); same summation order."""
    cdef float acc[MR * NR]
    cdef float a, bv
    cdef const float* brow
    cdef Py_ssize_t q, j, r
    for r in range(mr):
        bv = bias[m0 + r] if bias != NULL else 0.0
        for j in range(pw):
            acc[r * NR + j] = bv
    for q in range(Q):
        brow = B + q * P + p0
        for r in range(mr):
            a = A[(m0 + r) * Q + q]
            for j in range(pw):
                acc[r * NR + j] += a * brow[j]
    for r in range(mr):
        memcpy(Y + (m0 + r) * P + p0, &acc[r * NR], pw * sizeof(float))


cdef void gemm_task(const float* A, const float* B, float* Y, const float* bias,
                    Py_ssize_t M, Py_ssize_t Q, Py_ssize_t P, int act,
                    Py_ssize_t task, Py_ssize_t n_col_tasks) noexcept nogil:
    cdef Py_ssize_t m0 = (task // n_col_tasks) * MR
    cdef Py_ssize_t c0 = (task % n_col_tasks) * NC
    cdef Py_ssize_t c1 = c0 + NC
    cdef Py_ssize_t mr = M - m0
    cdef Py_ssize_t p0, pw, r
    if c1 > P:
        c1 = P
    if mr > MR:
        mr = MR
    p0 = c0
    while p0 < c1:
        pw = c1 - p0
        if pw > NR:
            pw = NR
        if mr == MR and pw == NR:
            gemm_tile_full(A, B, Y, bias, Q, P, m0, p0)
        else:
            gemm_tile_edge(A, B, Y, bias, Q, P, m0, mr, p0, pw)
        p0 += pw
    if act != ACT_NONE:
        for r in range(mr):
            activate_row(Y + (m0 + r) * P + c0, c1 - c0, act)


cdef void gemm_bias_act(const float* A, const float* B, float* Y, const float* bias,
                        Py_ssize_t M, Py_ssize_t Q, Py_ssize_t P, int act,
                        int n_threads) noexcept nogil:
    cdef Py_ssize_t n_col_tasks = (P + NC - 1) // NC
    cdef Py_ssize_t n_tasks = ((M + MR - 1) // MR) * n_col_tasks
    cdef Py_ssize_t t
    for t in prange(n_tasks, schedule="static", num_threads=n_threads):
        gemm_task(A, B, Y, bias, M, Q, P, act, t, n_col_tasks)


# ==========================================================================
# Convolution
# ==========================================================================

cdef void im2col_row(const Step* s, const float* x, float* col, Py_ssize_t row) noexcept nogil:
    """One row (c, ky, kx) of the column matrix [Cg*kh*kw, H2*W2]."""
    cdef Py_ssize_t kx = row % s.kw
    cdef Py_ssize_t ky = (row // s.kw) % s.kh
    cdef Py_ssize_t c = row // (s.kw * s.kh)
    cdef const float* plane = x + c * s.H * s.W
    cdef float* out = col + row * s.H2 * s.W2
    cdef Py_ssize_t oy, ox, iy, ix
    for oy in range(s.H2):
        iy = oy * s.sh - s.pt + ky * s.dh
        if iy < 0 or iy >= s.H:
            memset(out + oy * s.W2, 0, s.W2 * sizeof(float))
            continue
        for ox in range(s.W2):
            ix = ox * s.sw - s.pl + kx * s.dw
            out[oy * s.W2 + ox] = plane[iy * s.W + ix] if 0 <= ix < s.W else 0.0


cdef void conv2d_f32(const Step* s, const float* x, float* y, float* scratch,
                     Py_ssize_t N, int n_threads) noexcept nogil:
    """Grouped convolution as im2col + GEMM per image and group."""
    cdef Py_ssize_t Cg = s.C // s.groups
    cdef Py_ssize_t Kg = s.K // s.groups
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t Q = Cg * s.kh * s.kw
    cdef bint pointwise = (s.kh == 1 and s.kw == 1 and s.sh == 1 and s.sw == 1
                           and s.pt == 0 and s.pl == 0 and s.pb == 0 and s.pr == 0)
    cdef Py_ssize_t n, g, row
    cdef const float* xg
    cdef const float* col
    for n in range(N):
        for g in range(s.groups):
            xg = x + n * s.C * s.H * s.W + g * Cg * s.H * s.W
            if pointwise:
                col = xg
            else:
                for row in prange(Q, schedule="static", num_threads=n_threads):
                    im2col_row(s, xg, scratch, row)
                col = scratch
            gemm_bias_act(s.w + g * Kg * Q, col, y + n * s.K * P + g * Kg * P,
                          s.b + g * Kg if s.b != NULL else NULL,
                          Kg, Q, P, s.act, n_threads)


cdef void depthwise_plane(const Step* s, const float* x, float* y, Py_ssize_t item) noexcept nogil:
    """One output channel of one image for a convolution with one input channel per group."""
    cdef Py_ssize_t n = item // s.K
    cdef Py_ssize_t k = item % s.K
    cdef Py_ssize_t mult = s.K // s.C
    cdef const float* plane = x + n * s.C * s.H * s.W + (k // mult) * s.H * s.W
    cdef const float* wk = s.w + k * s.kh * s.kw
    cdef float* out = y + item * s.H2 * s.W2
    cdef float bias = s.b[k] if s.b != NULL else 0.0
    cdef float acc
    cdef Py_ssize_t oy, ox, ky, kx, iy, ix
    for oy in range(s.H2):
        for ox in range(s.W2):
            acc = bias
            for ky in range(s.kh):
                iy = oy * s.sh - s.pt + ky * s.dh
                if iy < 0 or iy >= s.H:
                    continue
                for kx in range(s.kw):
                    ix = ox * s.sw - s.pl + kx * s.dw
                    if 0 <= ix < s.W:
                        acc = acc + wk[ky * s.kw + kx] * plane[iy * s.W + ix]
            out[oy * s.W2 + ox] = activate(acc, s.act)


cdef void depthwise2d_f32(const Step* s, const float* x, float* y,
                          Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t item
    for item in prange(N * s.K, schedule="static", num_threads=n_threads):
        depthwise_plane(s, x, y, item)


cdef void lc_row(const Step* s, const float* x, float* y, Py_ssize_t item) noexcept nogil:
    """One output row (image n, row oy) of a locally connected layer."""
    cdef Py_ssize_t n = item // s.H2
    cdef Py_ssize_t oy = item % s.H2
    cdef const float* xn = x + n * s.C * s.H * s.W
    cdef float* yn = y + n * s.K * s.H2 * s.W2
    cdef Py_ssize_t taps = s.C * s.kh * s.kw
    cdef Py_ssize_t ox, k, c, ky, kx, iy, ix
    cdef const float* wk
    cdef float acc
    for ox in range(s.W2):
        for k in range(s.K):
            wk = s.w + ((oy * s.W2 + ox) * s.K + k) * taps
            acc = s.b[(k * s.H2 + oy) * s.W2 + ox] if s.b != NULL else 0.0
            for c in range(s.C):
                for ky in range(s.kh):
                    iy = oy * s.sh - s.pt + ky * s.dh
                    if iy < 0 or iy >= s.H:
                        continue
                    for kx in range(s.kw):
                        ix = ox * s.sw - s.pl + kx * s.dw
                        if 0 <= ix < s.W:
                            acc = acc + wk[(c * s.kh + ky) * s.kw + kx] * xn[(c * s.H + iy) * s.W + ix]
            yn[(k * s.H2 + oy) * s.W2 + ox] = activate(acc, s.act)


cdef void locally_connected2d_f32(const Step* s, const float* x, float* y,
                                  Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t item
    for item in prange(N * s.H2, schedule="static", num_threads=n_threads):
        lc_row(s, x, y, item)


# ==========================================================================
# Dense
# ==========================================================================

cdef inline float dot_f32(const float* a, const float* b, Py_ssize_t n) noexcept nogil:
    """Dot product in eight interleaved partial sums, combined in a fixed order."""
    cdef float acc[8]
    cdef Py_ssize_t i, j
    cdef Py_ssize_t n8 = n - n % 8
    for j in range(8):
        acc[j] = 0.0
    i = 0
    while i < n8:
        for j in range(8):
            acc[j] += a[i + j] * b[i + j]
        i += 8
    for i in range(n8, n):
        acc[i - n8] += a[i] * b[i]
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef void dense_out(const Step* s, const float* x, float* y, Py_ssize_t N, Py_ssize_t o) noexcept nogil:
    cdef const float* wo = s.w + o * s.in_size
    cdef float bias = s.b[o] if s.b != NULL else 0.0
    cdef Py_ssize_t n
    for n in range(N):
        y[n * s.out_size + o] = activate(bias + dot_f32(wo, x + n * s.in_size, s.in_size), s.act)


cdef void dense_f32(const Step* s, const float* x, float* y,
                    Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t o
    for o in prange(s.out_size, schedule="static", num_threads=n_threads):
        dense_out(s, x, y, N, o)


# ==========================================================================
# Pooling
# ==========================================================================

cdef void pool_plane(const Step* s, const float* x, float* y, Py_ssize_t item) noexcept nogil:
    cdef const float* plane = x + item * s.H * s.W
    cdef float* out = y + item * s.H2 * s.W2
    cdef Py_ssize_t oy, ox, iy, ix, y0, y1, x0, x1, cnt
    cdef float acc, v
    for oy in range(s.H2):
        y0 = oy * s.sh - s.pt
        y1 = y0 + s.kh
        # cells inside the padded extent count for count_include_pad
        cnt = (min(y1, s.H + s.pb) - y0)
        if y0 < 0:
            y0 = 0
        if y1 > s.H:
            y1 = s.H
        for ox in range(s.W2):
            x0 = ox * s.sw - s.pl
            x1 = x0 + s.kw
            if s.op == OP_AVGPOOL2D and s.flag:
                acc = <float>(cnt * (min(x1, s.W + s.pr) - x0))
            if x0 < 0:
                x0 = 0
            if x1 > s.W:
                x1 = s.W
            if s.op == OP_MAXPOOL2D:
                acc = -INFINITY
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        v = plane[iy * s.W + ix]
                        if v > acc or v != v:
                            acc = v
                out[oy * s.W2 + ox] = acc
            elif s.op == OP_AVGPOOL2D:
                v = acc if s.flag else <float>((y1 - y0) * (x1 - x0))
                acc = 0.0
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        acc = acc + plane[iy * s.W + ix]
                out[oy * s.W2 + ox] = acc / v
            else:
                acc = 0.0
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        v = plane[iy * s.W + ix]
                        acc = acc + v * v
                out[oy * s.W2 + ox] = sqrtf(acc)


cdef void pool2d_f32(const Step* s, const float* x, float* y,
                     Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t item
    for item in prange(N * s.C, schedule="static", num_threads=n_threads):
        pool_plane(s, x, y, item)


cdef void global_pool_plane(const Step* s, const float* x, float* y, Py_ssize_t item) noexcept nogil:
    cdef Py_ssize_t hw = s.H * s.W
    cdef const float* plane = x + item * hw
    cdef Py_ssize_t i
    cdef float acc
    if s.op == OP_GLOBALMAXPOOL:
        acc = -INFINITY
        for i in range(hw):
            if plane[i] > acc or plane[i] != plane[i]:
                acc = plane[i]
        y[item] = acc
    else:
        acc = 0.0
        for i in range(hw):
            acc = acc + plane[i]
        y[item] = acc / <float>hw


cdef void global_pool_f32(const Step* s, const float* x, float* y,
                          Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t item
    for item in prange(N * s.C, schedule="static", num_threads=n_threads):
        global_pool_plane(s, x, y, item)


# ==========================================================================
# Element-wise
# ==========================================================================

cdef void unary_chunk(const Step* s, const float* x, float* y,
                      Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef float v
    if s.op == OP_RELU:
        for i in range(lo, hi):
            y[i] = x[i] if x[i] > 0.0 else 0.0
    elif s.op == OP_LEAKY_RELU:
        for i in range(lo, hi):
            v = x[i]
            y[i] = v if v > 0.0 else s.f0 * v
    elif s.op == OP_CLIP:
        for i in range(lo, hi):
            v = x[i]
            v = v if v > s.f0 else s.f0
            y[i] = v if v < s.f1 else s.f1
    elif s.op == OP_SIGMOID:
        for i in range(lo, hi):
            y[i] = 1.0 / (1.0 + expf(-x[i]))
    else:
        for i in range(lo, hi):
            y[i] = tanhf(x[i])


cdef void unary_f32(const Step* s, const float* x, float* y,
                    Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t total = N * s.out_size
    cdef Py_ssize_t n_chunks = (total + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c
    for c in prange(n_chunks, schedule="static", num_threads=n_threads):
        unary_chunk(s, x, y, c * CHUNK, min((c + 1) * CHUNK, total))


cdef void batchnorm_plane(const Step* s, const float* x, float* y, Py_ssize_t item) noexcept nogil:
    """Channel planes of size H*W (H*W == 1 for a feature vector)."""
    cdef Py_ssize_t hw = s.H * s.W
    cdef Py_ssize_t c = item % s.C
    cdef float a = s.w[c]
    cdef float b = s.b[c]
    cdef Py_ssize_t i
    for i in range(item * hw, (item + 1) * hw):
        y[i] = x[i] * a + b


cdef void batchnorm_f32(const Step* s, const float* x, float* y,
                        Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t item
    for item in prange(N * s.C, schedule="static", num_threads=n_threads):
        batchnorm_plane(s, x, y, item)


cdef void softmax_column(const Step* s, const float* x, float* y, Py_ssize_t item) noexcept nogil:
    """One softmax over the axis, for one (outer, inner) position."""
    cdef Py_ssize_t o = item // s.inner
    cdef Py_ssize_t i = item % s.inner
    cdef const float* xs = x + o * s.axis * s.inner + i
    cdef float* ys = y + o * s.axis * s.inner + i
    cdef Py_ssize_t j
    cdef float m = -INFINITY
    cdef float total = 0.0
    cdef float e
    for j in range(s.axis):
        if xs[j * s.inner] > m:
            m = xs[j * s.inner]
    for j in range(s.axis):
        e = expf(xs[j * s.inner] - m)
        ys[j * s.inner] = e
        total = total + e
    for j in range(s.axis):
        ys[j * s.inner] = ys[j * s.inner] / total


cdef void softmax_f32(const Step* s, const float* x, float* y,
                      Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t item
    for item in prange(N * s.outer * s.inner, schedule="static", num_threads=n_threads):
        softmax_column(s, x, y, item)


cdef void add_chunk(const Step* s, float* arena, float* y, Py_ssize_t N,
                    Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const float* a = arena + s.in_off[0] * N
    cdef const float* b
    cdef Py_ssize_t i, k
    b = arena + s.in_off[1] * N
    for i in range(lo, hi):
        y[i] = a[i] + b[i]
    for k in range(2, s.n_in):
        b = arena + s.in_off[k] * N
        for i in range(lo, hi):
            y[i] = y[i] + b[i]


cdef void add_f32(const Step* s, float* arena, float* y,
                  Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t total = N * s.out_size
    cdef Py_ssize_t n_chunks = (total + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c
    for c in prange(n_chunks, schedule="static", num_threads=n_threads):
        add_chunk(s, arena, y, N, c * CHUNK, min((c + 1) * CHUNK, total))


cdef void concat_block(const Step* s, float* arena, float* y, Py_ssize_t N,
                       Py_ssize_t item) noexcept nogil:
    """All inputs' slices for one (image, outer) position."""
    cdef Py_ssize_t n = item // s.outer
    cdef Py_ssize_t o = item % s.outer
    cdef float* dst = y + n * s.out_size + o * s.axis * s.inner
    cdef const float* src
    cdef Py_ssize_t k, width, in_size
    for k in range(s.n_in):
        width = s.in_len[k] * s.inner
        in_size = s.outer * width
        src = arena + s.in_off[k] * N + n * in_size + o * width
        memcpy(dst, src, width * sizeof(float))
        dst += width


cdef void concat_f32(const Step* s, float* arena, float* y,
                     Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t item
    for item in prange(N * s.outer, schedule="static", num_threads=n_threads):
        concat_block(s, arena, y, N, item)


# ==========================================================================
# Executor
# ==========================================================================

cdef void run_steps(const Step* steps, Py_ssize_t n_steps, float* arena,
                    float* scratch, Py_ssize_t N, int n_threads) noexcept nogil:
    cdef Py_ssize_t i
    cdef const Step* s
    cdef const float* x
    cdef float* y
    for i in range(n_steps):
        s = &steps[i]
        x = arena + s.in_off[0] * N
        y = arena + s.out_off * N
        if s.op == OP_CONV2D:
            conv2d_f32(s, x, y, scratch, N, n_threads)
        elif s.op == OP_DEPTHWISE2D:
            depthwise2d_f32(s, x, y, N, n_threads)
        elif s.op == OP_LOCALLY_CONNECTED2D:
            locally_connected2d_f32(s, x, y, N, n_threads)
        elif s.op == OP_DENSE:
            dense_f32(s, x, y, N, n_threads)
        elif s.op == OP_MAXPOOL2D or s.op == OP_AVGPOOL2D or s.op == OP_L2POOL2D:
            pool2d_f32(s, x, y, N, n_threads)
        elif s.op == OP_GLOBALAVGPOOL or s.op == OP_GLOBALMAXPOOL:
            global_pool_f32(s, x, y, N, n_threads)
        elif s.op == OP_BATCHNORM:
            batchnorm_f32(s, x, y, N, n_threads)
        elif s.op == OP_SOFTMAX:
            softmax_f32(s, x, y, N, n_threads)
        elif s.op == OP_ADD:
            add_f32(s, arena, y, N, n_threads)
        elif s.op == OP_CONCAT:
            concat_f32(s, arena, y, N, n_threads)
        else:
            unary_f32(s, x, y, N, n_threads)


cdef void nhwc_to_nchw(const float* src, float* dst, Py_ssize_t N, Py_ssize_t C,
                       Py_ssize_t H, Py_ssize_t W, int n_threads) noexcept nogil:
    cdef Py_ssize_t item
    for item in prange(N * C, schedule="static", num_threads=n_threads):
        nhwc_plane(src, dst, C, H, W, item)


cdef void nhwc_plane(const float* src, float* dst, Py_ssize_t C, Py_ssize_t H,
                     Py_ssize_t W, Py_ssize_t item) noexcept nogil:
    cdef Py_ssize_t n = item // C
    cdef Py_ssize_t c = item % C
    cdef const float* s = src + n * H * W * C + c
    cdef float* d = dst + item * H * W
    cdef Py_ssize_t i
    for i in range(H * W):
        d[i] = s[i * C]


_OPCODES = {
    "conv2d": OP_CONV2D,
    "depthwise2d": OP_DEPTHWISE2D,
    "locally_connected2d": OP_LOCALLY_CONNECTED2D,
    "dense": OP_DENSE,
    "maxpool2d": OP_MAXPOOL2D,
    "avgpool2d": OP_AVGPOOL2D,
    "l2pool2d": OP_L2POOL2D,
    "globalavgpool": OP_GLOBALAVGPOOL,
    "globalmaxpool": OP_GLOBALMAXPOOL,
    "relu": OP_RELU,
    "sigmoid": OP_SIGMOID,
    "tanh": OP_TANH,
    "leaky_relu": OP_LEAKY_RELU,
    "clip": OP_CLIP,
    "batchnorm2d": OP_BATCHNORM,
    "softmax": OP_SOFTMAX,
    "add": OP_ADD,
    "concat": OP_CONCAT,
}
KERNELS = tuple(_OPCODES)

_ACTIVATIONS = {"none": ACT_NONE, "relu": ACT_RELU, "relu6": ACT_RELU6,
                "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH}

_INT_FIELDS = ("in_size", "out_size", "C", "H", "W", "K", "H2", "W2", "kh", "kw",
               "sh", "sw", "dh", "dw", "pt", "pl", "pb", "pr", "groups",
               "outer", "axis", "inner")


cdef const float* _float_ptr(object arr, list keep) except? NULL:
    cdef const float[::1] view
    if arr is None:
        return NULL
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    keep.append(flat)
    if flat.shape[0] == 0:
        raise ValueError("empty weight array")
    view = flat
    return &view[0]


cdef class Plan:
    """A compiled execution plan: the step array and the weights it points to.

    Built once per model by ``cnnrt.model``; :meth:`run` executes every step
    for a batch in one call that releases the GIL.  A Plan is read-only while
    it runs, so many threads may run it at once, each with its own arena.
    """
    cdef Step* steps
    cdef Py_ssize_t n_steps
    cdef list keep
    cdef readonly Py_ssize_t sample_size   # arena floats per sample
    cdef readonly Py_ssize_t scratch_size  # arena floats shared by the batch
    cdef Py_ssize_t in_off, out_off, out_size
    cdef Py_ssize_t C, H, W
    cdef bint nhwc

    def __cinit__(self):
        self.steps = NULL
        self.n_steps = 0

    def __init__(self, list steps, Py_ssize_t sample_size, Py_ssize_t scratch_size,
                 Py_ssize_t in_off, tuple input_chw, bint nhwc,
                 Py_ssize_t out_off, Py_ssize_t out_size):
        cdef Py_ssize_t i, k
        cdef Step* s
        cdef const Py_ssize_t[::1] offs
        self.keep = []
        self.sample_size = sample_size
        self.scratch_size = scratch_size
        self.in_off = in_off
        self.C, self.H, self.W = input_chw
        self.nhwc = nhwc
        self.out_off = out_off
        self.out_size = out_size
        self.steps = <Step*> calloc(max(1, len(steps)), sizeof(Step))
        if self.steps == NULL:
            raise MemoryError()
        self.n_steps = len(steps)
        for i, d in enumerate(steps):
            s = &self.steps[i]
            s.op = _OPCODES[d["op"]]
            s.act = _ACTIVATIONS[d.get("activation", "none")]
            ins = np.ascontiguousarray(d["in_off"], dtype=np.intp)
            self.keep.append(ins)
            offs = ins
            s.n_in = ins.shape[0]
            s.in_off = &offs[0]
            if "in_len" in d:
                lens = np.ascontiguousarray(d["in_len"], dtype=np.intp)
                self.keep.append(lens)
                offs = lens
                s.in_len = &offs[0]
            s.out_off = d["out_off"]
            for name in _INT_FIELDS:
                if name in d:
                    _set_int(s, name, d[name])
            s.flag = d.get("flag", 0)
            s.f0 = d.get("f0", 0.0)
            s.f1 = d.get("f1", 0.0)
            s.w = _float_ptr(d.get("w"), self.keep)
            s.b = _float_ptr(d.get("b"), self.keep)

    def __dealloc__(self):
        free(self.steps)

    def arena_size(self, Py_ssize_t n):
        """Floats of arena needed for a batch of ``n``."""
        return self.sample_size * n + self.scratch_size

    def run(self, const float[::1] x, float[::1] arena, float[::1] out,
            Py_ssize_t n, int n_threads):
        """Run the plan on ``n`` samples; ``x`` and ``out`` are flat float32 arrays."""
        if n <= 0 or n_threads <= 0:
            raise ValueError("batch size and thread count must be positive")
        if x.shape[0] != n * self.C * self.H * self.W:
            raise ValueError("input buffer has the wrong size")
        if out.shape[0] != n * self.out_size:
            raise ValueError("output buffer has the wrong size")
        if arena.shape[0] < self.sample_size * n + self.scratch_size:
            raise ValueError("arena is too small")
        cdef float* a = &arena[0]
        cdef const float* xp = &x[0]
        cdef float* op = &out[0]
        with nogil:
            if self.nhwc:
                nhwc_to_nchw(xp, a + self.in_off * n, n, self.C, self.H, self.W, n_threads)
            else:
                memcpy(a + self.in_off * n, xp, n * self.C * self.H * self.W * sizeof(float))
            run_steps(self.steps, self.n_steps, a, a + self.sample_size * n, n, n_threads)
            memcpy(op, a + self.out_off * n, n * self.out_size * sizeof(float))


cdef void _set_int(Step* s, str name, Py_ssize_t v):
    if name == "in_size": s.in_size = v
    elif name == "out_size": s.out_size = v
    elif name == "C": s.C = v
    elif name == "H": s.H = v
    elif name == "W": s.W = v
    elif name == "K": s.K = v
    elif name == "H2": s.H2 = v
    elif name == "W2": s.W2 = v
    elif name == "kh": s.kh = v
    elif name == "kw": s.kw = v
    elif name == "sh": s.sh = v
    elif name == "sw": s.sw = v
    elif name == "dh": s.dh = v
    elif name == "dw": s.dw = v
    elif name == "pt": s.pt = v
    elif name == "pl": s.pl = v
    elif name == "pb": s.pb = v
    elif name == "pr": s.pr = v
    elif name == "groups": s.groups = v
    elif name == "outer": s.outer = v
    elif name == "axis": s.axis = v
    elif name == "inner": s.inner = v


def openmp_max_threads():
    """Threads OpenMP would use by default (omp_get_max_threads)."""
    return _omp_max_threads()


cdef extern from "omp.h":
    int omp_get_max_threads() nogil


cdef int _omp_max_threads() noexcept:
    return omp_get_max_threads()
