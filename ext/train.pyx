# cython: language_level=3
"""Training kernels of cnnrt (module ``cnnrt._train``): forward and backward
passes of the layers ``cnnrt.train`` offers, and the optimizer updates.

Every kernel exists for float32 (training) and float64 (gradient checks):
``real`` is a fused type and NumPy arrays of either dtype dispatch to the
matching specialisation.  Conventions, as in the inference engine:

* arguments are inputs first, then preallocated outputs, then the thread
  count; Python allocates, kernels only fill;
* tensors are C-contiguous NCHW (or [N, F] for feature vectors);
* work is split over samples, channels or output elements with ``prange``
  (dynamic scheduling for the per-sample convolution work, so a thread on a
  busy core holds up little); sums over the batch (weight gradients) are
  accumulated into a fixed number of partial buffers (``PARTIALS``,
  independent of the thread count) and added in a fixed order, so a
  training run gives the same numbers whatever the number of threads.

Convolutions are ``im2col`` plus GEMM.  In float32 the GEMM packs its
operands for the runtime's SIMD micro-kernels (ext/f32_gemm.h, via
ext/train_gemm.h); in float64 it is a plain loop.
"""
cimport cython
from cython.parallel cimport prange, parallel
from libc.math cimport exp, expf, log, logf, sqrt, sqrtf, INFINITY
from libc.stdint cimport uint8_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

import numpy as np

ctypedef fused real:
    float
    double

# Partial weight-gradient buffers of the batch-parallel kernels.
DEF PARTIALS = 8
# Elements per work item of element-wise kernels.
DEF CHUNK = 8192


cdef extern from "train_gemm.h" nogil:
    ctypedef void (*cnnrt_gemm_ukernel)(size_t kc, const float* a, const float* b,
                                        float* c, size_t ldc, size_t mr, size_t nr,
                                        const float* bias, int first, int last,
                                        int act) noexcept nogil
    ctypedef struct cnnrt_gemm_config:
        int isa
        size_t nr
        cnnrt_gemm_ukernel ukernel
        const char* name
    int CNNRT_ISA_SCALAR
    int CNNRT_ISA_AVX2
    int CNNRT_ISA_AVX512
    int cnnrt_isa_supported(int isa)
    int cnnrt_isa_best()
    cnnrt_gemm_config cnnrt_gemm_select(int isa)
    size_t cnnrt_tr_gemm_work()
    void cnnrt_tr_sgemm(cnnrt_gemm_ukernel uk, size_t M, size_t N, size_t K,
                        const float* a, ptrdiff_t ars, ptrdiff_t acs,
                        const float* b, ptrdiff_t brs, ptrdiff_t bcs,
                        float* c, size_t ldc, int accumulate, const float* bias,
                        float* work)
    size_t cnnrt_tr_packed_a_size(size_t M, size_t K)
    void cnnrt_tr_pack_a_all(const float* a, ptrdiff_t ars, ptrdiff_t acs, size_t M, size_t K,
                             float* dst)
    void cnnrt_tr_sgemm_apacked(cnnrt_gemm_ukernel uk, size_t M, size_t N, size_t K,
                                const float* apacked, const float* b, ptrdiff_t brs,
                                ptrdiff_t bcs, float* c, size_t ldc, int accumulate,
                                const float* bias, float* work)
    void cnnrt_tr_sgemm_im2col(cnnrt_gemm_ukernel uk, size_t M, size_t N, size_t K,
                               const float* a, ptrdiff_t ars, ptrdiff_t acs,
                               const float* apacked, int transposed,
                               const float* x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t H2,
                               ptrdiff_t W2, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                               ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t dh,
                               ptrdiff_t dw, float* c, size_t ldc, int accumulate,
                               const float* bias, float* work)
    void cnnrt_tr_dgemm(size_t M, size_t N, size_t K,
                        const double* a, ptrdiff_t ars, ptrdiff_t acs,
                        const double* b, ptrdiff_t brs, ptrdiff_t bcs,
                        double* c, size_t ldc, int accumulate, const double* bias)


cdef extern from "omp.h" nogil:
    int omp_get_max_threads()


# ==========================================================================
# Micro-kernel selection
# ==========================================================================

cdef cnnrt_gemm_config _gemm = cnnrt_gemm_select(cnnrt_isa_best())

_ISA_NAMES = {"scalar": CNNRT_ISA_SCALAR, "avx2": CNNRT_ISA_AVX2, "avx512": CNNRT_ISA_AVX512}


def get_isa():
    """Name of the instruction set of the float32 GEMM micro-kernel in use."""
    for name, code in _ISA_NAMES.items():
        if code == _gemm.isa:
            return name
    return "scalar"


def set_isa(name):
    """Use the micro-kernel for ``name`` (scalar, avx2, avx512, or best)."""
    global _gemm
    if name == "best":
        _gemm = cnnrt_gemm_select(cnnrt_isa_best())
        return
    if name not in _ISA_NAMES:
        raise ValueError(f"isa must be one of best, {', '.join(_ISA_NAMES)}; got {name!r}")
    if not cnnrt_isa_supported(_ISA_NAMES[name]):
        raise ValueError(f"this CPU does not support {name}")
    _gemm = cnnrt_gemm_select(_ISA_NAMES[name])


def max_threads():
    """Threads OpenMP uses by default (omp_get_max_threads)."""
    return omp_get_max_threads()


cdef int _threads(int n_threads) noexcept:
    if n_threads <= 0:
        return omp_get_max_threads()
    return n_threads


# ==========================================================================
# GEMM for both precisions
# ==========================================================================

cdef inline void gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                      const real* a, Py_ssize_t ars, Py_ssize_t acs,
                      const real* b, Py_ssize_t brs, Py_ssize_t bcs,
                      real* c, Py_ssize_t ldc, int accumulate, const real* bias,
                      float* work) noexcept nogil:
    if real is float:
        cnnrt_tr_sgemm(_gemm.ukernel, M, N, K, a, ars, acs, b, brs, bcs,
                       c, ldc, accumulate, bias, work)
    else:
        cnnrt_tr_dgemm(M, N, K, a, ars, acs, b, brs, bcs, c, ldc, accumulate, bias)


cdef int pgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
               const real* a, Py_ssize_t ars, Py_ssize_t acs,
               const real* b, Py_ssize_t brs, Py_ssize_t bcs,
               real* c, Py_ssize_t ldc, int accumulate, int n_threads) noexcept nogil:
    """GEMM split over threads by blocks of rows or columns of C.

    Returns -1 if a work buffer could not be allocated."""
    cdef Py_ssize_t n_tasks, t, lo, hi, step
    cdef bint by_cols = N >= M
    cdef float* work
    cdef int failed[1]
    failed[0] = 0
    if M == 0 or N == 0:
        return 0
    if by_cols:
        step = (N + n_threads - 1) // n_threads
        step = ((step + 31) // 32) * 32
        n_tasks = (N + step - 1) // step
    else:
        step = (M + n_threads - 1) // n_threads
        step = ((step + 7) // 8) * 8
        n_tasks = (M + step - 1) // step
    work = NULL
    with parallel(num_threads=n_threads):
        work = <float*>malloc(cnnrt_tr_gemm_work() * sizeof(float))
        for t in prange(n_tasks, schedule="static"):
            if work == NULL:
                failed[0] = 1
                continue
            lo = t * step
            if by_cols:
                hi = min(lo + step, N)
                gemm(M, hi - lo, K, a, ars, acs, b + lo * bcs, brs, bcs,
                     c + lo, ldc, accumulate, <const real*>NULL, work)
            else:
                hi = min(lo + step, M)
                gemm(hi - lo, N, K, a + lo * ars, ars, acs, b, brs, bcs,
                     c + lo * ldc, ldc, accumulate, <const real*>NULL, work)
        free(work)
    return -1 if failed[0] else 0


def matmul(const real[:, :] a, const real[:, :] b, real[:, ::1] c, bint accumulate=False,
           int n_threads=0):
    """c = a @ b (or c += a @ b); a and b may be any strided 2-D views.

    Exposed so tests can check the GEMM (and every micro-kernel) alone."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    if b.shape[0] != K or c.shape[0] != M or c.shape[1] != N:
        raise ValueError(f"matmul shapes do not agree: {a.shape[0]}x{a.shape[1]} @ "
                         f"{b.shape[0]}x{b.shape[1]} -> {c.shape[0]}x{c.shape[1]}")
    if M == 0 or N == 0:
        return
    if K == 0:
        if not accumulate:
            c[:, :] = 0
        return
    cdef int nt = _threads(n_threads)
    cdef int rc
    cdef Py_ssize_t isz = sizeof(real)
    with nogil:
        rc = pgemm(M, N, K, &a[0, 0], a.strides[0] // isz, a.strides[1] // isz,
                   &b[0, 0], b.strides[0] // isz, b.strides[1] // isz,
                   &c[0, 0], N, accumulate, nt)
    if rc:
        raise MemoryError("matmul: cannot allocate GEMM work space")


# ==========================================================================
# im2col / col2im
# ==========================================================================

cdef inline void valid_range(Py_ssize_t off, Py_ssize_t s, Py_ssize_t size, Py_ssize_t n_out,
                             Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Outputs o in [lo, hi) read input index o*s + off inside [0, size)."""
    cdef Py_ssize_t a, b
    a = 0 if off >= 0 else (-off + s - 1) // s
    b = 0 if size - 1 - off < 0 else (size - 1 - off) // s + 1
    if a > n_out:
        a = n_out
    if b > n_out:
        b = n_out
    if b < a:
        b = a
    lo[0] = a
    hi[0] = b


cdef void im2col(const real* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                 Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                 Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                 Py_ssize_t H2, Py_ssize_t W2, real* col) noexcept nogil:
    """col[(c*kh + i)*kw + j, oh*W2 + ow] = x[c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] (0 outside)."""
    cdef Py_ssize_t c, i, j, oh, ow, ih, off, lo, hi
    cdef real* d
    cdef const real* src
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                off = j * dw - pl
                valid_range(off, sw, W, W2, &lo, &hi)
                d = col + ((c * kh + i) * kw + j) * H2 * W2
                for oh in range(H2):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= H:
                        for ow in range(W2):
                            d[ow] = 0
                    else:
                        src = x + (c * H + ih) * W + off
                        for ow in range(lo):
                            d[ow] = 0
                        if sw == 1:
                            for ow in range(lo, hi):
                                d[ow] = src[ow]
                        else:
                            for ow in range(lo, hi):
                                d[ow] = src[ow * sw]
                        for ow in range(hi, W2):
                            d[ow] = 0
                    d += W2


cdef void col2im(const real* col, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                 Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                 Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                 Py_ssize_t H2, Py_ssize_t W2, real* x) noexcept nogil:
    """The adjoint of im2col: x[c, ih, iw] += col[...] over every tap reading it."""
    cdef Py_ssize_t c, i, j, oh, ow, ih, off, lo, hi
    cdef const real* s
    cdef real* dst
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                off = j * dw - pl
                valid_range(off, sw, W, W2, &lo, &hi)
                s = col + ((c * kh + i) * kw + j) * H2 * W2
                for oh in range(H2):
                    ih = oh * sh - pt + i * dh
                    if ih >= 0 and ih < H:
                        dst = x + (c * H + ih) * W + off
                        if sw == 1:
                            for ow in range(lo, hi):
                                dst[ow] += s[ow]
                        else:
                            for ow in range(lo, hi):
                                dst[ow * sw] += s[ow]
                    s += W2


# ==========================================================================
# conv2d
# ==========================================================================

cdef struct ConvGeom:
    Py_ssize_t N, C, H, W, K, H2, W2, kh, kw, sh, sw, pt, pl, dh, dw, groups
    Py_ssize_t Cg, Kg, Q, P      # per group: in/out channels, taps Cg*kh*kw, positions H2*W2
    bint direct                  # 1x1, stride 1, no padding: x is its own im2col
    const float* wpk             # float32: W_g packed once per call (NULL: pack per sample)
    const float* wtpk            # float32: W_g^T packed once per call (input gradient)
    Py_ssize_t pk, tpk           # floats per group of wpk, wtpk


cdef ConvGeom conv_geom(tuple xs, tuple ws, tuple ys, stride, padding, dilation, int groups) except *:
    cdef ConvGeom g
    g.N, g.C, g.H, g.W = xs
    g.K, g.H2, g.W2 = ys[1], ys[2], ys[3]
    g.kh, g.kw = ws[2], ws[3]
    g.sh, g.sw = stride
    g.pt, g.pl = padding[0], padding[1]
    g.dh, g.dw = dilation
    g.groups = groups
    if groups < 1 or g.C % groups or g.K % groups:
        raise ValueError(f"conv2d: channels (in {g.C}, out {g.K}) must be divisible by groups={groups}")
    g.Cg = g.C // groups
    g.Kg = g.K // groups
    if ws[0] != g.K or ws[1] != g.Cg:
        raise ValueError(f"conv2d: weight shape {list(ws)} does not match {g.K} outputs x {g.Cg} inputs per group")
    if ys[0] != g.N:
        raise ValueError("conv2d: input and output batch sizes differ")
    if min(g.sh, g.sw, g.dh, g.dw) < 1 or min(padding) < 0:
        raise ValueError("conv2d: stride and dilation must be positive, padding >= 0")
    h2 = (g.H + padding[0] + padding[2] - g.dh * (g.kh - 1) - 1) // g.sh + 1
    w2 = (g.W + padding[1] + padding[3] - g.dw * (g.kw - 1) - 1) // g.sw + 1
    if h2 != g.H2 or w2 != g.W2:
        raise ValueError(f"conv2d: output is {g.H2}x{g.W2}, expected {h2}x{w2}")
    g.Q = g.Cg * g.kh * g.kw
    g.P = g.H2 * g.W2
    g.direct = (g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1
                and g.pt == 0 and g.pl == 0 and g.H2 == g.H and g.W2 == g.W)
    g.wpk = NULL
    g.wtpk = NULL
    g.pk = cnnrt_tr_packed_a_size(g.Kg, g.Q)
    g.tpk = cnnrt_tr_packed_a_size(g.Q, g.Kg)
    return g


cdef object pack_weights(ConvGeom* g, const float* w, bint transposed):
    """The weights of every group packed as GEMM A panels (kept alive by the caller)."""
    cdef Py_ssize_t size = g.tpk if transposed else g.pk
    cdef float[::1] buf = np.empty(max(1, g.groups * size), dtype=np.float32)
    cdef float* out = &buf[0]
    cdef Py_ssize_t grp
    with nogil:
        for grp in range(g.groups):
            if transposed:
                cnnrt_tr_pack_a_all(w + grp * g.Kg * g.Q, 1, g.Q, g.Q, g.Kg, out + grp * size)
            else:
                cnnrt_tr_pack_a_all(w + grp * g.Kg * g.Q, g.Q, 1, g.Kg, g.Q, out + grp * size)
    if transposed:
        g.wtpk = out
    else:
        g.wpk = out
    return buf


cdef void conv_forward_sample(const ConvGeom* g, const real* x, const real* w, const real* b,
                              real* y, real* col, float* work) noexcept nogil:
    cdef Py_ssize_t grp
    cdef const real* xg
    for grp in range(g.groups):
        xg = x + grp * g.Cg * g.H * g.W
        if real is float and g.direct:
            cnnrt_tr_sgemm_apacked(_gemm.ukernel, g.Kg, g.P, g.Q, g.wpk + grp * g.pk, xg, g.P, 1,
                                   y + grp * g.Kg * g.P, g.P, 0, b + grp * g.Kg, work)
        elif real is float:
            # float32: the GEMM packs im2col panels straight from the image.
            cnnrt_tr_sgemm_im2col(_gemm.ukernel, g.Kg, g.P, g.Q, NULL, 0, 0, g.wpk + grp * g.pk,
                                  0, xg, g.H, g.W, g.H2, g.W2, g.kh, g.kw, g.sh, g.sw, g.pt,
                                  g.pl, g.dh, g.dw, y + grp * g.Kg * g.P, g.P, 0, b + grp * g.Kg,
                                  work)
        elif g.direct:
            gemm(g.Kg, g.P, g.Q, w + grp * g.Kg * g.Q, g.Q, 1, xg, g.P, 1,
                 y + grp * g.Kg * g.P, g.P, 0, b + grp * g.Kg, work)
        else:
            im2col(xg, g.Cg, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw,
                   g.H2, g.W2, col)
            gemm(g.Kg, g.P, g.Q, w + grp * g.Kg * g.Q, g.Q, 1, col, g.P, 1,
                 y + grp * g.Kg * g.P, g.P, 0, b + grp * g.Kg, work)


def conv2d_forward(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w, const real[::1] b,
                   real[:, :, :, ::1] y, stride, padding, dilation, int groups, int n_threads=0):
    """y = conv2d(x, w) + b.  x [N,C,H,W], w [K,C/groups,kh,kw], b [K], y [N,K,H2,W2].

    stride (sh, sw), padding (top, left, bottom, right), dilation (dh, dw)."""
    cdef ConvGeom g = conv_geom((x.shape[0], x.shape[1], x.shape[2], x.shape[3]), (w.shape[0], w.shape[1], w.shape[2], w.shape[3]), (y.shape[0], y.shape[1], y.shape[2], y.shape[3]),
                                stride, padding, dilation, groups)
    if b.shape[0] != g.K:
        raise ValueError("conv2d: bias length differs from the output channels")
    if g.N == 0 or g.P == 0:
        return
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t n
    cdef real* col
    cdef float* work
    cdef int failed[1]
    failed[0] = 0
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef const real* wp = &w[0, 0, 0, 0]
    cdef const real* bp = &b[0]
    cdef real* yp = &y[0, 0, 0, 0]
    keep = None
    if real is float:
        keep = pack_weights(&g, wp, False)
    col = NULL
    work = NULL
    with nogil, parallel(num_threads=nt):
        col = <real*>malloc(g.Q * g.P * sizeof(real))
        work = <float*>malloc(cnnrt_tr_gemm_work() * sizeof(float))
        for n in prange(g.N, schedule="dynamic"):
            if col == NULL or work == NULL:
                failed[0] = 1
                continue
            conv_forward_sample(&g, xp + n * g.C * g.H * g.W, wp, bp,
                                yp + n * g.K * g.P, col, work)
        free(col)
        free(work)
    if failed[0]:
        raise MemoryError("conv2d: cannot allocate im2col space")


cdef void conv_backward_sample(const ConvGeom* g, const real* x, const real* w, const real* dy,
                               real* dx, real* dw, real* db, real* col, float* work,
                               bint need_dx) noexcept nogil:
    """Adds this sample's weight and bias gradients to dw, db; writes dx."""
    cdef Py_ssize_t grp, k, p
    cdef const real* xg
    cdef const real* dyg
    cdef const real* wg
    cdef real acc
    for k in range(g.K):
        acc = 0
        for p in range(g.P):
            acc = acc + dy[k * g.P + p]
        db[k] += acc
    if need_dx and not g.direct:
        memset(dx, 0, g.C * g.H * g.W * sizeof(real))
    for grp in range(g.groups):
        xg = x + grp * g.Cg * g.H * g.W
        dyg = dy + grp * g.Kg * g.P
        wg = w + grp * g.Kg * g.Q
        # dW_g[Kg, Q] += dY_g[Kg, P] @ col[Q, P]^T
        if g.direct:
            gemm(g.Kg, g.Q, g.P, dyg, g.P, 1, xg, 1, g.P,
                 dw + grp * g.Kg * g.Q, g.Q, 1, <const real*>NULL, work)
        elif real is float:
            cnnrt_tr_sgemm_im2col(_gemm.ukernel, g.Kg, g.Q, g.P, dyg, g.P, 1, NULL, 1,
                                  xg, g.H, g.W, g.H2, g.W2, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl,
                                  g.dh, g.dw, dw + grp * g.Kg * g.Q, g.Q, 1, NULL, work)
        else:
            im2col(xg, g.Cg, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw,
                   g.H2, g.W2, col)
            gemm(g.Kg, g.Q, g.P, dyg, g.P, 1, col, 1, g.P,
                 dw + grp * g.Kg * g.Q, g.Q, 1, <const real*>NULL, work)
        if not need_dx:
            continue
        # dcol[Q, P] = W_g[Kg, Q]^T @ dY_g[Kg, P]
        if real is float and g.direct:
            cnnrt_tr_sgemm_apacked(_gemm.ukernel, g.Q, g.P, g.Kg, g.wtpk + grp * g.tpk, dyg, g.P,
                                   1, dx + grp * g.Cg * g.H * g.W, g.P, 0, NULL, work)
        elif real is float:
            cnnrt_tr_sgemm_apacked(_gemm.ukernel, g.Q, g.P, g.Kg, g.wtpk + grp * g.tpk, dyg, g.P,
                                   1, col, g.P, 0, NULL, work)
            col2im(col, g.Cg, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw,
                   g.H2, g.W2, dx + grp * g.Cg * g.H * g.W)
        elif g.direct:
            gemm(g.Q, g.P, g.Kg, wg, 1, g.Q, dyg, g.P, 1,
                 dx + grp * g.Cg * g.H * g.W, g.P, 0, <const real*>NULL, work)
        else:
            gemm(g.Q, g.P, g.Kg, wg, 1, g.Q, dyg, g.P, 1, col, g.P, 0,
                 <const real*>NULL, work)
            col2im(col, g.Cg, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw,
                   g.H2, g.W2, dx + grp * g.Cg * g.H * g.W)


cdef void reduce_partials(const real* parts, Py_ssize_t n_parts, Py_ssize_t size, real* out,
                          int n_threads) noexcept nogil:
    """out[i] = sum over p (in order) of parts[p * size + i]."""
    cdef Py_ssize_t c, i, p, lo, hi
    cdef Py_ssize_t n_chunks = (size + CHUNK - 1) // CHUNK
    for c in prange(n_chunks, schedule="static", num_threads=n_threads):
        lo = c * CHUNK
        hi = min(lo + CHUNK, size)
        for i in range(lo, hi):
            out[i] = parts[i]
        for p in range(1, n_parts):
            for i in range(lo, hi):
                out[i] = out[i] + parts[p * size + i]


def conv2d_backward(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w,
                    const real[:, :, :, ::1] dy, real[:, :, :, ::1] dx,
                    real[:, :, :, ::1] dw, real[::1] db, stride, padding, dilation,
                    int groups, bint need_dx=True, int n_threads=0):
    """Gradients of conv2d: dx [N,C,H,W] (if need_dx), dw [K,C/groups,kh,kw], db [K].

    dw and db are overwritten (not accumulated)."""
    cdef ConvGeom g = conv_geom((x.shape[0], x.shape[1], x.shape[2], x.shape[3]), (w.shape[0], w.shape[1], w.shape[2], w.shape[3]), (dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3]),
                                stride, padding, dilation, groups)
    if (dw.shape[0], dw.shape[1], dw.shape[2], dw.shape[3]) != (w.shape[0], w.shape[1], w.shape[2], w.shape[3]) or db.shape[0] != g.K:
        raise ValueError("conv2d_backward: dw / db shapes differ from the weights")
    if need_dx and (dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3]) != (x.shape[0], x.shape[1], x.shape[2], x.shape[3]):
        raise ValueError("conv2d_backward: dx shape differs from x")
    cdef Py_ssize_t wsize = g.K * g.Q
    if g.N == 0 or g.P == 0:
        dw[:, :, :, :] = 0
        db[:] = 0
        if need_dx:
            dx[:, :, :, :] = 0
        return
    cdef Py_ssize_t n_parts = min(<Py_ssize_t>PARTIALS, g.N)
    dtype = np.float32 if real is float else np.float64
    cdef real[:, ::1] dw_parts = np.zeros((n_parts, wsize), dtype=dtype)
    cdef real[:, ::1] db_parts = np.zeros((n_parts, g.K), dtype=dtype)
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t p, n
    cdef real* col
    cdef float* work
    cdef int failed[1]
    failed[0] = 0
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef const real* wp = &w[0, 0, 0, 0]
    cdef const real* dyp = &dy[0, 0, 0, 0]
    cdef real* dxp = &dx[0, 0, 0, 0] if need_dx else NULL
    cdef real* dwp = &dw_parts[0, 0]
    cdef real* dbp = &db_parts[0, 0]
    keep = None
    if real is float:
        if need_dx:
            keep = pack_weights(&g, wp, True)
    col = NULL
    work = NULL
    with nogil, parallel(num_threads=nt):
        col = <real*>malloc(g.Q * g.P * sizeof(real))
        work = <float*>malloc(cnnrt_tr_gemm_work() * sizeof(float))
        for p in prange(n_parts, schedule="dynamic"):
            if col == NULL or work == NULL:
                failed[0] = 1
                continue
            n = p
            while n < g.N:
                conv_backward_sample(&g, xp + n * g.C * g.H * g.W, wp, dyp + n * g.K * g.P,
                                     (dxp + n * g.C * g.H * g.W) if need_dx else NULL,
                                     dwp + p * wsize, dbp + p * g.K, col, work, need_dx)
                n = n + n_parts
        free(col)
        free(work)
    if failed[0]:
        raise MemoryError("conv2d_backward: cannot allocate im2col space")
    with nogil:
        reduce_partials(dwp, n_parts, wsize, &dw[0, 0, 0, 0], nt)
        reduce_partials(dbp, n_parts, g.K, &db[0], 1)


# ==========================================================================
# dense
# ==========================================================================

def dense_forward(const real[:, ::1] x, const real[:, ::1] w, const real[::1] b,
                  real[:, ::1] y, int n_threads=0):
    """y[N, O] = x[N, I] @ w[O, I]^T + b[O]."""
    cdef Py_ssize_t N = x.shape[0], I = x.shape[1], O = w.shape[0]
    if w.shape[1] != I or b.shape[0] != O or y.shape[0] != N or y.shape[1] != O:
        raise ValueError(f"dense: shapes do not agree (x {x.shape[0]}x{x.shape[1]}, "
                         f"w {w.shape[0]}x{w.shape[1]}, y {y.shape[0]}x{y.shape[1]})")
    if N == 0 or O == 0:
        return
    cdef int nt = _threads(n_threads)
    cdef int rc
    cdef Py_ssize_t n, o
    with nogil:
        rc = pgemm(N, O, I, &x[0, 0], I, 1, &w[0, 0], 1, I, &y[0, 0], O, 0, nt)
        for n in range(N):
            for o in range(O):
                y[n, o] = y[n, o] + b[o]
    if rc:
        raise MemoryError("dense: cannot allocate GEMM work space")


def dense_backward(const real[:, ::1] x, const real[:, ::1] w, const real[:, ::1] dy,
                   real[:, ::1] dx, real[:, ::1] dw, real[::1] db, bint need_dx=True,
                   int n_threads=0):
    """dx = dy @ w, dw = dy^T @ x, db = sum of dy over the batch (overwritten)."""
    cdef Py_ssize_t N = x.shape[0], I = x.shape[1], O = w.shape[0]
    if (w.shape[1] != I or dy.shape[0] != N or dy.shape[1] != O or dw.shape[0] != O
            or dw.shape[1] != I or db.shape[0] != O):
        raise ValueError("dense_backward: shapes do not agree")
    if need_dx and (dx.shape[0] != N or dx.shape[1] != I):
        raise ValueError("dense_backward: dx shape differs from x")
    cdef int nt = _threads(n_threads)
    cdef int rc = 0
    cdef Py_ssize_t n, o
    cdef real acc
    if N == 0:
        dw[:, :] = 0
        db[:] = 0
        return
    with nogil:
        if need_dx and I > 0:
            rc = pgemm(N, I, O, &dy[0, 0], O, 1, &w[0, 0], I, 1, &dx[0, 0], I, 0, nt)
        if rc == 0 and I > 0:
            rc = pgemm(O, I, N, &dy[0, 0], 1, O, &x[0, 0], I, 1, &dw[0, 0], I, 0, nt)
        for o in range(O):
            acc = 0
            for n in range(N):
                acc = acc + dy[n, o]
            db[o] = acc
    if rc:
        raise MemoryError("dense_backward: cannot allocate GEMM work space")


# ==========================================================================
# Pooling
# ==========================================================================

cdef struct PoolGeom:
    Py_ssize_t H, W, H2, W2, kh, kw, sh, sw, pt, pl
    bint include_pad


cdef PoolGeom pool_geom(Py_ssize_t H, Py_ssize_t W, Py_ssize_t H2, Py_ssize_t W2,
                        kernel, stride, padding, bint include_pad) except *:
    cdef PoolGeom g
    g.H, g.W, g.H2, g.W2 = H, W, H2, W2
    g.kh, g.kw = kernel
    g.sh, g.sw = stride
    g.pt, g.pl = padding[0], padding[1]
    g.include_pad = include_pad
    if min(g.kh, g.kw, g.sh, g.sw) < 1 or min(padding) < 0:
        raise ValueError("pool2d: kernel and stride must be positive, padding >= 0")
    h2 = (H + padding[0] + padding[2] - g.kh) // g.sh + 1
    w2 = (W + padding[1] + padding[3] - g.kw) // g.sw + 1
    if h2 != H2 or w2 != W2:
        raise ValueError(f"pool2d: output is {H2}x{W2}, expected {h2}x{w2}")
    return g


cdef inline Py_ssize_t win_lo(Py_ssize_t o, Py_ssize_t s, Py_ssize_t pad) noexcept nogil:
    cdef Py_ssize_t a = o * s - pad
    return a if a > 0 else 0


cdef inline Py_ssize_t win_hi(Py_ssize_t o, Py_ssize_t s, Py_ssize_t pad, Py_ssize_t k,
                              Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t b = o * s - pad + k
    return b if b < size else size


cdef void maxpool_plane(const PoolGeom* g, const real* x, real* y, int32_t* idx) noexcept nogil:
    # Branch-free selects: the loads are unconditional, so the compiler can
    # use conditional moves instead of unpredictable branches.
    cdef Py_ssize_t oh, ow, i, j, ilo, ihi, jlo, jhi, best, k
    cdef real m, v
    cdef bint take
    for oh in range(g.H2):
        ilo = win_lo(oh, g.sh, g.pt)
        ihi = win_hi(oh, g.sh, g.pt, g.kh, g.H)
        for ow in range(g.W2):
            jlo = win_lo(ow, g.sw, g.pl)
            jhi = win_hi(ow, g.sw, g.pl, g.kw, g.W)
            if ilo >= ihi or jlo >= jhi:
                y[oh * g.W2 + ow] = 0
                idx[oh * g.W2 + ow] = -1
                continue
            best = ilo * g.W + jlo
            m = x[best]
            for i in range(ilo, ihi):
                for j in range(jlo, jhi):
                    k = i * g.W + j
                    v = x[k]
                    take = v > m
                    best = k if take else best
                    m = v if take else m
            y[oh * g.W2 + ow] = m
            idx[oh * g.W2 + ow] = <int32_t>best


cdef void avgpool_plane(const PoolGeom* g, const real* x, real* y) noexcept nogil:
    cdef Py_ssize_t oh, ow, i, j, ilo, ihi, jlo, jhi, cnt
    cdef real acc
    for oh in range(g.H2):
        ilo = win_lo(oh, g.sh, g.pt)
        ihi = win_hi(oh, g.sh, g.pt, g.kh, g.H)
        for ow in range(g.W2):
            jlo = win_lo(ow, g.sw, g.pl)
            jhi = win_hi(ow, g.sw, g.pl, g.kw, g.W)
            acc = 0
            for i in range(ilo, ihi):
                for j in range(jlo, jhi):
                    acc = acc + x[i * g.W + j]
            cnt = g.kh * g.kw if g.include_pad else (ihi - ilo) * (jhi - jlo)
            y[oh * g.W2 + ow] = acc / cnt if cnt > 0 else 0


cdef void avgpool_plane_backward(const PoolGeom* g, const real* dy, real* dx) noexcept nogil:
    cdef Py_ssize_t oh, ow, i, j, ilo, ihi, jlo, jhi, cnt
    cdef real v
    memset(dx, 0, g.H * g.W * sizeof(real))
    for oh in range(g.H2):
        ilo = win_lo(oh, g.sh, g.pt)
        ihi = win_hi(oh, g.sh, g.pt, g.kh, g.H)
        for ow in range(g.W2):
            jlo = win_lo(ow, g.sw, g.pl)
            jhi = win_hi(ow, g.sw, g.pl, g.kw, g.W)
            cnt = g.kh * g.kw if g.include_pad else (ihi - ilo) * (jhi - jlo)
            if cnt <= 0:
                continue
            v = dy[oh * g.W2 + ow] / cnt
            for i in range(ilo, ihi):
                for j in range(jlo, jhi):
                    dx[i * g.W + j] += v


def maxpool2d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y, int32_t[:, :, :, ::1] idx,
                      kernel, stride, padding, int n_threads=0):
    """y = max over each window; idx = flat H*W index of the winner (first max wins).

    Padding cells never win; a window of padding only gives 0 and index -1."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    if (y.shape[0] != N or y.shape[1] != C or idx.shape[0] != N or idx.shape[1] != C
            or idx.shape[2] != y.shape[2] or idx.shape[3] != y.shape[3]):
        raise ValueError("maxpool2d: output shapes do not agree")
    cdef PoolGeom g = pool_geom(x.shape[2], x.shape[3], y.shape[2], y.shape[3], kernel, stride,
                                padding, False)
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t item
    if N * C * g.H * g.W == 0:
        return
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef real* yp = &y[0, 0, 0, 0]
    cdef int32_t* ip = &idx[0, 0, 0, 0]
    for item in prange(N * C, schedule="static", num_threads=nt, nogil=True):
        maxpool_plane(&g, xp + item * g.H * g.W, yp + item * g.H2 * g.W2, ip + item * g.H2 * g.W2)


def maxpool2d_backward(const real[:, :, :, ::1] dy, const int32_t[:, :, :, ::1] idx,
                       real[:, :, :, ::1] dx, int n_threads=0):
    """dx[winner] += dy for every window (dx overwritten)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t P = dy.shape[2] * dy.shape[3]
    if (dy.shape[0] != N or dy.shape[1] != C or idx.shape[0] != N or idx.shape[1] != C
            or idx.shape[2] != dy.shape[2] or idx.shape[3] != dy.shape[3]):
        raise ValueError("maxpool2d_backward: shapes do not agree")
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t item
    if N * C * H * W == 0:
        return
    cdef real* dxp = &dx[0, 0, 0, 0]
    cdef const real* dyp = &dy[0, 0, 0, 0] if P else NULL
    cdef const int32_t* ip = &idx[0, 0, 0, 0] if P else NULL
    for item in prange(N * C, schedule="static", num_threads=nt, nogil=True):
        scatter_plane(dyp + item * P if P else NULL, ip + item * P if P else NULL, P,
                      dxp + item * H * W, H * W)


cdef void scatter_plane(const real* dy, const int32_t* idx, Py_ssize_t P, real* dx,
                        Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t i
    memset(dx, 0, size * sizeof(real))
    for i in range(P):
        if idx[i] >= 0:
            dx[idx[i]] += dy[i]


def avgpool2d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y, kernel, stride, padding,
                      bint count_include_pad, int n_threads=0):
    """y = mean over each window; padding cells count as zeros when count_include_pad."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    if y.shape[0] != N or y.shape[1] != C:
        raise ValueError("avgpool2d: output shape does not agree")
    cdef PoolGeom g = pool_geom(x.shape[2], x.shape[3], y.shape[2], y.shape[3], kernel, stride,
                                padding, count_include_pad)
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t item
    if N * C * g.H * g.W == 0:
        return
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef real* yp = &y[0, 0, 0, 0]
    for item in prange(N * C, schedule="static", num_threads=nt, nogil=True):
        avgpool_plane(&g, xp + item * g.H * g.W, yp + item * g.H2 * g.W2)


def avgpool2d_backward(const real[:, :, :, ::1] dy, real[:, :, :, ::1] dx, kernel, stride,
                       padding, bint count_include_pad, int n_threads=0):
    """Gradient of avgpool2d (dx overwritten)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1]
    if dy.shape[0] != N or dy.shape[1] != C:
        raise ValueError("avgpool2d_backward: shapes do not agree")
    cdef PoolGeom g = pool_geom(dx.shape[2], dx.shape[3], dy.shape[2], dy.shape[3], kernel,
                                stride, padding, count_include_pad)
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t item
    if N * C * g.H * g.W == 0:
        return
    cdef real* dxp = &dx[0, 0, 0, 0]
    cdef const real* dyp = &dy[0, 0, 0, 0]
    for item in prange(N * C, schedule="static", num_threads=nt, nogil=True):
        avgpool_plane_backward(&g, dyp + item * g.H2 * g.W2, dxp + item * g.H * g.W)


# ==========================================================================
# Element-wise: relu, dropout
# ==========================================================================

def relu_forward(const real[::1] x, real[::1] y, int n_threads=0):
    """y = max(x, 0) on flat views."""
    cdef Py_ssize_t n = x.shape[0], i
    if y.shape[0] != n:
        raise ValueError("relu: sizes differ")
    cdef int nt = _threads(n_threads)
    for i in prange(n, schedule="static", num_threads=nt, nogil=True):
        y[i] = x[i] if x[i] > 0 else 0


def relu_backward(const real[::1] y, const real[::1] dy, real[::1] dx, int n_threads=0):
    """dx = dy where the forward output y was positive, else 0."""
    cdef Py_ssize_t n = y.shape[0], i
    if dy.shape[0] != n or dx.shape[0] != n:
        raise ValueError("relu_backward: sizes differ")
    cdef int nt = _threads(n_threads)
    cdef real g
    for i in prange(n, schedule="static", num_threads=nt, nogil=True):
        g = dy[i]  # loaded unconditionally: a select, not a branch
        dx[i] = g if y[i] > 0 else 0


cdef inline uint64_t splitmix64(uint64_t z) noexcept nogil:
    z = z + <uint64_t>0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


def dropout_mask(uint64_t seed, double rate, uint8_t[::1] mask, int n_threads=0):
    """mask[i] = 1 with probability 1 - rate, from a counter-based hash of (seed, i).

    The same seed gives the same mask whatever the thread count."""
    cdef Py_ssize_t n = mask.shape[0], i
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    cdef uint64_t threshold = <uint64_t>(rate * 16777216.0)
    cdef uint64_t key = splitmix64(seed)
    cdef int nt = _threads(n_threads)
    for i in prange(n, schedule="static", num_threads=nt, nogil=True):
        mask[i] = 1 if (splitmix64(key ^ <uint64_t>i) >> 40) >= threshold else 0


def dropout_apply(const real[::1] x, const uint8_t[::1] mask, double scale, real[::1] y,
                  int n_threads=0):
    """y = x * mask * scale (the forward pass; also the backward pass with dy for x)."""
    cdef Py_ssize_t n = x.shape[0], i
    if mask.shape[0] != n or y.shape[0] != n:
        raise ValueError("dropout: sizes differ")
    cdef int nt = _threads(n_threads)
    cdef real s = <real>scale
    cdef real v
    for i in prange(n, schedule="static", num_threads=nt, nogil=True):
        v = x[i] * s
        y[i] = v if mask[i] else 0


# ==========================================================================
# batchnorm2d
# ==========================================================================

def batchnorm_forward_train(const real[:, :, ::1] x, const real[::1] gamma, const real[::1] beta,
                            double eps, real[:, :, ::1] y, double[::1] mean, double[::1] invstd,
                            double[::1] var, int n_threads=0):
    """Batch statistics per channel of x [N, C, HW]; y = gamma * (x - mean) * invstd + beta.

    Writes the batch mean, 1/sqrt(var + eps) and the biased variance (float64)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    if (y.shape[0] != N or y.shape[1] != C or y.shape[2] != S or gamma.shape[0] != C
            or beta.shape[0] != C or mean.shape[0] != C or invstd.shape[0] != C
            or var.shape[0] != C):
        raise ValueError("batchnorm2d: shapes do not agree")
    if N * S == 0:
        raise ValueError("batchnorm2d: training needs at least one value per channel")
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t c, n, s
    cdef double m, v, d, inv, cnt = N * S
    cdef real a, b
    for c in prange(C, schedule="static", num_threads=nt, nogil=True):
        m = 0
        for n in range(N):
            for s in range(S):
                m = m + x[n, c, s]
        m = m / cnt
        v = 0
        for n in range(N):
            for s in range(S):
                d = x[n, c, s] - m
                v = v + d * d
        v = v / cnt
        inv = 1.0 / sqrt(v + eps)
        mean[c] = m
        var[c] = v
        invstd[c] = inv
        a = <real>(gamma[c] * inv)
        b = <real>(beta[c] - gamma[c] * inv * m)
        for n in range(N):
            for s in range(S):
                y[n, c, s] = x[n, c, s] * a + b


def batchnorm_forward_eval(const real[:, :, ::1] x, const real[::1] gamma, const real[::1] beta,
                           const real[::1] running_mean, const real[::1] running_var, double eps,
                           real[:, :, ::1] y, int n_threads=0):
    """Inference mode: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    if (y.shape[0] != N or y.shape[1] != C or y.shape[2] != S or gamma.shape[0] != C
            or beta.shape[0] != C or running_mean.shape[0] != C or running_var.shape[0] != C):
        raise ValueError("batchnorm2d: shapes do not agree")
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t item, c, s
    cdef real a, b
    cdef double inv
    for item in prange(N * C, schedule="static", num_threads=nt, nogil=True):
        c = item % C
        inv = 1.0 / sqrt(<double>running_var[c] + eps)
        a = <real>(gamma[c] * inv)
        b = <real>(beta[c] - gamma[c] * inv * running_mean[c])
        for s in range(S):
            y[item // C, c, s] = x[item // C, c, s] * a + b


def batchnorm_backward_train(const real[:, :, ::1] x, const real[:, :, ::1] dy,
                             const real[::1] gamma, const double[::1] mean,
                             const double[::1] invstd, real[:, :, ::1] dx, real[::1] dgamma,
                             real[::1] dbeta, int n_threads=0):
    """Gradient of the training-mode forward (batch statistics depend on x).

    dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    if (dy.shape[0] != N or dy.shape[1] != C or dy.shape[2] != S or dx.shape[0] != N
            or dx.shape[1] != C or dx.shape[2] != S or gamma.shape[0] != C
            or dgamma.shape[0] != C or dbeta.shape[0] != C):
        raise ValueError("batchnorm2d_backward: shapes do not agree")
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t c, n, s
    cdef double sdy, sdyx, xhat, inv, m, cnt = N * S
    for c in prange(C, schedule="static", num_threads=nt, nogil=True):
        m = mean[c]
        inv = invstd[c]
        sdy = 0
        sdyx = 0
        for n in range(N):
            for s in range(S):
                sdy = sdy + dy[n, c, s]
                sdyx = sdyx + dy[n, c, s] * (x[n, c, s] - m) * inv
        dbeta[c] = <real>sdy
        dgamma[c] = <real>sdyx
        sdy = sdy / cnt
        sdyx = sdyx / cnt
        for n in range(N):
            for s in range(S):
                xhat = (x[n, c, s] - m) * inv
                dx[n, c, s] = <real>(gamma[c] * inv * (dy[n, c, s] - sdy - xhat * sdyx))


def batchnorm_backward_eval(const real[:, :, ::1] dy, const real[::1] gamma,
                            const real[::1] running_var, double eps, real[:, :, ::1] dx,
                            int n_threads=0):
    """Input gradient of the inference-mode forward (fixed statistics)."""
    cdef Py_ssize_t N = dy.shape[0], C = dy.shape[1], S = dy.shape[2]
    if dx.shape[0] != N or dx.shape[1] != C or dx.shape[2] != S:
        raise ValueError("batchnorm2d_backward: shapes do not agree")
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t item, c, s
    cdef real a
    for item in prange(N * C, schedule="static", num_threads=nt, nogil=True):
        c = item % C
        a = <real>(gamma[c] / sqrt(<double>running_var[c] + eps))
        for s in range(S):
            dx[item // C, c, s] = dy[item // C, c, s] * a


# ==========================================================================
# Softmax cross-entropy
# ==========================================================================

def softmax_xent_forward(const real[:, ::1] logits, const int64_t[::1] labels,
                         real[:, ::1] probs, double[::1] losses, int n_threads=0):
    """probs = softmax(logits) per row; losses[n] = -log probs[n, labels[n]].

    Returns the mean loss, summed in sample order."""
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1]
    if labels.shape[0] != N or probs.shape[0] != N or probs.shape[1] != K or losses.shape[0] != N:
        raise ValueError("softmax_xent: shapes do not agree")
    cdef Py_ssize_t n, k
    for n in range(N):
        if labels[n] < 0 or labels[n] >= K:
            raise ValueError(f"label {labels[n]} of sample {n} is outside 0..{K - 1}")
    cdef int nt = _threads(n_threads)
    cdef double m, total, lse
    for n in prange(N, schedule="static", num_threads=nt, nogil=True):
        m = -INFINITY
        for k in range(K):
            if logits[n, k] > m:
                m = logits[n, k]
        total = 0
        for k in range(K):
            total = total + exp(logits[n, k] - m)
        lse = m + log(total)
        for k in range(K):
            probs[n, k] = <real>exp(logits[n, k] - lse)
        losses[n] = lse - logits[n, labels[n]]
    total = 0
    for n in range(N):
        total += losses[n]
    return total / N if N else 0.0


def softmax_xent_backward(const real[:, ::1] probs, const int64_t[::1] labels, double scale,
                          real[:, ::1] dlogits, int n_threads=0):
    """dlogits = (probs - onehot(labels)) * scale  (scale = 1/N for the mean loss)."""
    cdef Py_ssize_t N = probs.shape[0], K = probs.shape[1]
    if labels.shape[0] != N or dlogits.shape[0] != N or dlogits.shape[1] != K:
        raise ValueError("softmax_xent_backward: shapes do not agree")
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t n, k
    cdef real s = <real>scale
    for n in prange(N, schedule="static", num_threads=nt, nogil=True):
        for k in range(K):
            dlogits[n, k] = (probs[n, k] - (1 if k == labels[n] else 0)) * s


# ==========================================================================
# Optimizer updates (flat parameter views)
# ==========================================================================

def sgd_update(real[::1] param, const real[::1] grad, real[::1] velocity, double lr,
               double momentum, double weight_decay, bint nesterov=False, int n_threads=0):
    """g = grad + wd * param; v = momentum * v + g; param -= lr * (g + momentum * v if nesterov else v)."""
    cdef Py_ssize_t n = param.shape[0], i
    if grad.shape[0] != n or velocity.shape[0] != n:
        raise ValueError("sgd_update: sizes differ")
    cdef int nt = _threads(n_threads)
    cdef real g, v
    cdef real lr_ = <real>lr, mom = <real>momentum, wd = <real>weight_decay
    for i in prange(n, schedule="static", num_threads=nt, nogil=True):
        g = grad[i] + wd * param[i]
        v = mom * velocity[i] + g
        velocity[i] = v
        if nesterov:
            param[i] = param[i] - lr_ * (g + mom * v)
        else:
            param[i] = param[i] - lr_ * v


def adam_update(real[::1] param, const real[::1] grad, real[::1] m, real[::1] v, double lr,
                double beta1, double beta2, double eps, double weight_decay, long step,
                bint decoupled=False, int n_threads=0):
    """Adam (Kingma & Ba) with bias correction; weight decay as an L2 term added to
    the gradient, or decoupled (AdamW: param -= lr * wd * param) when decoupled."""
    cdef Py_ssize_t n = param.shape[0], i
    if grad.shape[0] != n or m.shape[0] != n or v.shape[0] != n:
        raise ValueError("adam_update: sizes differ")
    if step < 1:
        raise ValueError("adam_update: step counts from 1")
    cdef int nt = _threads(n_threads)
    cdef double c1 = 1.0 - beta1 ** step, c2 = 1.0 - beta2 ** step
    cdef real b1 = <real>beta1, b2 = <real>beta2, ep = <real>eps
    cdef real step_size = <real>(lr / c1), inv_c2 = <real>(1.0 / c2)
    cdef real wd = <real>weight_decay, lrwd = <real>(lr * weight_decay)
    cdef real g, mi, vi
    for i in prange(n, schedule="static", num_threads=nt, nogil=True):
        g = grad[i]
        if decoupled:
            param[i] = param[i] - lrwd * param[i]
        else:
            g = g + wd * param[i]
        mi = b1 * m[i] + (1 - b1) * g
        vi = b2 * v[i] + (1 - b2) * g * g
        m[i] = mi
        v[i] = vi
        if real is float:
            param[i] = param[i] - step_size * mi / (sqrtf(vi * inv_c2) + ep)
        else:
            param[i] = param[i] - step_size * mi / (sqrt(vi * inv_c2) + ep)


# ==========================================================================
# Augmentation
# ==========================================================================

def shift_flip(const real[:, :, :, ::1] x, const int32_t[:, ::1] shifts, const uint8_t[::1] flips,
               real[:, :, :, ::1] y, int n_threads=0):
    """y = x shifted by shifts[n] = (dy, dx) pixels, after a horizontal mirror when flips[n]:
    y[n, c, i, j] = m[n, c, clamp(i - dy), clamp(j - dx)], m = x or x[..., ::-1].

    Edge pixels are repeated into the uncovered border."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    if ((y.shape[0], y.shape[1], y.shape[2], y.shape[3]) != (x.shape[0], x.shape[1], x.shape[2], x.shape[3]) or shifts.shape[0] != N or shifts.shape[1] != 2
            or flips.shape[0] != N):
        raise ValueError("shift_flip: shapes do not agree")
    cdef int nt = _threads(n_threads)
    cdef Py_ssize_t item, n, c, i, j, si, sj
    for item in prange(N * C, schedule="static", num_threads=nt, nogil=True):
        n = item // C
        c = item % C
        for i in range(H):
            si = i - shifts[n, 0]
            si = 0 if si < 0 else (H - 1 if si >= H else si)
            for j in range(W):
                sj = j - shifts[n, 1]
                sj = 0 if sj < 0 else (W - 1 if sj >= W else sj)
                sj = (W - 1 - sj) if flips[n] else sj
                y[n, c, i, j] = x[n, c, si, sj]
