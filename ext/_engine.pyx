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
from cython.parallel cimport prange, threadid
from libc.math cimport expf, tanhf, sqrtf, INFINITY
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
cimport numpy as cnp

import numpy as np

cnp.import_array()

include "engine_types.pxi"

# Work items of element-wise kernels: contiguous chunks of this many floats.
DEF CHUNK = 16384
# Output positions packed together by one convolution task (4 panels of NR).
DEF MACRO = 128
# Floats of thread-private packing space (MACRO positions x KC taps).
DEF PACK_FLOATS = 128 * 256
# Runs of consecutive positions one packing call may hold.
DEF MAX_RUNS = 160
# Floats of slack that let the arena start on a 64-byte boundary.
DEF ALIGN_FLOATS = 16


# ==========================================================================
# Activations
# ==========================================================================

cdef inline Py_ssize_t span(Py_ssize_t left, Py_ssize_t most) noexcept nogil:
    """How much of a block fits: what is left, at most a full block."""
    return left if left < most else most


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
# Convolution: packed GEMM with SIMD micro-kernels (ext/f32_gemm.h)
# ==========================================================================
#
# Y[K, P] = W[K, Q] @ X_col[Q, P] per image and group, P = H2*W2 output
# positions, Q = C/groups*kh*kw taps.  Weights are packed once at load into
# panels of MR output channels (pack_conv_weights).  Columns of X_col are
# never materialised: each task packs its NR output positions for one block
# of KC taps straight from the input image into a thread-private panel, then
# runs the micro-kernel for each of its weight panels.

cdef extern from "f32_gemm.h":
    ctypedef void (*cnnrt_gemm_ukernel)(size_t kc, const float* a, const float* b,
                                        float* c, size_t ldc, size_t mr, size_t nr,
                                        const float* bias, int first, int last,
                                        int act) noexcept nogil
    ctypedef void (*cnnrt_gemm_ukernel_ind)(size_t kc, const float* a, const float* b,
                                            const Py_ssize_t* off, float* c, size_t mr,
                                            size_t nr, const float* bias, int first,
                                            int last, int act) noexcept nogil
    ctypedef void (*cnnrt_gemm_ukernel_rows)(size_t kc, const float* a, const Py_ssize_t* off,
                                             Py_ssize_t a_step, size_t mr, const float* b,
                                             float* c, int first) noexcept nogil
    ctypedef void (*cnnrt_rows_c16_fn)(size_t kc, const float* a, const Py_ssize_t* off,
                                       Py_ssize_t a_step, size_t mr, const float* b,
                                       const float* bias, int act, float* y, Py_ssize_t ys,
                                       size_t nb) noexcept nogil
    ctypedef struct cnnrt_gemm_config:
        int isa
        size_t nr
        cnnrt_gemm_ukernel ukernel
        cnnrt_gemm_ukernel_ind ukernel_ind
        cnnrt_gemm_ukernel_rows ukernel_rows
        cnnrt_gemm_ukernel_rows ukernel_rows48
        cnnrt_rows_c16_fn rows_c16
        cnnrt_rows_c16_fn rows48_c16
        const char* name
    int CNNRT_MR
    int CNNRT_NR
    int CNNRT_NR_MAX
    int CNNRT_ISA_SCALAR
    int CNNRT_ISA_AVX2
    int CNNRT_ISA_AVX512
    int cnnrt_isa_supported(int isa) noexcept nogil
    int cnnrt_isa_best() noexcept nogil
    cnnrt_gemm_config cnnrt_gemm_select(int isa) noexcept nogil
    void cnnrt_scatter_tile(const float* tile, size_t mr, float* dst, size_t ldd,
                            const Py_ssize_t* src, const Py_ssize_t* doff, const Py_ssize_t* len,
                            size_t nseg) noexcept nogil
    void cnnrt_pack_pointwise(const float* x, size_t HW, size_t q0, size_t kc, size_t p0,
                              size_t nr, size_t nr_full, size_t ahead, float* dst) noexcept nogil
    ctypedef void (*cnnrt_store_t_fn)(const float* tile, size_t mr, size_t nr,
                                      const float* bias, int act, float* dst,
                                      size_t ldd, size_t ldt) noexcept nogil
    cnnrt_store_t_fn cnnrt_store_t_select(int isa) noexcept nogil
    void cnnrt_prefetch_rows(const float* base, size_t ldd, size_t rows, size_t start,
                             size_t stop) noexcept nogil

# Taps per packed block: a B panel of KC x NR floats stays in L1.
DEF KC = 256

cdef cnnrt_gemm_config _gemm = cnnrt_gemm_select(cnnrt_isa_best())
cdef cnnrt_store_t_fn _store_t = cnnrt_store_t_select(cnnrt_isa_best())

cdef extern from "f32_c16.h":
    ctypedef void (*cnnrt_to_c16_fn)(const float* x, Py_ssize_t C, Py_ssize_t HW, Py_ssize_t cb,
                                     Py_ssize_t p0, Py_ssize_t p1, float* y) noexcept nogil
    ctypedef void (*cnnrt_from_c16_fn)(const float* x, Py_ssize_t C, Py_ssize_t HW,
                                       Py_ssize_t cb, Py_ssize_t p0, Py_ssize_t p1,
                                       float* y) noexcept nogil
    ctypedef void (*cnnrt_dw_c16_row_fn)(const float* x, Py_ssize_t H, Py_ssize_t W,
                                         const float* w16, const float* b16, Py_ssize_t kh,
                                         Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                         Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pt,
                                         Py_ssize_t pl, Py_ssize_t oy, Py_ssize_t W2, int act,
                                         float* orow) noexcept nogil
    ctypedef void (*cnnrt_store_c16_fn)(const float* c, size_t ldc, size_t mr, const float* bias,
                                        int act, float* y0, float* y1) noexcept nogil
    ctypedef void (*cnnrt_pw_c16_fn)(size_t mr, size_t C, const float* a, Py_ssize_t bs,
                                     const float* b, const float* bias, int act, float* y0,
                                     float* y1, int first, int last) noexcept nogil
    ctypedef void (*cnnrt_pw48_c16_fn)(size_t mr, size_t C, const float* a, Py_ssize_t bs,
                                       const float* b, const float* bias, int act, float* y0,
                                       float* y1, float* y2, int first, int last) noexcept nogil
    ctypedef void (*cnnrt_maxpool_c16_row_fn)(const float* x, Py_ssize_t H, Py_ssize_t W,
                                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                              Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                              Py_ssize_t oy, Py_ssize_t W2,
                                              float* orow) noexcept nogil
    ctypedef struct cnnrt_c16_config:
        cnnrt_to_c16_fn to_c16
        cnnrt_from_c16_fn from_c16
        cnnrt_dw_c16_row_fn dw_row
        cnnrt_store_c16_fn store
        cnnrt_pw_c16_fn pw
        cnnrt_pw48_c16_fn pw48
        cnnrt_maxpool_c16_row_fn maxpool_row
    cnnrt_c16_config cnnrt_c16_select(int isa) nogil


cdef cnnrt_c16_config _c16 = cnnrt_c16_select(cnnrt_isa_best())

DEF C16_CHUNK = 1024  # positions per reorder task
DEF PW_KC = 128  # channel-blocked pointwise: input channels per pass (weights 16 KB)

# Steps with less arithmetic than this (multiply-adds, about) run on one thread.
cdef Py_ssize_t _parallel_min_work = 1 << 14


def set_parallel_min_work(Py_ssize_t work):
    """Steps with less arithmetic per call than ``work`` run on one thread.

    The default (2**14, a few microseconds of work) keeps only the tiniest
    steps on one thread: between the steps of one call the team's threads
    are still spinning, and a parallel region costs a few microseconds.  0
    makes every step use all its threads (tests use it to exercise the parallel
    paths on small shapes).  Returns the previous value.
    """
    global _parallel_min_work
    if work < 0:
        raise ValueError(f"work must be >= 0, got {work}")
    previous = _parallel_min_work
    _parallel_min_work = work
    return previous


cdef void pack_b_conv(const Step* s, const float* xg, float* dst, Py_ssize_t q0,
                      Py_ssize_t kc, Py_ssize_t p0, Py_ssize_t nr,
                      Py_ssize_t nr_full) noexcept nogil:
    """Pack taps q0..q0+kc of output positions p0..p0+nr into panels of nr_full.

    Position j goes to panel j // nr_full, column j % nr_full: dst[(j // nr_full)
    * kc * nr_full + k * nr_full + j % nr_full]; the last panel is zero-padded.
    Positions are grouped in runs along an output row (split at panel
    boundaries), so for stride 1 each tap's run is one contiguous copy with
    zero fill at the borders, and one tap's runs read one stretch of memory.
    """
    cdef Py_ssize_t run_oy[MAX_RUNS]
    cdef Py_ssize_t run_ox[MAX_RUNS]
    cdef Py_ssize_t run_j[MAX_RUNS]
    cdef Py_ssize_t run_len[MAX_RUNS]
    cdef Py_ssize_t n_runs = 0
    cdef Py_ssize_t panel_size = kc * nr_full
    cdef Py_ssize_t tail
    cdef Py_ssize_t j = 0, p, L, q, c, r, ky, kx, t, iy, ix0, lo, hi, i, ix
    cdef Py_ssize_t khw = s.kh * s.kw
    cdef const float* plane
    cdef const float* src
    cdef float* row
    cdef float* out
    cdef Py_ssize_t HW = s.H * s.W
    if (s.kh == 1 and s.kw == 1 and s.sh == 1 and s.sw == 1 and s.pt == 0 and s.pl == 0
            and s.pb == 0 and s.pr == 0):
        # pointwise: positions are the input's own, one contiguous copy per tap and panel
        cnnrt_pack_pointwise(xg, HW, q0, kc, p0, nr, nr_full, nr, dst)
        return
    while j < nr:
        p = p0 + j
        run_oy[n_runs] = p // s.W2
        run_ox[n_runs] = p % s.W2
        L = s.W2 - run_ox[n_runs]
        if L > nr - j:
            L = nr - j
        if L > nr_full - j % nr_full:
            L = nr_full - j % nr_full
        run_j[n_runs] = j
        run_len[n_runs] = L
        n_runs += 1
        j += L
    for q in range(q0, q0 + kc):
        c = q // khw
        r = q - c * khw
        ky = r // s.kw
        kx = r - ky * s.kw
        plane = xg + c * s.H * s.W
        row = dst + (q - q0) * nr_full
        for t in range(n_runs):
            out = row + (run_j[t] // nr_full) * panel_size + run_j[t] % nr_full
            L = run_len[t]
            iy = run_oy[t] * s.sh - s.pt + ky * s.dh
            if iy < 0 or iy >= s.H:
                for i in range(L):
                    out[i] = 0.0
                continue
            src = plane + iy * s.W
            ix0 = run_ox[t] * s.sw - s.pl + kx * s.dw
            if s.sw == 1:
                lo = -ix0 if ix0 < 0 else 0
                hi = s.W - ix0 if s.W - ix0 < L else L
                if hi < lo:
                    hi = lo
                for i in range(lo):
                    out[i] = 0.0
                src = src + ix0
                for i in range(lo, hi):
                    out[i] = src[i]
                for i in range(hi, L):
                    out[i] = 0.0
            else:
                # columns i with 0 <= ix0 + i*sw < W
                lo = 0 if ix0 >= 0 else (-ix0 + s.sw - 1) // s.sw
                hi = 0 if s.W - 1 - ix0 < 0 else (s.W - 1 - ix0) // s.sw + 1
                if hi > L:
                    hi = L
                if hi < lo:
                    hi = lo
                for i in range(lo):
                    out[i] = 0.0
                src = src + ix0
                for i in range(lo, hi):
                    out[i] = src[i * s.sw]
                for i in range(hi, L):
                    out[i] = 0.0
        tail = nr % nr_full
        if tail:
            memset(row + (nr // nr_full) * panel_size + tail, 0, (nr_full - tail) * sizeof(float))


cdef void phase_split(const Step* s, const float* src, float* dst) noexcept nogil:
    """Split one zero-padded input plane into its sh x sw stride phases.

    Phase (a, b) holds padded rows a, a+sh, ... and columns b, b+sw, ...:
    dst[((a * sw + b) * Hq + r) * Wq + c] = padded[r * sh + a][c * sw + b].
    """
    cdef Py_ssize_t Hq = s.th
    cdef Py_ssize_t Wq = s.tw
    cdef Py_ssize_t y, py, b, c, lo, hi
    cdef float* row
    cdef const float* sb
    memset(dst, 0, s.sh * s.sw * Hq * Wq * sizeof(float))
    for y in range(s.H):
        py = y + s.pt
        for b in range(s.sw):
            row = dst + (((py % s.sh) * s.sw + b) * Hq + py // s.sh) * Wq
            # phase columns c with 0 <= c * sw + b - pl < W
            lo = (s.pl - b + s.sw - 1) // s.sw if s.pl > b else 0
            hi = (s.W - 1 + s.pl - b) // s.sw + 1 if s.W - 1 + s.pl - b >= 0 else 0
            if hi > Wq:
                hi = Wq
            sb = src + y * s.W + b - s.pl
            for c in range(lo, hi):
                row[c] = sb[c * s.sw]


cdef void phase_plane(const Step* s, const float* x, float* ph, Py_ssize_t item) noexcept nogil:
    """The stride phases of plane ``item`` (image-major, channel), stored contiguously."""
    phase_split(s, x + item * s.H * s.W, ph + item * s.sh * s.sw * s.th * s.tw)


cdef void pack_b_phases(const Step* s, const float* phg, float* dst, Py_ssize_t q0,
                        Py_ssize_t kc, Py_ssize_t p0, Py_ssize_t nr,
                        Py_ssize_t nr_full) noexcept nogil:
    """As pack_b_conv for a strided convolution, reading the stride phases.

    Every tap of a run of output positions along a row is one contiguous
    stretch of one phase, and padding is already in the phases.
    """
    cdef Py_ssize_t run_oy[MAX_RUNS]
    cdef Py_ssize_t run_ox[MAX_RUNS]
    cdef Py_ssize_t run_j[MAX_RUNS]
    cdef Py_ssize_t run_len[MAX_RUNS]
    cdef Py_ssize_t n_runs = 0
    cdef Py_ssize_t panel_size = kc * nr_full
    cdef Py_ssize_t Hq = s.th
    cdef Py_ssize_t Wq = s.tw
    cdef Py_ssize_t khw = s.kh * s.kw
    cdef Py_ssize_t j = 0, p, L, q, c, r, ky, kx, t, i, tail, ry, rx
    cdef const float* src
    cdef float* row
    cdef float* out
    while j < nr:
        p = p0 + j
        run_oy[n_runs] = p // s.W2
        run_ox[n_runs] = p % s.W2
        L = s.W2 - run_ox[n_runs]
        if L > nr - j:
            L = nr - j
        if L > nr_full - j % nr_full:
            L = nr_full - j % nr_full
        run_j[n_runs] = j
        run_len[n_runs] = L
        n_runs += 1
        j += L
    for q in range(q0, q0 + kc):
        c = q // khw
        r = q - c * khw
        ky = r // s.kw
        kx = r - ky * s.kw
        ry = ky * s.dh
        rx = kx * s.dw
        src = (phg + ((c * s.sh + ry % s.sh) * s.sw + rx % s.sw) * Hq * Wq
               + (ry // s.sh) * Wq + rx // s.sw)
        row = dst + (q - q0) * nr_full
        for t in range(n_runs):
            out = row + (run_j[t] // nr_full) * panel_size + run_j[t] % nr_full
            L = run_len[t]
            for i in range(L):
                out[i] = src[run_oy[t] * Wq + run_ox[t] + i]
        tail = nr % nr_full
        if tail:
            memset(row + (nr // nr_full) * panel_size + tail, 0, (nr_full - tail) * sizeof(float))


cdef void conv_task(const Step* s, const float* x, const float* phases, float* y,
                    float* pack, cnnrt_gemm_ukernel ukernel, Py_ssize_t task, Py_ssize_t n_cb,
                    Py_ssize_t n_kchunks, Py_ssize_t panels_per_chunk,
                    Py_ssize_t macro) noexcept nogil:
    """One block of up to ``macro`` (MACRO, or NR) output positions for one
    range of weight panels."""
    cdef Py_ssize_t Cg = s.C // s.groups
    cdef Py_ssize_t Kg = s.K // s.groups
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t Q = Cg * s.kh * s.kw
    cdef Py_ssize_t n_panels = (Kg + CNNRT_MR - 1) // CNNRT_MR
    cdef Py_ssize_t kchunk = task % n_kchunks
    cdef Py_ssize_t rest = task // n_kchunks
    cdef Py_ssize_t cb = rest % n_cb
    cdef Py_ssize_t ng = rest // n_cb
    cdef Py_ssize_t g = ng % s.groups
    cdef Py_ssize_t n = ng // s.groups
    cdef Py_ssize_t p0 = cb * macro
    cdef Py_ssize_t width = P - p0
    cdef Py_ssize_t panel0 = kchunk * panels_per_chunk
    cdef Py_ssize_t panel1 = panel0 + panels_per_chunk
    cdef Py_ssize_t q0, kc, panel, m0, mr, sub, n_sub, nr
    cdef const float* xg = x + (n * s.C + g * Cg) * s.H * s.W
    cdef float* yg = y + (n * s.K + g * Kg) * P
    cdef const float* wg = s.w + g * n_panels * Q * CNNRT_MR
    cdef const float* bg = s.b + g * Kg if s.b != NULL else NULL
    if width > macro:
        width = macro
    n_sub = (width + CNNRT_NR - 1) // CNNRT_NR
    if panel1 > n_panels:
        panel1 = n_panels
    # the output lines this task will store, fetched while it packs and
    # computes (outputs larger than L2 otherwise stall the tile stores)
    m0 = panel0 * CNNRT_MR
    mr = (panel1 * CNNRT_MR if panel1 * CNNRT_MR < Kg else Kg) - m0
    cnnrt_prefetch_rows(yg + m0 * P, P, mr, p0, p0 + width)
    q0 = 0
    while q0 < Q:
        kc = span(Q - q0, KC)
        if phases != NULL:
            pack_b_phases(s, phases + (n * s.C + g * Cg) * s.sh * s.sw * s.th * s.tw,
                          pack, q0, kc, p0, width, CNNRT_NR)
        else:
            pack_b_conv(s, xg, pack, q0, kc, p0, width, CNNRT_NR)
        for sub in range(n_sub):
            nr = span(width - sub * CNNRT_NR, CNNRT_NR)
            for panel in range(panel0, panel1):
                m0 = panel * CNNRT_MR
                mr = span(Kg - m0, CNNRT_MR)
                ukernel(kc, wg + (panel * Q + q0) * CNNRT_MR, pack + sub * kc * CNNRT_NR,
                        yg + m0 * P + p0 + sub * CNNRT_NR, P, mr, nr,
                        bg + m0 if bg != NULL else NULL, q0 == 0, q0 + kc >= Q, s.act)
        q0 += kc


cdef void conv_pack_t(const Step* s, const float* x, float* apack, Py_ssize_t item,
                      Py_ssize_t n_pp) noexcept nogil:
    """Pack 8 output positions' taps (all Q of them) as one A panel [Q][8]."""
    cdef Py_ssize_t Cg = s.C // s.groups
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t Q = Cg * s.kh * s.kw
    cdef Py_ssize_t pp = item % n_pp
    cdef Py_ssize_t ng = item // n_pp
    cdef Py_ssize_t g = ng % s.groups
    cdef Py_ssize_t n = ng // s.groups
    cdef Py_ssize_t p0 = pp * CNNRT_MR
    cdef Py_ssize_t mr = P - p0
    if mr > CNNRT_MR:
        mr = CNNRT_MR
    pack_b_conv(s, x + (n * s.C + g * Cg) * s.H * s.W, apack + item * Q * CNNRT_MR,
                0, Q, p0, mr, CNNRT_MR)


DEF PP_BLOCK = 16  # position panels per transposed task (16 KB of tiles)


cdef void conv_task_t(const Step* s, const float* apack, float* y, float* tiles,
                      cnnrt_gemm_ukernel ukernel, cnnrt_store_t_fn store_t,
                      Py_ssize_t task, Py_ssize_t n_pp, Py_ssize_t n_ppb,
                      Py_ssize_t n_kb) noexcept nogil:
    """Transposed orientation, for few output positions: Y^T[P, K] = X_col^T W^T.

    Vectors run along output channels: the A panels hold 8 output positions
    (packed for the whole layer by conv_pack_t), the weights were packed at
    load as B panels of NR channels.  One task is one B panel against up to
    PP_BLOCK position panels: for each block of KC taps the B block stays in
    L1 while the A blocks stream past it.  Finished tiles are stored
    transposed with bias and activation.
    """
    cdef Py_ssize_t Cg = s.C // s.groups
    cdef Py_ssize_t Kg = s.K // s.groups
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t Q = Cg * s.kh * s.kw
    # weight panels vary fastest, so a thread's tasks share position panels
    cdef Py_ssize_t kb = task % n_kb
    cdef Py_ssize_t ppb = (task // n_kb) % n_ppb
    cdef Py_ssize_t ng = task // (n_kb * n_ppb)
    cdef Py_ssize_t g = ng % s.groups
    cdef Py_ssize_t n = ng // s.groups
    cdef Py_ssize_t pp0 = ppb * PP_BLOCK
    cdef Py_ssize_t pp1 = pp0 + PP_BLOCK
    cdef Py_ssize_t nr = Kg - kb * CNNRT_NR
    cdef const float* a = apack + ng * n_pp * Q * CNNRT_MR
    cdef const float* wb = s.w + (g * n_kb + kb) * Q * CNNRT_NR
    cdef Py_ssize_t q0 = 0, kc, pp, p0, mr
    cdef Py_ssize_t k0 = g * Kg + kb * CNNRT_NR
    if pp1 > n_pp:
        pp1 = n_pp
    if nr > CNNRT_NR:
        nr = CNNRT_NR
    while q0 < Q:
        kc = span(Q - q0, KC)
        for pp in range(pp0, pp1):
            ukernel(kc, a + (pp * Q + q0) * CNNRT_MR, wb + q0 * CNNRT_NR,
                    tiles + (pp - pp0) * CNNRT_MR * CNNRT_NR, CNNRT_NR, CNNRT_MR, CNNRT_NR,
                    NULL, q0 == 0, 0, ACT_NONE)
        q0 += kc
    for pp in range(pp0, pp1):
        p0 = pp * CNNRT_MR
        mr = span(P - p0, CNNRT_MR)
        store_t(tiles + (pp - pp0) * CNNRT_MR * CNNRT_NR, mr, nr,
                s.b + k0 if s.b != NULL else NULL, s.act, y + (n * s.K + k0) * P + p0, P,
                CNNRT_NR)


cdef void shared_pack_task(const Step* s, const float* x, const float* phases, float* bp,
                           Py_ssize_t task, Py_ssize_t n_sub, Py_ssize_t n_q) noexcept nogil:
    """Pack one block of KC taps of one NR-column panel of one image and group."""
    cdef Py_ssize_t Cg = s.C // s.groups
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t Q = Cg * s.kh * s.kw
    cdef Py_ssize_t sub = task % n_sub
    cdef Py_ssize_t qb = (task // n_sub) % n_q
    cdef Py_ssize_t ng = task // (n_sub * n_q)
    cdef Py_ssize_t g = ng % s.groups
    cdef Py_ssize_t n = ng // s.groups
    cdef Py_ssize_t q0 = qb * KC
    cdef Py_ssize_t kc = Q - q0
    cdef Py_ssize_t nr = P - sub * CNNRT_NR
    if kc > KC:
        kc = KC
    if nr > CNNRT_NR:
        nr = CNNRT_NR
    # panel layout: [ng][q block][sub][kc][NR]
    bp = bp + ng * Q * n_sub * CNNRT_NR + q0 * n_sub * CNNRT_NR + sub * kc * CNNRT_NR
    if phases != NULL:
        pack_b_phases(s, phases + (n * s.C + g * Cg) * s.sh * s.sw * s.th * s.tw,
                      bp, q0, kc, sub * CNNRT_NR, nr, CNNRT_NR)
    else:
        pack_b_conv(s, x + (n * s.C + g * Cg) * s.H * s.W, bp, q0, kc, sub * CNNRT_NR,
                    nr, CNNRT_NR)


cdef void shared_gemm_task(const Step* s, const float* bp, float* y, cnnrt_gemm_ukernel ukernel,
                           Py_ssize_t task, Py_ssize_t n_sub, Py_ssize_t task_span,
                           Py_ssize_t per_chunk) noexcept nogil:
    """One NR-column panel times one range of weight panels, from shared packed panels."""
    cdef Py_ssize_t Cg = s.C // s.groups
    cdef Py_ssize_t Kg = s.K // s.groups
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t Q = Cg * s.kh * s.kw
    cdef Py_ssize_t n_panels = (Kg + CNNRT_MR - 1) // CNNRT_MR
    # weight ranges vary slowest: a thread's contiguous tasks share its weights
    cdef Py_ssize_t per_k = task_span
    cdef Py_ssize_t kchunk = task // per_k
    cdef Py_ssize_t sub = (task % per_k) % n_sub
    cdef Py_ssize_t ng = (task % per_k) // n_sub
    cdef Py_ssize_t g = ng % s.groups
    cdef Py_ssize_t n = ng // s.groups
    cdef Py_ssize_t panel0 = kchunk * per_chunk
    cdef Py_ssize_t panel1 = panel0 + per_chunk
    cdef Py_ssize_t nr = P - sub * CNNRT_NR
    cdef Py_ssize_t q0, kc, panel, m0, mr
    cdef const float* bg = bp + ng * Q * n_sub * CNNRT_NR
    cdef float* yg = y + (n * s.K + g * Kg) * P + sub * CNNRT_NR
    cdef const float* wg = s.w + g * n_panels * Q * CNNRT_MR
    cdef const float* bias = s.b + g * Kg if s.b != NULL else NULL
    if panel1 > n_panels:
        panel1 = n_panels
    if nr > CNNRT_NR:
        nr = CNNRT_NR
    q0 = 0
    while q0 < Q:
        kc = span(Q - q0, KC)
        for panel in range(panel0, panel1):
            m0 = panel * CNNRT_MR
            mr = span(Kg - m0, CNNRT_MR)
            ukernel(kc, wg + (panel * Q + q0) * CNNRT_MR,
                    bg + q0 * n_sub * CNNRT_NR + sub * kc * CNNRT_NR,
                    yg + m0 * P, P, mr, nr, bias + m0 if bias != NULL else NULL,
                    q0 == 0, q0 + kc >= Q, s.act)
        q0 += kc


cdef void conv2d_shared(const Step* s, const float* x, const float* phases, float* bp,
                        float* y, Py_ssize_t N, int n_threads, cnnrt_gemm_ukernel ukernel) noexcept nogil:
    """GEMM convolution with few output positions: the threads first pack every
    column panel once into shared space, then split the products between them
    by column panel and by range of weight panels."""
    cdef Py_ssize_t Kg = s.K // s.groups
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t Q = (s.C // s.groups) * s.kh * s.kw
    cdef Py_ssize_t n_panels = (Kg + CNNRT_MR - 1) // CNNRT_MR
    cdef Py_ssize_t n_sub = (P + CNNRT_NR - 1) // CNNRT_NR
    cdef Py_ssize_t n_q = (Q + KC - 1) // KC
    cdef Py_ssize_t outer = N * s.groups * n_sub
    cdef Py_ssize_t n_kchunks = 1, per_chunk, t
    for t in prange(outer * n_q, schedule="static", num_threads=n_threads):
        shared_pack_task(s, x, phases, bp, t, n_sub, n_q)
    # one range of weight panels per thread (each thread then reads only its
    # share of the weights), every column panel in each; neighbouring column
    # panels, which share output cache lines, stay on one core
    n_kchunks = n_threads if n_threads < n_panels else n_panels
    per_chunk = (n_panels + n_kchunks - 1) // n_kchunks
    n_kchunks = (n_panels + per_chunk - 1) // per_chunk
    for t in prange(outer * n_kchunks, schedule="static", num_threads=n_threads):
        shared_gemm_task(s, bp, y, ukernel, t, n_sub, outer, per_chunk)


# ------------------------------------------------------- input read in place
#
# A convolution whose input is already laid out so that every tap of a run
# of output positions is one contiguous stretch needs no packing: the
# indirect micro-kernel reads B row q at grid + p0 + toff[q].  The grid is
# the input itself (1x1, stride 1, no padding), a zero-padded copy (stride 1)
# or the stride phases.  Output (oy, ox) is grid position oy * gw + ox; the
# columns ox >= W2 of each grid row are computed and dropped.

DEF GRID_ROWS = 8  # padded input rows per grid-building task


cdef void grid_rows(const Step* s, const float* x, float* grid, Py_ssize_t item,
                    Py_ssize_t n_items) noexcept nogil:
    """Write GRID_ROWS rows of the zero-padded input plane into the grid.

    ``item`` counts (image, channel, block of padded rows).  Padded row py
    (the image's row py - pt, or zeros) goes to grid row py (stride 1) or,
    split by column phase, to row py // sh of phases (py % sh, b); no two
    items write the same row.  The last item of an image also zeroes the
    slack after its last plane.
    """
    cdef Py_ssize_t Hp = s.th * s.sh if s.gprep == 2 else s.gplane // s.gw
    cdef Py_ssize_t plane = item // n_items
    cdef Py_ssize_t n = plane // s.C
    cdef Py_ssize_t c = plane % s.C
    cdef Py_ssize_t py0 = (item % n_items) * GRID_ROWS
    cdef Py_ssize_t py1 = py0 + GRID_ROWS
    cdef const float* src = x + plane * s.H * s.W
    cdef float* dst = grid + n * s.gimage + c * s.gplane
    cdef Py_ssize_t py, y, b, col, lo, hi
    cdef float* row
    cdef const float* sb
    if py1 > Hp:
        py1 = Hp
    if c == s.C - 1 and py1 == Hp:
        memset(grid + n * s.gimage + s.C * s.gplane, 0,
               (s.gimage - s.C * s.gplane) * sizeof(float))
    for py in range(py0, py1):
        y = py - s.pt
        if s.gprep == 1:
            row = dst + py * s.gw
            if y < 0 or y >= s.H:
                memset(row, 0, s.gw * sizeof(float))
            else:
                memset(row, 0, s.pl * sizeof(float))
                memcpy(row + s.pl, src + y * s.W, s.W * sizeof(float))
                memset(row + s.pl + s.W, 0, (s.gw - s.pl - s.W) * sizeof(float))
            continue
        for b in range(s.sw):
            row = dst + (((py % s.sh) * s.sw + b) * s.th + py // s.sh) * s.tw
            if y < 0 or y >= s.H:
                memset(row, 0, s.tw * sizeof(float))
                continue
            # phase columns col with 0 <= col * sw + b - pl < W
            lo = (s.pl - b + s.sw - 1) // s.sw if s.pl > b else 0
            hi = (s.W - 1 + s.pl - b) // s.sw + 1 if s.W - 1 + s.pl - b >= 0 else 0
            if hi > s.tw:
                hi = s.tw
            if hi < lo:
                hi = lo
            memset(row, 0, lo * sizeof(float))
            sb = src + y * s.W + b - s.pl
            for col in range(lo, hi):
                row[col] = sb[col * s.sw]
            memset(row + hi, 0, (s.tw - hi) * sizeof(float))


cdef void conv_direct_task(const Step* s, const float* grid, float* y, float* tiles,
                           cnnrt_gemm_ukernel_ind ukernel, Py_ssize_t task, Py_ssize_t n_tb,
                           Py_ssize_t tb, Py_ssize_t n_img, Py_ssize_t per_chunk) noexcept nogil:
    """Up to ``tb`` tiles of NR grid positions for one range of weight panels.

    For each block of KC taps, each weight panel's block is read once and
    applied to every tile of the task (weights larger than the caches are
    then streamed from memory once per task, not once per tile).
    """
    cdef Py_ssize_t Cg = s.C // s.groups
    cdef Py_ssize_t Kg = s.K // s.groups
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t Pg = s.H2 * s.gw
    cdef Py_ssize_t Q = Cg * s.kh * s.kw
    cdef Py_ssize_t n_panels = (Kg + CNNRT_MR - 1) // CNNRT_MR
    cdef Py_ssize_t n_tiles = (Pg + CNNRT_NR - 1) // CNNRT_NR
    # weight ranges vary slowest: a thread's contiguous tasks share its weights
    cdef Py_ssize_t kchunk = task // (n_tb * s.groups * n_img)
    cdef Py_ssize_t tblock = task % n_tb
    cdef Py_ssize_t ng = (task // n_tb) % (s.groups * n_img)
    cdef Py_ssize_t g = ng % s.groups
    cdef Py_ssize_t n = ng // s.groups
    cdef Py_ssize_t panel0 = kchunk * per_chunk
    cdef Py_ssize_t panel1 = panel0 + per_chunk
    cdef Py_ssize_t tile0 = tblock * tb
    cdef Py_ssize_t tile1 = tile0 + tb
    cdef Py_ssize_t q0, kc, panel, m0, mr, r, p, oy, ox, L, t, tile, p0, nr, n_seg
    cdef Py_ssize_t seg_src[32]
    cdef Py_ssize_t seg_dst[32]
    cdef Py_ssize_t seg_len[32]
    cdef const float* base
    cdef const float* wg = s.w + g * n_panels * Q * CNNRT_MR
    cdef const float* bias = s.b + g * Kg if s.b != NULL else NULL
    cdef const float* tl
    cdef float* dst
    cdef Py_ssize_t tile_floats = (panel1 - panel0) * CNNRT_MR * CNNRT_NR
    if panel1 > n_panels:
        panel1 = n_panels
    if tile1 > n_tiles:
        tile1 = n_tiles
    if s.gprep == 0:
        base = grid + (n * s.C + g * Cg) * s.H * s.W
    else:
        base = grid + n * s.gimage + g * Cg * s.gplane
    q0 = 0
    while q0 < Q:
        kc = span(Q - q0, KC)
        for panel in range(panel0, panel1):
            m0 = panel * CNNRT_MR
            mr = span(Kg - m0, CNNRT_MR)
            for tile in range(tile0, tile1):
                p0 = tile * CNNRT_NR
                nr = span(Pg - p0, CNNRT_NR)
                ukernel(kc, wg + (panel * Q + q0) * CNNRT_MR, base + p0, s.toff + q0,
                        tiles + (tile - tile0) * tile_floats
                        + (panel - panel0) * CNNRT_MR * CNNRT_NR, mr, nr,
                        bias + m0 if bias != NULL else NULL, q0 == 0, q0 + kc >= Q, s.act)
        q0 += kc
    for tile in range(tile0, tile1):
        p0 = tile * CNNRT_NR
        nr = span(Pg - p0, CNNRT_NR)
        # the tile's grid positions that are outputs: runs along output rows
        n_seg = 0
        p = p0
        while p < p0 + nr:
            oy = p // s.gw
            ox = p - oy * s.gw
            L = s.gw - ox
            if L > p0 + nr - p:
                L = p0 + nr - p
            if ox < s.W2:
                seg_src[n_seg] = p - p0
                seg_dst[n_seg] = oy * s.W2 + ox
                seg_len[n_seg] = L if ox + L <= s.W2 else s.W2 - ox
                n_seg += 1
            p += L
        for panel in range(panel0, panel1):
            m0 = panel * CNNRT_MR
            mr = span(Kg - m0, CNNRT_MR)
            cnnrt_scatter_tile(tiles + (tile - tile0) * tile_floats
                               + (panel - panel0) * CNNRT_MR * CNNRT_NR, mr,
                               y + (n * s.K + g * Kg + m0) * P, P, seg_src, seg_dst, seg_len,
                               n_seg)


cdef void conv2d_direct(const Step* s, const float* x, float* y, float* work, float* scratch,
                        Py_ssize_t N, int n_threads) noexcept nogil:
    """GEMM convolution that reads its input in place (see conv_direct_task)."""
    cdef cnnrt_gemm_ukernel_ind ukernel = _gemm.ukernel_ind
    cdef Py_ssize_t Kg = s.K // s.groups
    cdef Py_ssize_t n_panels = (Kg + CNNRT_MR - 1) // CNNRT_MR
    cdef Py_ssize_t n_tiles = (s.H2 * s.gw + CNNRT_NR - 1) // CNNRT_NR
    cdef Py_ssize_t outer
    cdef Py_ssize_t n_kchunks = 1, per_chunk, t, tb = 1, n_tb
    cdef const float* grid = x
    cdef Py_ssize_t n_items
    if s.gprep != 0:
        n_items = ((s.th * s.sh if s.gprep == 2 else s.gplane // s.gw) + GRID_ROWS - 1) // GRID_ROWS
        for t in prange(N * s.C * n_items, schedule="static", num_threads=n_threads):
            grid_rows(s, x, work, t, n_items)
        grid = work
    # at least four tasks per thread when there are few tiles; each thread takes
    # a contiguous range of tasks, so neighbouring tiles (which share cache
    # lines of the output) stay on one core
    # weights beyond the L2 cache: several tiles per task share each read
    if s.outer > 1:
        tb = s.outer if s.outer < n_tiles else n_tiles
    n_tb = (n_tiles + tb - 1) // tb
    outer = N * s.groups * n_tb
    # few tiles: one range of weight panels per thread, all tiles in each
    if n_threads > 1 and outer < 4 * n_threads:
        n_kchunks = n_threads if n_threads < n_panels else n_panels
    per_chunk = (n_panels + n_kchunks - 1) // n_kchunks
    n_kchunks = (n_panels + per_chunk - 1) // per_chunk
    for t in prange(outer * n_kchunks, schedule="static", num_threads=n_threads):
        conv_direct_task(s, grid, y, scratch + threadid() * s.tstride, ukernel, t, n_tb, tb,
                         N, per_chunk)


# ------------------------------------------- vectors along output channels
#
# Convolutions with few input channels and a stride (a network's first
# layer), strided 1x1 convolutions and layers on small maps run with the
# output channels in the vector lanes: a tile is 8 neighbouring positions of
# one output row by s.nr output channels (32, or 48 where the channels come
# in multiples of 48), and the micro-kernel broadcasts each position's tap
# straight from the input (or its zero-padded copy), so nothing is packed and
# the stride costs nothing.  The weights were packed at load as B panels of
# s.nr channels; tiles are stored transposed, with bias and activation, into
# the NCHW output, or channel-blocked (flag 5).

DEF ROWS_BLOCK = 16  # runs of 8 positions per task (16 or 24 KB of tiles)
DEF ROWS_KC = 64  # taps per pass: 8 or 12 KB of weights, which stay in L1 beside the tiles
DEF ROWS_DYNAMIC_WORK = 1 << 21  # flops per task from which tasks go to threads as they free up


cdef inline Py_ssize_t run_at(const Step* s, Py_ssize_t r, Py_ssize_t per_row, Py_ssize_t* n,
                              Py_ssize_t* oy, Py_ssize_t* ox0) noexcept nogil:
    """Image, output row and first column of run r; returns its length (up to 8)."""
    cdef Py_ssize_t rest
    n[0] = r // (s.H2 * per_row)
    rest = r - n[0] * s.H2 * per_row
    oy[0] = rest // per_row
    ox0[0] = (rest - oy[0] * per_row) * CNNRT_MR
    return span(s.W2 - ox0[0], CNNRT_MR)


cdef inline Py_ssize_t rows_nr(const Step* s) noexcept nogil:
    """Output channels per weight panel of a convolution with vectors along them."""
    return 48 if s.nr == 48 else CNNRT_NR


cdef void conv_rows_task(const Step* s, const float* grid, float* y, float* tiles,
                         cnnrt_gemm_ukernel_rows ukernel, cnnrt_store_t_fn store_t,
                         cnnrt_rows_c16_fn rows_c16,
                         Py_ssize_t task, Py_ssize_t n_kb, Py_ssize_t n_runs,
                         Py_ssize_t n_blocks, Py_ssize_t N) noexcept nogil:
    """Block task // n_kb of the runs of 8 output positions (n_blocks blocks
    of equal size to within one run, at most ROWS_BLOCK) against weight
    panel task % n_kb."""
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t Q = s.C * s.kh * s.kw
    cdef Py_ssize_t NR = rows_nr(s)
    cdef Py_ssize_t per_row = (s.W2 + CNNRT_MR - 1) // CNNRT_MR
    # weight panels vary fastest, so a thread's tasks share input runs
    cdef Py_ssize_t kb = task % n_kb
    cdef Py_ssize_t r0 = (task // n_kb) * n_runs // n_blocks
    cdef Py_ssize_t r1 = (task // n_kb + 1) * n_runs // n_blocks
    cdef Py_ssize_t nr = s.K - kb * NR
    cdef Py_ssize_t k0 = kb * NR
    cdef const float* wb = s.w + kb * Q * NR
    cdef Py_ssize_t image = s.gimage if s.gprep else s.C * s.H * s.W
    cdef Py_ssize_t q0 = 0, kc, r, n, rest, oy, ox0, mr, j, ob, nb
    cdef Py_ssize_t per_image = s.H2 * per_row
    cdef Py_ssize_t r_end, last
    cdef Py_ssize_t n_ob = (s.K + 15) // 16
    cdef float* out
    cdef const float* tile
    cdef cnnrt_store_c16_fn store_c16 = _c16.store
    cdef const float* run_base[ROWS_BLOCK]
    cdef Py_ssize_t run_mr[ROWS_BLOCK]
    if nr > NR:
        nr = NR
    if s.flag == 5 and rows_c16 != NULL:
        # channel-blocked output straight from the registers: every tap in
        # one pass, bias and activation applied on the way out
        nb = n_ob - k0 // 16
        if nb > NR // 16:
            nb = NR // 16
        for r in range(r0, r1):
            mr = run_at(s, r, per_row, &n, &oy, &ox0)
            out = y + (n * n_ob + k0 // 16) * P * 16 + (oy * s.W2 + ox0) * 16
            rows_c16(Q, grid + n * image + oy * s.sh * s.gw + ox0 * s.sw, s.toff, s.sw, mr, wb,
                     s.b2 + k0, s.act, out, P * 16, nb)
        return
    # the output lines this task will store, fetched while it computes
    r = r0
    while r < r1 and s.flag == 3:
        n = r // per_image
        r_end = (n + 1) * per_image if (n + 1) * per_image < r1 else r1
        rest = r - n * per_image
        last = r_end - 1 - n * per_image
        cnnrt_prefetch_rows(y + (n * s.K + k0) * P, P, nr,
                            (rest // per_row) * s.W2 + (rest % per_row) * CNNRT_MR,
                            (last // per_row) * s.W2 + (last % per_row) * CNNRT_MR
                            + span(s.W2 - (last % per_row) * CNNRT_MR, CNNRT_MR))
        r = r_end
    # each run's first input element and length, found once for all passes
    for r in range(r0, r1):
        run_mr[r - r0] = run_at(s, r, per_row, &n, &oy, &ox0)
        run_base[r - r0] = grid + n * image + oy * s.sh * s.gw + ox0 * s.sw
    while q0 < Q:
        kc = span(Q - q0, ROWS_KC)
        for r in range(r1 - r0):
            ukernel(kc, run_base[r], s.toff + q0, s.sw, run_mr[r], wb + q0 * NR,
                    tiles + r * CNNRT_MR * NR, q0 == 0)
        q0 += kc
    if s.flag == 5:  # channel-blocked output (see f32_c16.h), 32 channels per store
        for r in range(r0, r1):
            mr = run_at(s, r, per_row, &n, &oy, &ox0)
            tile = tiles + (r - r0) * CNNRT_MR * NR
            for j in range(0, NR, 32):
                ob = (k0 + j) // 16
                if ob >= n_ob:
                    break
                out = y + (n * n_ob + ob) * P * 16 + (oy * s.W2 + ox0) * 16
                store_c16(tile + j, NR, mr, s.b2 + k0 + j, s.act, out,
                          out + P * 16 if ob + 1 < n_ob and j + 16 < NR else NULL)
        return
    for r in range(r0, r1):
        mr = run_at(s, r, per_row, &n, &oy, &ox0)
        store_t(tiles + (r - r0) * CNNRT_MR * NR, mr, nr,
                s.b + k0 if s.b != NULL else NULL, s.act,
                y + (n * s.K + k0) * P + oy * s.W2 + ox0, P, NR)


cdef void conv2d_rows(const Step* s, const float* x, float* y, float* work, float* scratch,
                      Py_ssize_t N, int n_threads) noexcept nogil:
    """Convolution (one group) with vectors along output channels (see above)."""
    cdef cnnrt_gemm_ukernel_rows ukernel = _gemm.ukernel_rows48 if s.nr == 48 else _gemm.ukernel_rows
    cdef cnnrt_store_t_fn store_t = _store_t
    cdef cnnrt_rows_c16_fn rows_c16 = _gemm.rows48_c16 if s.nr == 48 else _gemm.rows_c16
    cdef Py_ssize_t n_kb = (s.K + rows_nr(s) - 1) // rows_nr(s)
    cdef Py_ssize_t n_runs = N * s.H2 * ((s.W2 + CNNRT_MR - 1) // CNNRT_MR)
    cdef Py_ssize_t n_blocks = (n_runs + ROWS_BLOCK - 1) // ROWS_BLOCK
    cdef const float* grid = x
    cdef Py_ssize_t n_items, t
    # as many tasks for every thread: a few more, smaller blocks where that
    # evens them out (the contiguous ranges of the static schedule stay equal)
    cdef Py_ssize_t more = n_blocks
    while (more * n_kb) % n_threads != 0 and more < n_runs and more < n_blocks + n_threads:
        more += 1
    if (more * n_kb) % n_threads == 0:
        n_blocks = more
    if s.gprep != 0:
        n_items = (s.gplane // s.gw + GRID_ROWS - 1) // GRID_ROWS
        for t in prange(N * s.C * n_items, schedule="static", num_threads=n_threads):
            grid_rows(s, x, work, t, n_items)
        grid = work
    # tasks of many multiply-adds go to whichever thread is free: a thread
    # that runs slower (the machine's other work, its core's clock) would
    # otherwise hold the others at the barrier for a whole share of tasks;
    # smaller ones keep the static ranges, whose neighbouring tasks share
    # cache lines with the layer that reads their output
    if 2 * s.C * s.kh * s.kw * CNNRT_MR * rows_nr(s) * (n_runs // n_blocks) >= ROWS_DYNAMIC_WORK:
        for t in prange(n_blocks * n_kb, schedule="dynamic", chunksize=1, num_threads=n_threads):
            conv_rows_task(s, grid, y, scratch + threadid() * s.tstride, ukernel, store_t,
                           rows_c16, t, n_kb, n_runs, n_blocks, N)
        return
    for t in prange(n_blocks * n_kb, schedule="static", num_threads=n_threads):
        conv_rows_task(s, grid, y, scratch + threadid() * s.tstride, ukernel, store_t,
                       rows_c16, t, n_kb, n_runs, n_blocks, N)


cdef void conv2d_f32(const Step* s, const float* x, float* y, float* work, float* scratch,
                     Py_ssize_t N, int n_threads) noexcept nogil:
    """Grouped convolution; ``scratch`` is per-thread space, ``work`` per batch."""
    cdef Py_ssize_t Kg = s.K // s.groups
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t n_panels = (Kg + CNNRT_MR - 1) // CNNRT_MR
    cdef cnnrt_gemm_ukernel ukernel = _gemm.ukernel  # one variant for the whole call
    cdef cnnrt_store_t_fn store_t = _store_t
    cdef Py_ssize_t n_cb = (P + MACRO - 1) // MACRO
    cdef Py_ssize_t outer = N * s.groups * n_cb
    cdef Py_ssize_t n_kchunks = 1
    cdef Py_ssize_t per_chunk, n_tasks, t, n_ppb, n_sub_all
    if s.flag == 2:  # input read in place
        conv2d_direct(s, x, y, work, scratch, N, n_threads)
        return
    if s.flag == 3 or s.flag == 5:  # vectors along output channels, input read in place
        conv2d_rows(s, x, y, work, scratch, N, n_threads)
        return
    if s.flag == 4:  # pointwise, channel-blocked input and output
        conv2d_pw_c16(s, x, y, scratch, N, n_threads)
        return
    if s.flag:  # transposed orientation
        n_cb = (P + CNNRT_MR - 1) // CNNRT_MR
        n_panels = (Kg + CNNRT_NR - 1) // CNNRT_NR
        for t in prange(N * s.groups * n_cb, schedule="static", num_threads=n_threads):
            conv_pack_t(s, x, work, t, n_cb)
        n_ppb = (n_cb + PP_BLOCK - 1) // PP_BLOCK
        n_tasks = N * s.groups * n_ppb * n_panels
        for t in prange(n_tasks, schedule="static", num_threads=n_threads):
            conv_task_t(s, work, y, scratch + threadid() * s.tstride, ukernel, store_t,
                        t, n_cb, n_ppb, n_panels)
        return
    cdef const float* phases = NULL
    if s.th > 0:  # strided: split the input into its stride phases first
        for t in prange(N * s.C, schedule="static", num_threads=n_threads):
            phase_plane(s, x, work, t)
        phases = work
    # Few column blocks, but many NR-wide column panels and few weights per
    # group: each thread packs and multiplies its own panels with all the
    # weights (splitting the weights instead would have every thread read
    # every packed panel, half of them from the other core's cache).
    n_sub_all = N * s.groups * ((P + CNNRT_NR - 1) // CNNRT_NR)
    if (n_threads > 1 and outer < 4 * n_threads and n_sub_all >= 3 * n_threads
            and Kg <= n_sub_all * CNNRT_NR // 2):
        for t in prange(n_sub_all, schedule="static", num_threads=n_threads):
            conv_task(s, x, phases, y, scratch + threadid() * s.tstride, ukernel,
                      t, n_sub_all // (N * s.groups), 1, n_panels, CNNRT_NR)
        return
    if n_threads > 1 and outer < 4 * n_threads and s.spack > 0:
        conv2d_shared(s, x, phases, work + (N * s.C * s.sh * s.sw * s.th * s.tw
                                               if phases != NULL else 0),
                      y, N, n_threads, ukernel)
        return
    # Too few column blocks to share evenly between the threads: split the
    # output channels too, into the fewest chunks that make the task count a
    # multiple of the thread count (each chunk packs its columns again).
    if n_threads > 1 and outer < 4 * n_threads and outer % n_threads != 0:
        n_kchunks = 1
        while (outer * n_kchunks) % n_threads != 0 and n_kchunks < n_threads:
            n_kchunks += 1
        if n_kchunks > n_panels:
            n_kchunks = n_panels
    per_chunk = (n_panels + n_kchunks - 1) // n_kchunks
    n_kchunks = (n_panels + per_chunk - 1) // per_chunk
    n_tasks = outer * n_kchunks
    for t in prange(n_tasks, schedule="static", num_threads=n_threads):
        conv_task(s, x, phases, y, scratch + threadid() * s.tstride, ukernel,
                  t, n_cb, n_kchunks, per_chunk, MACRO)


# ==========================================================================
# Channel-blocked (c16) chains of depthwise and pointwise layers (ext/f32_c16.h;
# the kernel table and its constants are declared with the GEMM's above)
# ==========================================================================

cdef void reorder_c16(const Step* s, const float* x, float* y, Py_ssize_t N,
                      int n_threads) noexcept nogil:
    """Planes into channel blocks (OP_TO_C16) or back (OP_FROM_C16)."""
    cdef cnnrt_to_c16_fn to_fn = _c16.to_c16
    cdef cnnrt_from_c16_fn from_fn = _c16.from_c16
    cdef Py_ssize_t HW = s.H * s.W
    cdef Py_ssize_t n_cb = (s.C + 15) // 16
    cdef Py_ssize_t n_pc = (HW + C16_CHUNK - 1) // C16_CHUNK
    cdef Py_ssize_t planes = s.C * HW
    cdef Py_ssize_t blocked = n_cb * 16 * HW
    cdef Py_ssize_t t, n, cb, p0, p1
    for t in prange(N * n_cb * n_pc, schedule="static", num_threads=n_threads):
        n = t // (n_cb * n_pc)
        cb = (t // n_pc) % n_cb
        p0 = (t % n_pc) * C16_CHUNK
        p1 = span(HW - p0, C16_CHUNK) + p0
        if s.op == OP_TO_C16:
            to_fn(x + n * planes, s.C, HW, cb, p0, p1, y + n * blocked)
        else:
            from_fn(x + n * blocked, s.C, HW, cb, p0, p1, y + n * planes)


cdef inline bint c16_few_runs(Py_ssize_t HW, Py_ssize_t N, int n_threads) noexcept nogil:
    """Whether maps of HW positions give too few blocks of runs to split by position."""
    return (N * ((HW + CNNRT_MR - 1) // CNNRT_MR) + ROWS_BLOCK - 1) // ROWS_BLOCK < 4 * n_threads


cdef void depthwise_c16(const Step* s, const float* x, float* y, Py_ssize_t N,
                        int n_threads) noexcept nogil:
    """Depthwise convolution (one input channel per output channel), c16 in
    and out: one task per output row of a channel block."""
    cdef cnnrt_dw_c16_row_fn row_fn = _c16.dw_row
    cdef Py_ssize_t n_cb = (s.C + 15) // 16
    cdef Py_ssize_t in_block = s.H * s.W * 16
    cdef Py_ssize_t out_block = s.H2 * s.W2 * 16
    # as the pointwise layers split (see conv2d_pw_c16): by channel blocks
    # where the maps are small, else by rows of every block
    cdef bint by_block = c16_few_runs(s.H * s.W, N, n_threads)
    cdef Py_ssize_t t, nb, oy, cb, rest
    for t in prange(N * n_cb * s.H2, schedule="static", num_threads=n_threads):
        if by_block:
            nb = t // s.H2  # image * n_cb + channel block
            oy = t - nb * s.H2
        else:
            rest = t % (s.H2 * n_cb)
            oy = rest // n_cb
            nb = t // (s.H2 * n_cb) * n_cb + rest % n_cb
        cb = nb % n_cb
        row_fn(x + nb * in_block, s.H, s.W, s.w2 + cb * s.kh * s.kw * 16, s.b2 + cb * 16,
               s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.pt, s.pl, oy, s.W2, s.act,
               y + nb * out_block + oy * s.W2 * 16)


cdef void maxpool_c16(const Step* s, const float* x, float* y, Py_ssize_t N,
                      int n_threads) noexcept nogil:
    """Max pooling, c16 in and out: output rows of every channel block."""
    cdef cnnrt_maxpool_c16_row_fn row_fn = _c16.maxpool_row
    cdef Py_ssize_t n_cb = (s.C + 15) // 16
    cdef Py_ssize_t in_block = s.H * s.W * 16
    cdef Py_ssize_t out_block = s.H2 * s.W2 * 16
    cdef Py_ssize_t t, nb, oy, rest
    # rows of every block: the convolutions that write a pool's input split by position
    for t in prange(N * n_cb * s.H2, schedule="static", num_threads=n_threads):
        rest = t % (s.H2 * n_cb)
        oy = rest // n_cb
        nb = t // (s.H2 * n_cb) * n_cb + rest % n_cb
        row_fn(x + nb * in_block, s.H, s.W, s.kh, s.kw, s.sh, s.sw, s.pt, s.pl, oy, s.W2,
               y + nb * out_block + oy * s.W2 * 16)


cdef inline Py_ssize_t pw_panel(const Step* s, Py_ssize_t kb, Py_ssize_t* k0,
                                 Py_ssize_t* woff) noexcept nogil:
    """Width (32 or 48), first channel and weight offset of pointwise panel kb.

    With s.nr 48 the panels are a of 48 channels, then b of 32 (see
    cnnrt.model.pw_panels): 3a + 2b blocks of 16 in all."""
    cdef Py_ssize_t k16 = (s.K + 15) // 16
    cdef Py_ssize_t b = 0, a
    if s.nr != 48:
        k0[0] = kb * 32
        woff[0] = kb * s.C * 32
        return 32
    if k16 % 3 == 1:
        b = 2
    elif k16 % 3 == 2:
        b = 1
    a = (k16 - 2 * b) // 3
    if kb < a:
        k0[0] = kb * 48
        woff[0] = kb * s.C * 48
        return 48
    k0[0] = a * 48 + (kb - a) * 32
    woff[0] = a * s.C * 48 + (kb - a) * s.C * 32
    return 32


cdef inline Py_ssize_t pw_n_panels(const Step* s) noexcept nogil:
    cdef Py_ssize_t k16 = (s.K + 15) // 16
    if s.nr != 48:
        return (s.K + 31) // 32
    return (k16 + 2) // 3 if k16 % 3 != 1 else (k16 - 4) // 3 + 2


cdef void pw_c16_task(const Step* s, const float* x, float* y, float* tiles,
                      cnnrt_gemm_ukernel_rows ukernel, cnnrt_gemm_ukernel_rows ukernel48,
                      cnnrt_store_c16_fn store, cnnrt_pw_c16_fn pw, cnnrt_pw48_c16_fn pw48,
                      Py_ssize_t kb, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Runs r0 to r1 of s.run positions (8, or 7 or 6 where those fill the
    map better) against one weight panel of 32 or 48 channels (pw_panel);
    the taps of a position are its channels, 16 floats apart within a block
    (toff), and neighbouring positions 16 floats apart.  Whole runs go
    through the pointwise kernel of the ISA where it has one, PW_KC input
    channels at a time for all the runs; while one pass runs, the next
    pass's weights are fetched into L2, a slice after each run (the first
    run of a pass would otherwise wait on them, from L3 or memory)."""
    cdef Py_ssize_t HW = s.H * s.W
    cdef Py_ssize_t L = s.run
    cdef Py_ssize_t per_image = (HW + L - 1) // L
    cdef Py_ssize_t in_image = (s.C + 15) // 16 * 16 * HW
    cdef Py_ssize_t n_ob = (s.K + 15) // 16
    cdef Py_ssize_t k0, woff
    cdef Py_ssize_t width = pw_panel(s, kb, &k0, &woff)
    cdef Py_ssize_t ob = k0 // 16
    cdef const float* wb = s.w + woff
    cdef const float* bias = s.b2 + k0
    cdef Py_ssize_t q0, kc, r, n, p0, mr
    cdef bint whole = pw != NULL and (width == 32 or pw48 != NULL)
    cdef const float* a
    cdef float* out
    cdef float* out1
    cdef float* out2
    cdef const float* nw = NULL
    cdef Py_ssize_t n_next, per, k0n, woffn, f0, f1
    if whole:  # 128 channels at a time, partial sums kept in the output
        q0 = 0
        while q0 < s.C:
            kc = span(s.C - q0, PW_KC)
            # the next pass's weights (this panel's next channels, else the
            # next panel's first) go to L2 a slice per run while this one runs
            n_next = 0
            if q0 + kc < s.C:
                nw = wb + (q0 + kc) * width
                n_next = span(s.C - q0 - kc, PW_KC) * width
            elif kb + 1 < pw_n_panels(s):
                n_next = span(s.C, PW_KC) * pw_panel(s, kb + 1, &k0n, &woffn)
                nw = s.w + woffn
            per = (n_next + r1 - r0 - 1) // (r1 - r0)
            for r in range(r0, r1):
                if n_next > 0:
                    f0 = (r - r0) * per
                    f1 = f0 + per if f0 + per < n_next else n_next
                    if f0 < f1:
                        cnnrt_prefetch_rows(nw, 0, 1, f0, f1)
                n = r // per_image
                p0 = (r - n * per_image) * L
                if HW - p0 < L:
                    continue
                out = y + (n * n_ob + ob) * HW * 16 + p0 * 16
                out1 = out + HW * 16 if ob + 1 < n_ob else NULL
                if width == 48:
                    out2 = out + 2 * HW * 16 if ob + 2 < n_ob else NULL
                    pw48(L, kc, x + n * in_image + q0 * HW + p0 * 16, HW * 16, wb + q0 * 48,
                         bias, s.act, out, out1, out2, q0 == 0, q0 + kc >= s.C)
                else:
                    pw(L, kc, x + n * in_image + q0 * HW + p0 * 16, HW * 16, wb + q0 * 32,
                       bias, s.act, out, out1, q0 == 0, q0 + kc >= s.C)
            q0 += kc
    for r in range(r0, r1):
        n = r // per_image
        p0 = (r - n * per_image) * L
        mr = span(HW - p0, L)
        if whole and mr == L:
            continue
        a = x + n * in_image + p0 * 16
        out = y + (n * n_ob + ob) * HW * 16 + p0 * 16
        q0 = 0
        while q0 < s.C:
            kc = span(s.C - q0, PW_KC)
            if width == 48:
                ukernel48(kc, a, s.toff + q0, 16, mr, wb + q0 * 48, tiles, q0 == 0)
            else:
                ukernel(kc, a, s.toff + q0, 16, mr, wb + q0 * 32, tiles, q0 == 0)
            q0 += kc
        store(tiles, width, mr, bias, s.act, out, out + HW * 16 if ob + 1 < n_ob else NULL)
        if width == 48 and ob + 2 < n_ob:
            store(tiles + 32, width, mr, bias + 32, s.act, out + 2 * HW * 16, NULL)


cdef void pw_c16_share(const Step* s, const float* x, float* y, float* tiles,
                       cnnrt_gemm_ukernel_rows ukernel, cnnrt_gemm_ukernel_rows ukernel48,
                       cnnrt_store_c16_fn store, cnnrt_pw_c16_fn pw, cnnrt_pw48_c16_fn pw48,
                       Py_ssize_t share, Py_ssize_t n_shares, Py_ssize_t n_kb,
                       Py_ssize_t n_runs) noexcept nogil:
    """Share ``share`` of n_shares equal shares of the multiply-adds, panel
    by panel (each panel's runs in order, a run costing the panel's width):
    one task per panel over the share's runs, so each pass's weights are
    read once and stay in L1 across them.  Panels of 48 and 32 channels then
    still give every thread the same work."""
    cdef Py_ssize_t kb, k0, woff, width, lo, hi, ra, rb
    cdef Py_ssize_t total = 0, acc = 0
    for kb in range(n_kb):
        total += pw_panel(s, kb, &k0, &woff) * n_runs
    lo = share * total // n_shares
    hi = (share + 1) * total // n_shares
    for kb in range(n_kb):
        width = pw_panel(s, kb, &k0, &woff)
        if acc + width * n_runs > lo and acc < hi:
            ra = (lo - acc) // width if lo > acc else 0
            rb = (hi - acc) // width if hi < acc + width * n_runs else n_runs
            if ra < rb:
                pw_c16_task(s, x, y, tiles, ukernel, ukernel48, store, pw, pw48, kb, ra, rb)
        acc += width * n_runs


cdef void conv2d_pw_c16(const Step* s, const float* x, float* y, float* scratch,
                        Py_ssize_t N, int n_threads) noexcept nogil:
    """1x1 stride-1 convolution (one group), c16 in and out."""
    cdef cnnrt_gemm_ukernel_rows ukernel = _gemm.ukernel_rows
    cdef cnnrt_gemm_ukernel_rows ukernel48 = _gemm.ukernel_rows48
    cdef cnnrt_store_c16_fn store = _c16.store
    cdef cnnrt_pw_c16_fn pw = _c16.pw
    cdef cnnrt_pw48_c16_fn pw48 = _c16.pw48
    cdef Py_ssize_t n_kb = pw_n_panels(s)
    cdef Py_ssize_t n_runs = N * ((s.H * s.W + s.run - 1) // s.run)
    cdef Py_ssize_t n_blocks = (n_runs + ROWS_BLOCK - 1) // ROWS_BLOCK
    # few blocks of runs: the threads split the weight panels (each reads
    # its share of the weights), else the blocks (each thread's tasks go
    # through every panel for one block of runs, which stays in cache)
    cdef bint by_panel = c16_few_runs(s.H * s.W, N, n_threads) and n_kb >= n_threads
    cdef Py_ssize_t t, block
    if by_panel:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            pw_c16_share(s, x, y, scratch + threadid() * s.tstride, ukernel, ukernel48, store,
                         pw, pw48, t, n_threads, n_kb, n_runs)
        return
    for t in prange(n_blocks * n_kb, schedule="static", num_threads=n_threads):
        block = t // n_kb
        pw_c16_task(s, x, y, scratch + threadid() * s.tstride, ukernel, ukernel48, store,
                    pw, pw48, t % n_kb, block * ROWS_BLOCK,
                    (block + 1) * ROWS_BLOCK if (block + 1) * ROWS_BLOCK < n_runs else n_runs)


# ==========================================================================
# Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions (ext/f32_winograd.h)
# ==========================================================================

cdef extern from "f32_winograd.h":
    ctypedef void (*cnnrt_wino_input_fn)(const float* xp, Py_ssize_t plane, Py_ssize_t Wp,
                                         const Py_ssize_t* base, Py_ssize_t nvalid,
                                         Py_ssize_t c0, Py_ssize_t c1, float* v,
                                         Py_ssize_t xi_stride) noexcept nogil
    ctypedef void (*cnnrt_wino_output_fn)(const float* m, Py_ssize_t xi_stride,
                                          Py_ssize_t k0, Py_ssize_t k1, const float* bias,
                                          int act, float* y, Py_ssize_t P, Py_ssize_t W2,
                                          Py_ssize_t rows, Py_ssize_t cols,
                                          int pool) noexcept nogil
    ctypedef struct cnnrt_wino_config:
        cnnrt_wino_input_fn input
        cnnrt_wino_output_fn output
    cnnrt_wino_config cnnrt_wino_select(int isa) noexcept nogil

cdef cnnrt_wino_config _wino = cnnrt_wino_select(cnnrt_isa_best())

# Channels per input-transform task, output channels per output-transform task.
DEF WINO_CIN = 32
DEF WINO_KOUT = 64
DEF WINO_PREFETCH_BYTES = 256 * 1024


cdef void wino_pad_plane(const Step* s, const float* x, float* xp, Py_ssize_t item) noexcept nogil:
    """Copy one channel plane into its zero-bordered tile grid."""
    cdef Py_ssize_t Hp = 4 * s.th + 2
    cdef Py_ssize_t Wp = 4 * s.tw + 2
    cdef float* dst = xp + item * Hp * Wp
    cdef const float* src = x + item * s.H * s.W
    cdef Py_ssize_t iy
    memset(dst, 0, Hp * Wp * sizeof(float))
    for iy in range(s.H):
        memcpy(dst + (s.pt + iy) * Wp + s.pl, src + iy * s.W, s.W * sizeof(float))


cdef void wino_input_task(const Step* s, const float* xp, float* v, Py_ssize_t NT,
                          Py_ssize_t Tpad, Py_ssize_t task, Py_ssize_t n_cchunks,
                          cnnrt_wino_input_fn fn, bint prefetch) noexcept nogil:
    cdef Py_ssize_t panel = task // n_cchunks
    cdef Py_ssize_t c0 = (task % n_cchunks) * WINO_CIN
    cdef Py_ssize_t c1 = c0 + WINO_CIN
    cdef Py_ssize_t T = s.th * s.tw
    cdef Py_ssize_t Wp = 4 * s.tw + 2
    cdef Py_ssize_t plane = (4 * s.th + 2) * Wp
    cdef Py_ssize_t base[8]
    cdef Py_ssize_t r, t, n, tt, nvalid = 0
    if c1 > s.C:
        c1 = s.C
    for r in range(8):
        t = panel * 8 + r
        base[r] = 0
        if t < NT:
            n = t // T
            tt = t % T
            base[r] = n * s.C * plane + 4 * (tt // s.tw) * Wp + 4 * (tt % s.tw)
            nvalid = r + 1
    if prefetch:  # the task's 36 blocks of V
        cnnrt_prefetch_rows(v + panel * s.C * 8 + c0 * 8, Tpad * s.C, 36, 0, (c1 - c0) * 8)
    fn(xp, plane, Wp, base, nvalid, c0, c1, v + panel * s.C * 8, Tpad * s.C)


cdef void wino_gemm_task(const Step* s, const float* v, float* m, Py_ssize_t NT,
                         Py_ssize_t Tpad, Py_ssize_t task, Py_ssize_t n_panels,
                         Py_ssize_t n_kb, cnnrt_gemm_ukernel ukernel,
                         bint prefetch) noexcept nogil:
    cdef Py_ssize_t kb = task % n_kb
    cdef Py_ssize_t rest = task // n_kb
    cdef Py_ssize_t panel = rest % n_panels
    cdef Py_ssize_t xi = rest // n_panels
    cdef const float* a = v + xi * Tpad * s.C + panel * s.C * 8
    cdef const float* b = s.w + (xi * n_kb + kb) * s.C * CNNRT_NR
    cdef float* c = m + xi * Tpad * s.K + panel * 8 * s.K + kb * CNNRT_NR
    cdef Py_ssize_t mr = NT - panel * 8
    cdef Py_ssize_t nr = s.K - kb * CNNRT_NR
    cdef Py_ssize_t q0 = 0, kc
    if mr > 8:
        mr = 8
    if nr > CNNRT_NR:
        nr = CNNRT_NR
    if prefetch:  # the tile's lines of M, fetched while it computes
        cnnrt_prefetch_rows(c, s.K, mr, 0, nr)
    while q0 < s.C:
        kc = span(s.C - q0, KC)
        ukernel(kc, a + q0 * 8, b + q0 * CNNRT_NR, c, s.K, mr, nr, NULL,
                q0 == 0, q0 + kc >= s.C, ACT_NONE)
        q0 += kc


cdef void wino_output_task(const Step* s, const float* m, float* y, Py_ssize_t Tpad,
                           Py_ssize_t task, Py_ssize_t n_kchunks,
                           cnnrt_wino_output_fn fn, bint prefetch) noexcept nogil:
    cdef Py_ssize_t t = task // n_kchunks
    cdef Py_ssize_t k0 = (task % n_kchunks) * WINO_KOUT
    cdef Py_ssize_t k1 = k0 + WINO_KOUT
    cdef Py_ssize_t T = s.th * s.tw
    cdef Py_ssize_t n = t // T
    cdef Py_ssize_t tt = t % T
    cdef Py_ssize_t oy = 4 * (tt // s.tw)
    cdef Py_ssize_t ox = 4 * (tt % s.tw)
    cdef Py_ssize_t P = s.H2 * s.W2
    cdef Py_ssize_t rows = s.H2 - oy
    cdef Py_ssize_t cols = s.W2 - ox
    cdef Py_ssize_t k, H3, W3
    if k1 > s.K:
        k1 = s.K
    if s.flag == 1:  # 2x2 stride-2 max pool fused: the tile's 2x2 pooled outputs
        H3 = s.H2 // 2
        W3 = s.W2 // 2
        rows = H3 - oy // 2
        cols = W3 - ox // 2
        if rows > 2:
            rows = 2
        if cols > 2:
            cols = 2
        if rows > 0 and cols > 0:
            fn(m + t * s.K, Tpad * s.K, k0, k1, s.b, s.act,
               y + n * s.K * H3 * W3 + (oy // 2) * W3 + ox // 2, H3 * W3, W3, rows, cols, 1)
        return
    if rows > 4:
        rows = 4
    if cols > 4:
        cols = 4
    if prefetch and ox == 0:  # the output rows of this row of tiles
        for k in range(k0, k1):
            cnnrt_prefetch_rows(y + (n * s.K + k) * P + oy * s.W2, s.W2, rows, 0, s.W2)
    fn(m + t * s.K, Tpad * s.K, k0, k1, s.b, s.act,
       y + n * s.K * P + oy * s.W2 + ox, P, s.W2, rows, cols, 0)


cdef void winograd_f32(const Step* s, const float* x, float* y, float* work,
                       Py_ssize_t N, int n_threads) noexcept nogil:
    """3x3 stride-1 convolution by Winograd F(4x4, 3x3); ``work`` is per-batch scratch.

    With flag 1 the output is the 2x2 stride-2 max pool of the convolution's
    (activated) output, taken tile by tile in the output transform."""
    cdef cnnrt_wino_config wino = _wino
    cdef cnnrt_gemm_ukernel ukernel = _gemm.ukernel
    cdef Py_ssize_t T = s.th * s.tw
    cdef Py_ssize_t NT = N * T
    cdef Py_ssize_t Tpad = (NT + 7) // 8 * 8
    cdef Py_ssize_t n_panels = Tpad // 8
    cdef Py_ssize_t plane = (4 * s.th + 2) * (4 * s.tw + 2)
    cdef Py_ssize_t n_cchunks = (s.C + WINO_CIN - 1) // WINO_CIN
    cdef Py_ssize_t n_kb = (s.K + CNNRT_NR - 1) // CNNRT_NR
    cdef Py_ssize_t n_kchunks = (s.K + WINO_KOUT - 1) // WINO_KOUT
    cdef float* xp = work
    cdef float* v = xp + N * s.C * plane
    cdef float* m = v + 36 * Tpad * s.C
    cdef Py_ssize_t t
    # products and outputs larger than this are fetched ahead of their stores
    # (smaller ones stay in cache, where the prefetches only cost time)
    cdef bint v_ahead = 36 * Tpad * s.C * sizeof(float) >= WINO_PREFETCH_BYTES
    cdef bint m_ahead = 36 * Tpad * s.K * sizeof(float) >= WINO_PREFETCH_BYTES
    cdef bint y_ahead = (s.flag == 0
                         and N * s.K * s.H2 * s.W2 * sizeof(float) >= WINO_PREFETCH_BYTES)
    for t in prange(N * s.C, schedule="static", num_threads=n_threads):
        wino_pad_plane(s, x, xp, t)
    for t in prange(n_panels * n_cchunks, schedule="static", num_threads=n_threads):
        wino_input_task(s, xp, v, NT, Tpad, t, n_cchunks, wino.input, v_ahead)
    for t in prange(36 * n_panels * n_kb, schedule="static", num_threads=n_threads):
        wino_gemm_task(s, v, m, NT, Tpad, t, n_panels, n_kb, ukernel, m_ahead)
    for t in prange(NT * n_kchunks, schedule="static", num_threads=n_threads):
        wino_output_task(s, m, y, Tpad, t, n_kchunks, wino.output, y_ahead)


cdef extern from "f32_dwconv.h":
    ctypedef void (*cnnrt_dwconv_row_fn)(const float* plane, Py_ssize_t H, Py_ssize_t W,
                                         const float* wk, Py_ssize_t kh, Py_ssize_t kw,
                                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh,
                                         Py_ssize_t dw, Py_ssize_t pt, Py_ssize_t pl,
                                         Py_ssize_t oy, Py_ssize_t W2, float bias, int act,
                                         float* out) noexcept nogil
    cnnrt_dwconv_row_fn cnnrt_dwconv_select(int isa) noexcept nogil
    ctypedef void (*cnnrt_dwconv_plane_fn)(const float* plane, Py_ssize_t H, Py_ssize_t W,
                                           const float* wk, Py_ssize_t kh, Py_ssize_t kw,
                                           Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pt,
                                           Py_ssize_t pl, Py_ssize_t pb, Py_ssize_t pr,
                                           Py_ssize_t H2, Py_ssize_t W2, float bias, int act,
                                           float* out, float* work) noexcept nogil
    ctypedef void (*cnnrt_dw16_fn)(const float* x, Py_ssize_t H, Py_ssize_t W, const float* wk16,
                                   const float* bias16, Py_ssize_t nc, Py_ssize_t kh, Py_ssize_t kw,
                                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                                   Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t pr, Py_ssize_t H2,
                                   Py_ssize_t W2, int act, float* y, float* work) noexcept nogil
    cnnrt_dw16_fn cnnrt_dw16_select(int isa) noexcept nogil
    Py_ssize_t cnnrt_dw16_work(Py_ssize_t W, Py_ssize_t kh, Py_ssize_t sh, Py_ssize_t dh,
                               Py_ssize_t pl, Py_ssize_t pr, Py_ssize_t H2, Py_ssize_t W2) noexcept nogil
    cnnrt_dwconv_plane_fn cnnrt_dwconv_plane_select(int isa) noexcept nogil
    cnnrt_dwconv_plane_fn cnnrt_dwconv_plane2_select(int isa) noexcept nogil
    Py_ssize_t cnnrt_dwconv_plane2_work(Py_ssize_t H, Py_ssize_t W, Py_ssize_t kw,
                                        Py_ssize_t dw, Py_ssize_t pt, Py_ssize_t pl,
                                        Py_ssize_t pb, Py_ssize_t pr, Py_ssize_t H2) noexcept nogil
    Py_ssize_t cnnrt_dw_zero_row(Py_ssize_t W, Py_ssize_t W2, Py_ssize_t kw, Py_ssize_t dw,
                                 Py_ssize_t pl, Py_ssize_t s) noexcept nogil
    Py_ssize_t cnnrt_dwconv_plane_work(Py_ssize_t H, Py_ssize_t W, Py_ssize_t kw,
                                       Py_ssize_t dw, Py_ssize_t pt, Py_ssize_t pl,
                                       Py_ssize_t pb, Py_ssize_t pr, Py_ssize_t H2) noexcept nogil

cdef cnnrt_dwconv_row_fn _dwconv_row = cnnrt_dwconv_select(cnnrt_isa_best())
cdef cnnrt_dwconv_plane_fn _dwconv_plane = cnnrt_dwconv_plane_select(cnnrt_isa_best())
cdef cnnrt_dwconv_plane_fn _dwconv_plane2 = cnnrt_dwconv_plane2_select(cnnrt_isa_best())
cdef cnnrt_dw16_fn _dw16 = cnnrt_dw16_select(cnnrt_isa_best())


def dw16_work(W, kh, sh, dh, pl, pr, H2, W2):
    """Private floats the 16-channel depthwise kernel needs (see f32_dwconv.h)."""
    return cnnrt_dw16_work(W, kh, sh, dh, pl, pr, H2, W2)


def dwconv_plane_work(stride, H, W, kw, dw, pt, pl, pb, pr, H2):
    """Private floats a depthwise plane of stride 1 or 2 needs (see f32_dwconv.h)."""
    W2 = (W + pl + pr - (kw - 1) * dw - 1) // stride + 1
    if stride == 1:
        work = cnnrt_dwconv_plane_work(H, W, kw, dw, pt, pl, pb, pr, H2)
    else:
        work = cnnrt_dwconv_plane2_work(H, W, kw, dw, pt, pl, pb, pr, H2)
    return max(work, cnnrt_dw_zero_row(W, W2, kw, dw, pl, stride))


cdef void depthwise_plane(const Step* s, const float* x, float* y, Py_ssize_t item,
                          cnnrt_dwconv_row_fn row_fn, cnnrt_dwconv_plane_fn plane_fn,
                          cnnrt_dwconv_plane_fn plane2_fn, float* work) noexcept nogil:
    """One output channel of one image for a convolution with one input channel per group."""
    cdef Py_ssize_t n = item // s.K
    cdef Py_ssize_t k = item % s.K
    cdef Py_ssize_t mult = s.K // s.C
    cdef const float* plane = x + (n * s.C + k // mult) * s.H * s.W
    cdef const float* wk = s.w + k * s.kh * s.kw
    cdef float* out = y + item * s.H2 * s.W2
    cdef float bias = s.b[k] if s.b != NULL else 0.0
    cdef Py_ssize_t oy
    # the next plane's input and output, fetched while this one runs (the
    # planes of a layer stream through the cache once, and the hardware
    # prefetchers start over at each plane)
    cnnrt_prefetch_rows(plane + (s.H * s.W if (k + 1) % mult == 0 else 0), 0, 1, 0, s.H * s.W)
    cnnrt_prefetch_rows(out + s.H2 * s.W2, 0, 1, 0, s.H2 * s.W2)
    if s.sh == 1 and s.sw == 1:
        plane_fn(plane, s.H, s.W, wk, s.kh, s.kw, s.dh, s.dw, s.pt, s.pl, s.pb, s.pr,
                 s.H2, s.W2, bias, s.act, out, work)
        return
    if s.sh == 2 and s.sw == 2:
        plane2_fn(plane, s.H, s.W, wk, s.kh, s.kw, s.dh, s.dw, s.pt, s.pl, s.pb, s.pr,
                  s.H2, s.W2, bias, s.act, out, work)
        return
    for oy in range(s.H2):
        row_fn(plane, s.H, s.W, wk, s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.pt, s.pl,
               oy, s.W2, bias, s.act, out + oy * s.W2)


cdef void depthwise2d_f32(const Step* s, const float* x, float* y, float* pack,
                          Py_ssize_t N, int n_threads) noexcept nogil:
    cdef cnnrt_dwconv_row_fn row_fn = _dwconv_row
    cdef cnnrt_dwconv_plane_fn plane_fn = _dwconv_plane
    cdef cnnrt_dwconv_plane_fn plane2_fn = _dwconv_plane2
    cdef cnnrt_dw16_fn dw16 = _dw16
    cdef Py_ssize_t item, n_groups, n, g, nc
    if dw16 != NULL and s.w2 != NULL:  # 16 channels at a time
        n_groups = (s.K + 15) // 16
        for item in prange(N * n_groups, schedule="static", num_threads=n_threads):
            n = item // n_groups
            g = item % n_groups
            nc = span(s.K - g * 16, 16)
            dw16(x + (n * s.C + g * 16) * s.H * s.W, s.H, s.W, s.w2 + g * 16 * s.kh * s.kw,
                 s.b2 + g * 16, nc, s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.pt, s.pl, s.pr,
                 s.H2, s.W2, s.act, y + (n * s.K + g * 16) * s.H2 * s.W2,
                 pack + threadid() * s.tstride)
        return
    for item in prange(N * s.K, schedule="static", num_threads=n_threads):
        depthwise_plane(s, x, y, item, row_fn, plane_fn, plane2_fn, pack + threadid() * s.tstride)


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

cdef extern from "f32_rows.h":
    ctypedef Py_ssize_t (*cnnrt_nonfinite_fn)(const float* x, Py_ssize_t n) noexcept nogil
    ctypedef float (*cnnrt_dot_fn)(const float* a, const float* b, Py_ssize_t n) noexcept nogil
    ctypedef void (*cnnrt_pool_row_fn)(const float* plane, Py_ssize_t H, Py_ssize_t W,
                                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                       Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                       Py_ssize_t pb, Py_ssize_t pr, Py_ssize_t oy,
                                       Py_ssize_t W2, int kind, int include_pad,
                                       float* out) noexcept nogil
    ctypedef int (*cnnrt_maxpool_plane_fn)(const float* plane, Py_ssize_t H, Py_ssize_t W,
                                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                           Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                           Py_ssize_t H2, Py_ssize_t W2,
                                           float* out) noexcept nogil
    ctypedef struct cnnrt_rows_config:
        cnnrt_nonfinite_fn nonfinite
        cnnrt_dot_fn dot
        cnnrt_pool_row_fn pool_row
        cnnrt_maxpool_plane_fn maxpool_plane
    int CNNRT_POOL_MAX
    int CNNRT_POOL_AVG
    int CNNRT_POOL_L2
    cnnrt_rows_config cnnrt_rows_select(int isa) noexcept nogil

cdef cnnrt_rows_config _rows = cnnrt_rows_select(cnnrt_isa_best())


cdef void dense_out(const Step* s, const float* x, float* y, Py_ssize_t N, Py_ssize_t o,
                    cnnrt_dot_fn dot) noexcept nogil:
    cdef const float* wo = s.w + o * s.in_size
    cdef float bias = s.b[o] if s.b != NULL else 0.0
    cdef Py_ssize_t n
    for n in range(N):
        y[n * s.out_size + o] = activate(dot(wo, x + n * s.in_size, s.in_size) + bias, s.act)


cdef void dense_f32(const Step* s, const float* x, float* y,
                    Py_ssize_t N, int n_threads) noexcept nogil:
    cdef cnnrt_dot_fn dot = _rows.dot
    cdef Py_ssize_t o
    for o in prange(s.out_size, schedule="static", num_threads=n_threads):
        dense_out(s, x, y, N, o, dot)


# ==========================================================================
# Pooling
# ==========================================================================

cdef void pool_plane(const Step* s, const float* x, float* y, Py_ssize_t item,
                     cnnrt_pool_row_fn row_fn, cnnrt_maxpool_plane_fn max_fn) noexcept nogil:
    cdef const float* plane = x + item * s.H * s.W
    cdef float* out = y + item * s.H2 * s.W2
    cdef int kind = CNNRT_POOL_MAX
    cdef Py_ssize_t oy
    if s.op == OP_MAXPOOL2D and max_fn(plane, s.H, s.W, s.kh, s.kw, s.sh, s.sw, s.pt, s.pl,
                                       s.H2, s.W2, out):
        return
    if s.op == OP_AVGPOOL2D:
        kind = CNNRT_POOL_AVG
    elif s.op == OP_L2POOL2D:
        kind = CNNRT_POOL_L2
    for oy in range(s.H2):
        row_fn(plane, s.H, s.W, s.kh, s.kw, s.sh, s.sw, s.pt, s.pl, s.pb, s.pr,
               oy, s.W2, kind, s.flag, out + oy * s.W2)


cdef void pool2d_f32(const Step* s, const float* x, float* y,
                     Py_ssize_t N, int n_threads) noexcept nogil:
    cdef cnnrt_pool_row_fn row_fn = _rows.pool_row
    cdef cnnrt_maxpool_plane_fn max_fn = _rows.maxpool_plane
    cdef Py_ssize_t item
    for item in prange(N * s.C, schedule="static", num_threads=n_threads):
        pool_plane(s, x, y, item, row_fn, max_fn)


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
    if s.act != ACT_NONE:
        activate_row(y + lo, hi - lo, s.act)


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
                    float* work, float* pack, Py_ssize_t N, int n_threads,
                    const float* xin, float* yout, double* seconds) noexcept nogil:
    """Run the steps on N samples; ``xin`` and ``yout`` (or NULL) are the
    model's input and output where the caller keeps them, for the steps
    marked to use them (Step.io).  With ``seconds``, each step's wall time is
    added to seconds[i]."""
    cdef Py_ssize_t i
    cdef double t0
    for i in range(n_steps):
        if seconds != NULL:
            t0 = omp_get_wtime()
        run_step(&steps[i], arena, work, pack, N, n_threads, xin, yout)
        if seconds != NULL:
            seconds[i] += omp_get_wtime() - t0


cdef inline void run_step(const Step* s, float* arena, float* work, float* pack,
                          Py_ssize_t N, int n_threads, const float* xin,
                          float* yout) noexcept nogil:
    cdef const float* x
    cdef float* y
    # A parallel region costs a few microseconds while the team is awake; a
    # step with less work than that runs alone.
    if s.work * N < _parallel_min_work:
        n_threads = 1
    x = xin if (s.io & 1) and xin != NULL else arena + s.in_off[0] * N
    y = yout if (s.io & 2) and yout != NULL else arena + s.out_off * N
    if s.op == OP_CONV2D:
        conv2d_f32(s, x, y, work, pack, N, n_threads)
    elif s.op == OP_WINOGRAD3X3:
        winograd_f32(s, x, y, work, N, n_threads)
    elif s.op == OP_DEPTHWISE2D:
        depthwise2d_f32(s, x, y, pack, N, n_threads)
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
    elif s.op == OP_TO_C16 or s.op == OP_FROM_C16:
        reorder_c16(s, x, y, N, n_threads)
    elif s.op == OP_DEPTHWISE_C16:
        depthwise_c16(s, x, y, N, n_threads)
    elif s.op == OP_MAXPOOL_C16:
        maxpool_c16(s, x, y, N, n_threads)
    else:
        unary_f32(s, x, y, N, n_threads)


DEF COPY_CHUNK = 16384


cdef Py_ssize_t copy_input(const float* src, float* dst, Py_ssize_t count,
                           int n_threads, bint check) noexcept nogil:
    """Copy the input into the arena (dst NULL: do not copy) and, with
    ``check``, count the values that are NaN or infinite; one pass, split
    between the threads."""
    cdef Py_ssize_t n_chunks = (count + COPY_CHUNK - 1) // COPY_CHUNK
    cdef Py_ssize_t c, lo, n, bad = 0
    cdef cnnrt_nonfinite_fn nonfinite = _rows.nonfinite
    if count * 2 < _parallel_min_work:
        n_threads = 1
    for c in prange(n_chunks, schedule="static", num_threads=n_threads):
        lo = c * COPY_CHUNK
        n = span(count - lo, COPY_CHUNK)
        if dst != NULL:
            memcpy(dst + lo, src + lo, n * sizeof(float))
        if check:
            bad += nonfinite(src + lo, n)
    return bad


# Batches run in chunks of samples whose activations fit in about this many
# bytes per thread, so that each layer's output is still in cache when the
# next layer reads it (per-sample results do not depend on the batch size).
cdef Py_ssize_t _batch_chunk_bytes = 1 << 20


def set_batch_chunk_bytes(Py_ssize_t nbytes):
    """Run batches in chunks of about ``nbytes`` of activations per thread
    (at least one sample per thread); returns the previous value."""
    global _batch_chunk_bytes
    if nbytes < 1:
        raise ValueError(f"nbytes must be >= 1, got {nbytes}")
    previous = _batch_chunk_bytes
    _batch_chunk_bytes = nbytes
    return previous


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
    "winograd3x3": OP_WINOGRAD3X3,
    "to_c16": OP_TO_C16,
    "from_c16": OP_FROM_C16,
    "depthwise_c16": OP_DEPTHWISE_C16,
    "maxpool_c16": OP_MAXPOOL_C16,
}
KERNELS = tuple(_OPCODES)

_ACTIVATIONS = {"none": ACT_NONE, "relu": ACT_RELU, "relu6": ACT_RELU6,
                "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH}

_INT_FIELDS = ("in_size", "out_size", "C", "H", "W", "K", "H2", "W2", "kh", "kw",
               "sh", "sw", "dh", "dw", "pt", "pl", "pb", "pr", "groups",
               "outer", "axis", "inner", "th", "tw", "work", "spack",
               "gw", "gplane", "gimage", "gprep", "run", "nr")


def aligned_empty(Py_ssize_t n):
    """An uninitialised float32 array of ``n`` values starting on a 64-byte
    boundary (a cache line), so whole-vector loads and stores never split."""
    raw = np.empty(n + ALIGN_FLOATS, dtype=np.float32)
    cdef Py_ssize_t shift = ((64 - <Py_ssize_t> (raw.ctypes.data % 64)) % 64) // 4
    return raw[shift:shift + n]


cdef inline float* _align(float* p) noexcept nogil:
    """``p`` rounded up to the next 64-byte boundary (at most 15 floats on)."""
    return <float*> ((<size_t> p + 63) & ~(<size_t> 63))


cdef const float* _float_ptr(object arr, list keep) except? NULL:
    """``arr`` as flat float32 starting on a 64-byte boundary (copied only if
    it is not already), kept alive in ``keep``."""
    cdef const float[::1] view
    if arr is None:
        return NULL
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    if flat.shape[0] == 0:
        raise ValueError("empty weight array")
    if flat.ctypes.data % 64 != 0:
        src = flat
        flat = aligned_empty(src.shape[0])
        flat[:] = src
    keep.append(flat)
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
    cdef readonly Py_ssize_t scratch_size  # arena floats of work space per sample
    cdef readonly Py_ssize_t thread_size   # arena floats of private work space per thread
    cdef Py_ssize_t in_off, out_off, out_size
    cdef Py_ssize_t C, H, W
    cdef bint nhwc
    # The head (steps before n_head) runs chunk by chunk and leaves its output
    # (b_size floats per sample at out_off); the tail (steps from n_head) runs
    # on larger chunks in its own part of the arena, reading that output at
    # t_in_off and leaving the result at t_out_off.  Without a tail, n_head is
    # n_steps and the head's output is the result.
    cdef Py_ssize_t n_head, b_size
    cdef readonly Py_ssize_t tail_sample_size, tail_scratch_size
    cdef Py_ssize_t t_in_off, t_out_off, t_factor
    # steps read the model's input from the caller's array / write its output
    # into the caller's array (see Step.io)
    cdef readonly bint ext_in, ext_out

    def __cinit__(self):
        self.steps = NULL
        self.n_steps = 0

    def __init__(self, list steps, Py_ssize_t sample_size, Py_ssize_t scratch_size,
                 Py_ssize_t in_off, tuple input_chw, bint nhwc,
                 Py_ssize_t out_off, Py_ssize_t out_size, Py_ssize_t thread_size=0,
                 tuple tail=None):
        """``tail``: None, or (index of the tail's first step, offset and size
        per sample of the head's output, the tail's arena and work floats per
        sample, the offset of its input, chunk factor); ``out_off`` is then in
        the tail's arena."""
        cdef Py_ssize_t i, k
        cdef Step* s
        cdef const Py_ssize_t[::1] offs
        self.keep = []
        self.sample_size = sample_size
        self.scratch_size = scratch_size
        self.thread_size = max(thread_size, PACK_FLOATS)
        self.thread_size = (self.thread_size + 15) // 16 * 16
        self.in_off = in_off
        self.C, self.H, self.W = input_chw
        self.nhwc = nhwc
        self.out_off = out_off
        self.out_size = out_size
        self.n_head = len(steps)
        self.b_size = out_size
        self.tail_sample_size = self.tail_scratch_size = 0
        self.t_in_off = self.t_out_off = 0
        self.t_factor = 1
        if tail is not None:
            (self.n_head, self.out_off, self.b_size, self.tail_sample_size,
             self.tail_scratch_size, self.t_in_off, self.t_factor) = tail
            self.t_out_off = out_off
            if not 0 < self.n_head < len(steps) or self.t_factor < 1:
                raise ValueError(f"tail must start after the first step and before step "
                                 f"{len(steps)}, with a chunk factor of at least 1; got {tail}")
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
            s.io = d.get("io", 0)
            if s.io & ~3 or (s.io & 1 and (nhwc or i >= self.n_head)) or (
                    s.io & 2 and i < self.n_head < len(steps)):
                raise ValueError(f"step {i}: io {s.io} is not 0-3, or reads the input "
                                 f"outside the head or writes the output outside the tail")
            self.ext_in = self.ext_in or bool(s.io & 1)
            self.ext_out = self.ext_out or bool(s.io & 2)
            s.f0 = d.get("f0", 0.0)
            s.f1 = d.get("f1", 0.0)
            if "toff" in d:
                toff = np.ascontiguousarray(d["toff"], dtype=np.intp)
                self.keep.append(toff)
                offs = toff
                s.toff = &offs[0]
            s.w = _float_ptr(d.get("w"), self.keep)
            s.w2 = _float_ptr(d.get("w2"), self.keep)
            s.b2 = _float_ptr(d.get("b2"), self.keep)
            s.b = _float_ptr(d.get("b"), self.keep)
            s.tstride = self.thread_size

    def __dealloc__(self):
        free(self.steps)

    cdef Py_ssize_t _chunk(self, Py_ssize_t n, int n_threads) noexcept nogil:
        """Samples the head runs together: a few per thread, all of a small batch."""
        cdef Py_ssize_t per = (self.sample_size + self.scratch_size) * sizeof(float)
        cdef Py_ssize_t k = _batch_chunk_bytes // per if per > 0 else n
        if k < 1:
            k = 1
        k *= n_threads
        return n if k >= n else k

    cdef Py_ssize_t _tail_chunk(self, Py_ssize_t n, int n_threads) noexcept nogil:
        """Samples the tail runs together: t_factor times as many bytes as a
        head chunk, and at least as many samples."""
        cdef Py_ssize_t per = (self.tail_sample_size + self.tail_scratch_size) * sizeof(float)
        cdef Py_ssize_t k = n
        if self.n_head == self.n_steps:
            return 0
        if per > 0:
            k = _batch_chunk_bytes * self.t_factor // per
            if k < 1:
                k = 1
            k *= n_threads
        if k < self._chunk(n, n_threads):
            k = self._chunk(n, n_threads)
        return n if k >= n else k

    def arena_size(self, Py_ssize_t n, int n_threads):
        """Floats of arena needed for a batch of ``n`` run with ``n_threads``."""
        return ((self.sample_size + self.scratch_size) * self._chunk(n, n_threads)
                + (self.tail_sample_size + self.tail_scratch_size) * self._tail_chunk(n, n_threads)
                + n_threads * self.thread_size + ALIGN_FLOATS)

    cdef int _buffers(self, cnp.ndarray x, cnp.ndarray arena, cnp.ndarray out, Py_ssize_t n,
                      int n_threads) except -1:
        """Check the arrays handed to run (any shape, C-contiguous float32)."""
        if n <= 0 or n_threads <= 0:
            raise ValueError("batch size and thread count must be positive")
        for a, what in ((x, "input"), (arena, "arena"), (out, "output")):
            if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(a):
                raise ValueError(f"{what} must be a C-contiguous float32 array")
            if a is not x and not cnp.PyArray_ISWRITEABLE(a):
                raise ValueError(f"{what} must be writeable")
        if cnp.PyArray_SIZE(x) != n * self.C * self.H * self.W:
            raise ValueError("input buffer has the wrong size")
        if cnp.PyArray_SIZE(out) != n * self.out_size:
            raise ValueError("output buffer has the wrong size")
        if cnp.PyArray_SIZE(arena) < self.arena_size(n, n_threads):
            raise ValueError("arena is too small")
        return 0

    def run(self, cnp.ndarray x not None, cnp.ndarray arena not None, cnp.ndarray out not None,
            Py_ssize_t n, int n_threads):
        """Run the plan on ``n`` samples; ``x``, ``arena`` and ``out`` are
        C-contiguous float32 arrays of any shape (``x`` may be read-only).

        Returns the number of NaN or infinite values in ``x``; if there are
        any, nothing is run and ``out`` is left as it was.
        """
        self._buffers(x, arena, out, n, n_threads)
        cdef float* a = _align(<float*> cnp.PyArray_DATA(arena))  # tensors start on cache lines
        cdef const float* xp = <const float*> cnp.PyArray_DATA(x)
        cdef float* op = <float*> cnp.PyArray_DATA(out)
        cdef Py_ssize_t bad
        with nogil:
            bad = self._run(xp, a, op, n, n_threads, NULL)
        return bad

    cdef Py_ssize_t _run(self, const float* xp, float* a, float* op, Py_ssize_t n,
                         int n_threads, double* seconds) noexcept nogil:
        """Check the input, then run the batch chunk by chunk; returns the
        number of non-finite input values (then nothing is run).

        The steps that read the model's input read it from ``xp`` where the
        plan allows (ext_in), else it is copied into the arena; the step that
        writes the model's output writes into ``op`` where the plan allows
        (ext_out), else the output is copied there.

        Arena: the head's chunk (tensors, then work space), the tail's chunk,
        then each thread's private space."""
        cdef Py_ssize_t size = self.C * self.H * self.W
        cdef Py_ssize_t nb = self._chunk(n, n_threads)
        cdef Py_ssize_t nt = self._tail_chunk(n, n_threads)
        cdef float* ta = a + (self.sample_size + self.scratch_size) * nb
        cdef float* pack = ta + (self.tail_sample_size + self.tail_scratch_size) * nt
        cdef bint has_tail = self.n_head < self.n_steps
        cdef Py_ssize_t i = 0, j, m, mt
        cdef Py_ssize_t bad
        cdef float* x0
        cdef const float* xin
        cdef float* head_out
        if not has_tail:
            nt = nb
        if self.nhwc or nb < n or self.ext_in:
            bad = copy_input(xp, NULL, n * size, n_threads, True)
            if bad:
                return bad
        while i < n:
            mt = n - i if n - i < nt else nt
            j = 0
            while j < mt:
                m = mt - j if mt - j < nb else nb
                x0 = a + self.in_off * m
                xin = NULL
                if self.ext_in:
                    xin = xp + (i + j) * size
                elif self.nhwc:
                    nhwc_to_nchw(xp + (i + j) * size, x0, m, self.C, self.H, self.W, n_threads)
                elif nb < n:
                    copy_input(xp + (i + j) * size, x0, m * size, n_threads, False)
                else:  # the whole batch at once: copy and check in one pass
                    bad = copy_input(xp, x0, n * size, n_threads, True)
                    if bad:
                        return bad
                head_out = NULL
                if self.ext_out and not has_tail:
                    head_out = op + (i + j) * self.out_size
                run_steps(self.steps, self.n_head, a, a + self.sample_size * m, pack, m,
                          n_threads, xin, head_out, seconds)
                if has_tail:
                    memcpy(ta + self.t_in_off * mt + j * self.b_size, a + self.out_off * m,
                           m * self.b_size * sizeof(float))
                elif head_out == NULL:
                    memcpy(op + (i + j) * self.out_size, a + self.out_off * m,
                           m * self.out_size * sizeof(float))
                j += m
            if has_tail:
                run_steps(self.steps + self.n_head, self.n_steps - self.n_head, ta,
                          ta + self.tail_sample_size * mt, pack, mt, n_threads, NULL,
                          op + i * self.out_size if self.ext_out else NULL,
                          seconds + self.n_head if seconds != NULL else NULL)
                if not self.ext_out:
                    memcpy(op + i * self.out_size, ta + self.t_out_off * mt,
                           mt * self.out_size * sizeof(float))
            i += mt
        return 0

    def run_timed(self, cnp.ndarray x not None, cnp.ndarray arena not None,
                  cnp.ndarray out not None, Py_ssize_t n, int n_threads, double[::1] seconds):
        """As :meth:`run`, adding each step's wall time (seconds) to ``seconds``."""
        if seconds.shape[0] != self.n_steps:
            raise ValueError("seconds must have one entry per step")
        self._buffers(x, arena, out, n, n_threads)
        cdef float* a = _align(<float*> cnp.PyArray_DATA(arena))
        cdef const float* xp = <const float*> cnp.PyArray_DATA(x)
        cdef float* op = <float*> cnp.PyArray_DATA(out)
        cdef double* sec = &seconds[0]
        cdef Py_ssize_t bad
        with nogil:
            bad = self._run(xp, a, op, n, n_threads, sec)
        return bad


cdef int _set_int(Step* s, str name, Py_ssize_t v) except -1:
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
    elif name == "th": s.th = v
    elif name == "tw": s.tw = v
    elif name == "work": s.work = v
    elif name == "spack": s.spack = v
    elif name == "gw": s.gw = v
    elif name == "gplane": s.gplane = v
    elif name == "gimage": s.gimage = v
    elif name == "gprep": s.gprep = v
    elif name == "run": s.run = v
    elif name == "nr":
        if v not in (32, 48):
            raise ValueError(f"rows panels are 32 or 48 channels wide, not {v}")
        s.nr = v
    else: raise KeyError(name)


def openmp_max_threads():
    """Threads OpenMP would use by default (omp_get_max_threads)."""
    return _omp_max_threads()


cdef extern from "omp.h":
    int omp_get_max_threads() nogil
    double omp_get_wtime() nogil


cdef int _omp_max_threads() noexcept:
    return omp_get_max_threads()


# ==========================================================================
# Kernel variants
# ==========================================================================

_ISA_CODES = {"scalar": CNNRT_ISA_SCALAR, "avx2": CNNRT_ISA_AVX2, "avx512": CNNRT_ISA_AVX512}
GEMM_MR = CNNRT_MR
GEMM_NR = CNNRT_NR


def isa_supported(str name):
    """Whether this CPU can run the kernel variant ``name``."""
    if name not in _ISA_CODES:
        raise ValueError(f"unknown kernel variant {name!r}; expected one of {', '.join(_ISA_CODES)}")
    return bool(cnnrt_isa_supported(_ISA_CODES[name]))


def set_isa(str name):
    """Select the micro-kernel variant used from now on (process-wide)."""
    global _gemm, _store_t, _dwconv_row, _dwconv_plane, _dwconv_plane2, _rows, _wino, _dw16, _c16
    if not isa_supported(name):
        raise ValueError(f"this CPU cannot run the {name} kernels")
    _gemm = cnnrt_gemm_select(_ISA_CODES[name])
    _store_t = cnnrt_store_t_select(_ISA_CODES[name])
    _dwconv_row = cnnrt_dwconv_select(_ISA_CODES[name])
    _dwconv_plane = cnnrt_dwconv_plane_select(_ISA_CODES[name])
    _dwconv_plane2 = cnnrt_dwconv_plane2_select(_ISA_CODES[name])
    _dw16 = cnnrt_dw16_select(_ISA_CODES[name])
    _rows = cnnrt_rows_select(_ISA_CODES[name])
    _wino = cnnrt_wino_select(_ISA_CODES[name])
    _c16 = cnnrt_c16_select(_ISA_CODES[name])


def get_isa():
    """Name of the kernel variant in use: scalar, avx2 or avx512."""
    for name, code in _ISA_CODES.items():
        if code == _gemm.isa:
            return name


def best_isa():
    """The fastest kernel variant this CPU supports."""
    best = cnnrt_isa_best()
    for name, code in _ISA_CODES.items():
        if code == best:
            return name


def gemm_kernel_name():
    return _gemm.name.decode()
