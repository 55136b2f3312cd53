/*
 * f32 depthwise convolution row kernels for cnnrt.
 *
 * One call computes one output row of one channel plane:
 *
 *   out[ox] = act(bias + sum over (ky, kx) of w[ky, kx] * in[iy, ix])
 *   iy = oy*sh - pt + ky*dh,  ix = ox*sw - pl + kx*dw
 *
 * taps outside the input (zero padding) are skipped.  Terms are added in
 * the same order (bias, then taps row by row) in every variant, so within a
 * variant results do not depend on threading.  The body is written once and
 * compiled three times with different target attributes; the compiler
 * vectorises the loop over output columns for each ISA.
 */
#ifndef CNNRT_F32_DWCONV_H
#define CNNRT_F32_DWCONV_H

#include "f32_gemm.h"

typedef void (*cnnrt_dwconv_row_fn)(const float *plane, ptrdiff_t H, ptrdiff_t W,
                                    const float *wk, ptrdiff_t kh, ptrdiff_t kw,
                                    ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,
                                    ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t oy, ptrdiff_t W2,
                                    float bias, int act, float *out);

#define CNNRT_DWCONV_ROW_BODY                                                    \
    ptrdiff_t ox, ky, kx;                                                        \
    for (ox = 0; ox < W2; ox++)                                                  \
        out[ox] = bias;                                                          \
    for (ky = 0; ky < kh; ky++) {                                                \
        const ptrdiff_t iy = oy * sh - pt + ky * dh;                             \
        const float *row;                                                        \
        if (iy < 0 || iy >= H)                                                   \
            continue;                                                            \
        row = plane + iy * W;                                                    \
        for (kx = 0; kx < kw; kx++) {                                            \
            const float w = wk[ky * kw + kx];                                    \
            const ptrdiff_t ix0 = kx * dw - pl;                                  \
            /* columns whose tap lies inside the row: 0 <= ox*sw + ix0 < W */    \
            ptrdiff_t lo = ix0 >= 0 ? 0 : (-ix0 + sw - 1) / sw;                  \
            ptrdiff_t hi = W - 1 - ix0 < 0 ? 0 : (W - 1 - ix0) / sw + 1;         \
            if (hi > W2)                                                         \
                hi = W2;                                                         \
            if (sw == 1) {                                                       \
                const float *src = row + ix0;                                    \
                for (ox = lo; ox < hi; ox++)                                     \
                    out[ox] += w * src[ox];                                      \
            } else if (sw == 2) {                                                \
                const float *src = row + ix0;                                    \
                for (ox = lo; ox < hi; ox++)                                     \
                    out[ox] += w * src[2 * ox];                                  \
            } else {                                                             \
                for (ox = lo; ox < hi; ox++)                                     \
                    out[ox] += w * row[ox * sw + ix0];                           \
            }                                                                    \
        }                                                                        \
    }                                                                            \
    if (act == CNNRT_ACT_RELU) {                                                 \
        for (ox = 0; ox < W2; ox++)                                              \
            out[ox] = out[ox] > 0.0f ? out[ox] : 0.0f;                           \
    } else if (act == CNNRT_ACT_RELU6) {                                         \
        for (ox = 0; ox < W2; ox++)                                              \
            out[ox] = out[ox] < 0.0f ? 0.0f : (out[ox] > 6.0f ? 6.0f : out[ox]); \
    } else if (act != CNNRT_ACT_NONE) {                                          \
        for (ox = 0; ox < W2; ox++)                                              \
            out[ox] = cnnrt_act_scalar(out[ox], act);                            \
    }

#define CNNRT_DWCONV_ROW_ARGS                                                    \
    const float *plane, ptrdiff_t H, ptrdiff_t W, const float *wk, ptrdiff_t kh, \
    ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,         \
    ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t oy, ptrdiff_t W2, float bias, int act,  \
    float *out

static void f32_dwconv_row__scalar(CNNRT_DWCONV_ROW_ARGS) { CNNRT_DWCONV_ROW_BODY }

#ifdef CNNRT_X86
__attribute__((target("avx2,fma")))
static void f32_dwconv_row__avx2(CNNRT_DWCONV_ROW_ARGS) { CNNRT_DWCONV_ROW_BODY }

__attribute__((target("avx512f")))
static void f32_dwconv_row__avx512(CNNRT_DWCONV_ROW_ARGS) { CNNRT_DWCONV_ROW_BODY }
#endif

static cnnrt_dwconv_row_fn cnnrt_dwconv_select(int isa)
{
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512))
        return f32_dwconv_row__avx512;
    if (isa == CNNRT_ISA_AVX2 && cnnrt_isa_supported(CNNRT_ISA_AVX2))
        return f32_dwconv_row__avx2;
#endif
    (void)isa;
    return f32_dwconv_row__scalar;
}

/*
 * Stride-1 depthwise convolution of a whole channel plane.  The plane is
 * copied into `work` with its zero padding, Hp x Wp, plus a zeroed tail; the
 * output is then computed on the padded width, so each tap is one long
 * contiguous multiply-add over H2*Wp values (columns past W2 are discarded).
 * Every tap is added, padding included, in the order (ky, kx).
 * `work` needs cnnrt_dwconv_plane_work(...) floats.
 */
static inline ptrdiff_t cnnrt_dwconv_plane_work(ptrdiff_t H, ptrdiff_t W, ptrdiff_t kw,
                                                ptrdiff_t dw, ptrdiff_t pt, ptrdiff_t pl,
                                                ptrdiff_t pb, ptrdiff_t pr, ptrdiff_t H2)
{
    const ptrdiff_t Hp = H + pt + pb, Wp = W + pl + pr;
    return Hp * Wp + (kw - 1) * dw + 16 + H2 * Wp;
}

#define CNNRT_DWCONV_PLANE_ARGS                                                  \
    const float *plane, ptrdiff_t H, ptrdiff_t W, const float *wk, ptrdiff_t kh, \
    ptrdiff_t kw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pt, ptrdiff_t pl,        \
    ptrdiff_t pb, ptrdiff_t pr, ptrdiff_t H2, ptrdiff_t W2, float bias, int act,  \
    float *out, float *work

#define CNNRT_DWCONV_PLANE_BODY                                                  \
    const ptrdiff_t Hp = H + pt + pb, Wp = W + pl + pr;                          \
    const ptrdiff_t padded = Hp * Wp + (kw - 1) * dw + 16;                       \
    const ptrdiff_t n = H2 * Wp;                                                 \
    float *acc = work + padded;                                                  \
    ptrdiff_t i, y, ky, kx, ox;                                                  \
    for (i = 0; i < padded; i++)                                                 \
        work[i] = 0.0f;                                                          \
    for (y = 0; y < H; y++) {                                                    \
        const float *src = plane + y * W;                                        \
        float *dst = work + (y + pt) * Wp + pl;                                  \
        for (i = 0; i < W; i++)                                                  \
            dst[i] = src[i];                                                     \
    }                                                                            \
    for (i = 0; i < n; i++)                                                      \
        acc[i] = bias;                                                           \
    for (ky = 0; ky < kh; ky++)                                                  \
        for (kx = 0; kx < kw; kx++) {                                            \
            const float w = wk[ky * kw + kx];                                    \
            const float *src = work + ky * dh * Wp + kx * dw;                    \
            for (i = 0; i < n; i++)                                              \
                acc[i] += w * src[i];                                            \
        }                                                                        \
    for (y = 0; y < H2; y++) {                                                   \
        const float *src = acc + y * Wp;                                         \
        float *dst = out + y * W2;                                               \
        if (act == CNNRT_ACT_RELU) {                                             \
            for (ox = 0; ox < W2; ox++)                                          \
                dst[ox] = src[ox] > 0.0f ? src[ox] : 0.0f;                       \
        } else if (act == CNNRT_ACT_RELU6) {                                     \
            for (ox = 0; ox < W2; ox++)                                          \
                dst[ox] = src[ox] < 0.0f ? 0.0f : (src[ox] > 6.0f ? 6.0f : src[ox]); \
        } else {                                                                 \
            for (ox = 0; ox < W2; ox++)                                          \
                dst[ox] = cnnrt_act_scalar(src[ox], act);                        \
        }                                                                        \
    }

typedef void (*cnnrt_dwconv_plane_fn)(CNNRT_DWCONV_PLANE_ARGS);

static void f32_dwconv_plane_s1__scalar(CNNRT_DWCONV_PLANE_ARGS) { CNNRT_DWCONV_PLANE_BODY }
#ifdef CNNRT_X86
__attribute__((target("avx2,fma")))
static void f32_dwconv_plane_s1__avx2(CNNRT_DWCONV_PLANE_ARGS) { CNNRT_DWCONV_PLANE_BODY }
__attribute__((target("avx512f")))
static void f32_dwconv_plane_s1__avx512(CNNRT_DWCONV_PLANE_ARGS) { CNNRT_DWCONV_PLANE_BODY }
#endif

/*
 * Stride-2 depthwise convolution of a whole channel plane, by polyphase
 * decomposition: the zero-padded plane is split into its four phases (even
 * or odd rows, even or odd columns), each Hq x Wq.  Tap (ky, kx) then reads
 * phase ((ky*dh) % 2, (kx*dw) % 2) at a fixed offset, so, as for stride 1,
 * every tap is one long contiguous multiply-add over H2*Wq values computed
 * on the phase width (columns past W2 are discarded).
 */
static inline ptrdiff_t cnnrt_dwconv_plane2_work(ptrdiff_t H, ptrdiff_t W, ptrdiff_t kw,
                                                 ptrdiff_t dw, ptrdiff_t pt, ptrdiff_t pl,
                                                 ptrdiff_t pb, ptrdiff_t pr, ptrdiff_t H2)
{
    const ptrdiff_t Hq = (H + pt + pb + 1) / 2, Wq = (W + pl + pr + 1) / 2;
    return 4 * (Hq * Wq + (kw - 1) * dw + 16) + H2 * Wq;
}

#define CNNRT_DWCONV_PLANE2_BODY                                                 \
    const ptrdiff_t Hq = (H + pt + pb + 1) / 2, Wq = (W + pl + pr + 1) / 2;      \
    const ptrdiff_t phase = Hq * Wq + (kw - 1) * dw + 16;                        \
    const ptrdiff_t n = H2 * Wq;                                                 \
    float *acc = work + 4 * phase;                                               \
    ptrdiff_t i, y, ky, kx, ox, a, b;                                            \
    for (i = 0; i < 4 * phase; i++)                                              \
        work[i] = 0.0f;                                                          \
    for (y = 0; y < H; y++) {                                                    \
        const float *src = plane + y * W;                                        \
        const ptrdiff_t py = y + pt;                                             \
        float *even, *odd;                                                       \
        ptrdiff_t x = 0, px = pl;                                                \
        even = work + ((py & 1) * 2 + (pl & 1)) * phase + (py >> 1) * Wq;        \
        odd = work + ((py & 1) * 2 + ((pl + 1) & 1)) * phase + (py >> 1) * Wq;   \
        for (x = 0; x < W; x += 2, px += 2)                                      \
            even[px >> 1] = src[x];                                              \
        for (x = 1, px = pl + 1; x < W; x += 2, px += 2)                         \
            odd[px >> 1] = src[x];                                               \
    }                                                                            \
    for (i = 0; i < n; i++)                                                      \
        acc[i] = bias;                                                           \
    for (ky = 0; ky < kh; ky++)                                                  \
        for (kx = 0; kx < kw; kx++) {                                            \
            const float w = wk[ky * kw + kx];                                    \
            const ptrdiff_t ry = ky * dh, rx = kx * dw;                          \
            const float *src;                                                    \
            a = ry & 1;                                                          \
            b = rx & 1;                                                          \
            src = work + (a * 2 + b) * phase + (ry >> 1) * Wq + (rx >> 1);      \
            for (i = 0; i < n; i++)                                              \
                acc[i] += w * src[i];                                            \
        }                                                                        \
    for (y = 0; y < H2; y++) {                                                   \
        const float *src = acc + y * Wq;                                         \
        float *dst = out + y * W2;                                               \
        if (act == CNNRT_ACT_RELU) {                                             \
            for (ox = 0; ox < W2; ox++)                                          \
                dst[ox] = src[ox] > 0.0f ? src[ox] : 0.0f;                       \
        } else if (act == CNNRT_ACT_RELU6) {                                     \
            for (ox = 0; ox < W2; ox++)                                          \
                dst[ox] = src[ox] < 0.0f ? 0.0f : (src[ox] > 6.0f ? 6.0f : src[ox]); \
        } else {                                                                 \
            for (ox = 0; ox < W2; ox++)                                          \
                dst[ox] = cnnrt_act_scalar(src[ox], act);                        \
        }                                                                        \
    }

static void f32_dwconv_plane_s2__scalar(CNNRT_DWCONV_PLANE_ARGS) { CNNRT_DWCONV_PLANE2_BODY }
#ifdef CNNRT_X86
__attribute__((target("avx2,fma")))
static void f32_dwconv_plane_s2__avx2(CNNRT_DWCONV_PLANE_ARGS) { CNNRT_DWCONV_PLANE2_BODY }
__attribute__((target("avx512f")))
static void f32_dwconv_plane_s2__avx512(CNNRT_DWCONV_PLANE_ARGS) { CNNRT_DWCONV_PLANE2_BODY }
#endif

/* Floats of the zero row: columns -pl .. past the last one any block loads. */
static inline ptrdiff_t cnnrt_dw_zero_row(ptrdiff_t W, ptrdiff_t W2, ptrdiff_t kw, ptrdiff_t dw,
                                          ptrdiff_t pl, ptrdiff_t s)
{
    const ptrdiff_t last = (W2 + 15) / 16 * 16 * s + (kw - 1) * dw + 16;
    return pl + (last > W ? last : W) + 16;
}

#ifdef CNNRT_X86
/*
 * AVX-512 depthwise planes with the accumulators in registers.
 *
 * Each output vector (16 columns of one row) is computed completely in a
 * register: bias, then every tap in (ky, kx) order, then the activation,
 * and stored once.  Eight output rows are computed together (four for
 * planes of 4 to 7 rows; the last block of a plane ends at its last row and
 * may overlap the previous one), so that many independent multiply-add
 * chains hide the latency.  Taps in the vertical padding read a row of
 * zeros in `work`; taps in the horizontal padding load zeros through the
 * column masks, which are the same for every row of a block and absent for
 * blocks whose loads all lie inside the row.  The sums therefore equal the
 * padded-plane kernels' sums.  Stride 2 loads 32 consecutive input values
 * per tap and keeps the even ones with one permute.  Kernels wider than 16
 * taps use the padded-plane kernels above.
 */
#define CNNRT_DW_MAXKW 16


__attribute__((target("avx512f")))
static inline __mmask16 cnnrt_dw_span_mask(ptrdiff_t start, ptrdiff_t W, ptrdiff_t nvalid)
{
    /* lanes j < nvalid with 0 <= start + j < W */
    ptrdiff_t lo = start < 0 ? -start : 0;
    ptrdiff_t hi = W - start;
    if (hi > nvalid)
        hi = nvalid;
    if (hi <= lo)
        return 0;
    return (__mmask16)(((1u << (hi - lo)) - 1u) << lo);
}

/* Input vector of tap kx for one output row: 16 columns (stride 1) or the
 * even lanes of 32 (stride 2); `rm` is all ones for a row inside the input,
 * zero for a row in the padding (the tap then adds zeros). */
#define CNNRT_DW_LOAD(V, ROW, RM)                                                   \
    if (s == 1) {                                                                   \
        V = _mm512_maskz_loadu_ps(m0[kx] & (RM), (ROW) + xstart[kx]);               \
    } else {                                                                        \
        const __m512 lo_ = _mm512_maskz_loadu_ps(m0[kx] & (RM), (ROW) + xstart[kx]); \
        const __m512 hi_ = _mm512_maskz_loadu_ps(m1[kx] & (RM), (ROW) + xstart[kx] + 16); \
        V = _mm512_permutex2var_ps(lo_, even, hi_);                                 \
    }

__attribute__((target("avx512f"), always_inline))
static inline __m512 cnnrt_dw_finish_avx512(__m512 v, int act)
{
    if (act == CNNRT_ACT_RELU)
        return _mm512_max_ps(v, _mm512_setzero_ps());
    if (act == CNNRT_ACT_RELU6)
        return _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(6.0f));
    return v;
}

__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_dw_store_avx512(__m512 v, int act, float *dst, __mmask16 omask,
                                         ptrdiff_t nvalid)
{
    _mm512_mask_storeu_ps(dst, omask, cnnrt_dw_finish_avx512(v, act));
    if (act != CNNRT_ACT_NONE && act != CNNRT_ACT_RELU && act != CNNRT_ACT_RELU6) {
        ptrdiff_t j;
        for (j = 0; j < nvalid; j++)
            dst[j] = cnnrt_act_scalar(dst[j], act);
    }
}

/* The input row of output row oy for tap row ky, and its load mask. */
#define CNNRT_DW_ROW(P, RM, OY)                                                     \
    {                                                                               \
        const ptrdiff_t iy_ = (OY) * s - pt + ky * dh;                              \
        const int in_ = iy_ >= 0 && iy_ < H;                                        \
        P = plane + (in_ ? iy_ : 0) * W;                                            \
        RM = in_ ? (__mmask16)0xFFFF : (__mmask16)0;                                \
    }

/* R consecutive output rows (R = 4 or 8) of one column block, from row oy:
 * R accumulators, every tap in (ky, kx) order.  Input rows in the vertical
 * padding read `zrow`, a row of zeros, so only the columns need masks, and
 * those are the same for every row: with `cols_in` (every load inside the
 * row) none at all. */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_dw_rows_avx512(const float *plane, ptrdiff_t H, ptrdiff_t W,
                                        const float *wk, ptrdiff_t kh, ptrdiff_t kw,
                                        const ptrdiff_t s, ptrdiff_t dh, ptrdiff_t pt,
                                        ptrdiff_t oy, const int R, int cols_in,
                                        const ptrdiff_t *xstart, const __mmask16 *m0,
                                        const __mmask16 *m1, const float *zrow, __m512 bv,
                                        int act, float *out, ptrdiff_t W2, __mmask16 omask,
                                        ptrdiff_t nvalid)
{
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    __m512 acc[8];
    const float *p[8];
    ptrdiff_t ky, kx;
    int r;
#pragma GCC unroll 8
    for (r = 0; r < R; r++)
        acc[r] = bv;
    for (ky = 0; ky < kh; ky++) {
#pragma GCC unroll 8
        for (r = 0; r < R; r++) {
            const ptrdiff_t iy = (oy + r) * s - pt + ky * dh;
            p[r] = iy >= 0 && iy < H ? plane + iy * W : zrow;
        }
        for (kx = 0; kx < kw; kx++) {
            const __m512 wv = _mm512_set1_ps(wk[ky * kw + kx]);
            const __mmask16 k0 = m0[kx], k1 = m1[kx];
            const ptrdiff_t x0 = xstart[kx];
            if (cols_in) {
#pragma GCC unroll 8
                for (r = 0; r < R; r++) {
                    const __m512 v = s == 1 ? _mm512_loadu_ps(p[r] + x0)
                        : _mm512_permutex2var_ps(_mm512_loadu_ps(p[r] + x0), even,
                                                 _mm512_loadu_ps(p[r] + x0 + 16));
                    acc[r] = _mm512_fmadd_ps(wv, v, acc[r]);
                }
            } else {
#pragma GCC unroll 8
                for (r = 0; r < R; r++) {
                    const __m512 v = s == 1 ? _mm512_maskz_loadu_ps(k0, p[r] + x0)
                        : _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(k0, p[r] + x0), even,
                                                 _mm512_maskz_loadu_ps(k1, p[r] + x0 + 16));
                    acc[r] = _mm512_fmadd_ps(wv, v, acc[r]);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (r = 0; r < R; r++)
        cnnrt_dw_store_avx512(acc[r], act, out + r * W2, omask, nvalid);
}

/* Stride S (1 or 2), K x K taps (K = 3 or 5), no dilation: R consecutive
 * output rows (R = 8 or 4) of one column block, from row oy.  Each of the
 * S*(R-1) + K input rows gathers its K tap vectors once (columns from
 * xstart[kx]: shifted by one column at stride 1, the even lanes of 32 at
 * stride 2) and feeds every output row that reads it; input rows are visited
 * in order, so each accumulator still receives its taps in (ky, kx) order.
 * `full`: no column of the block leaves the row (no masks).  w3: the taps
 * broadcast, when K is 3. */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_dw_rows_k_avx512(const float *plane, ptrdiff_t H, ptrdiff_t W,
                                          const float *wk, const __m512 *w3, const int K,
                                          const ptrdiff_t S, ptrdiff_t pt, ptrdiff_t oy,
                                          const int R, const int full, const ptrdiff_t *xstart,
                                          const __mmask16 *m0, const __mmask16 *m1,
                                          const float *zrow, __m512 bv, int act, float *out,
                                          ptrdiff_t W2, __mmask16 omask, ptrdiff_t nvalid)
{
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    __m512 acc[8];
    int r, i, ky, kx;
#pragma GCC unroll 8
    for (r = 0; r < R; r++)
        acc[r] = bv;
#pragma GCC unroll 20
    for (i = 0; i < S * (R - 1) + K; i++) {
        const ptrdiff_t iy = S * oy - pt + i;
        const float *row = iy >= 0 && iy < H ? plane + iy * W : zrow;
        __m512 v[5];
#pragma GCC unroll 5
        for (kx = 0; kx < K; kx++) {
            const float *q = row + xstart[kx];
            if (S == 1)
                v[kx] = full ? _mm512_loadu_ps(q) : _mm512_maskz_loadu_ps(m0[kx], q);
            else
                v[kx] = full ? _mm512_permutex2var_ps(_mm512_loadu_ps(q), even, _mm512_loadu_ps(q + 16))
                             : _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m0[kx], q), even,
                                                      _mm512_maskz_loadu_ps(m1[kx], q + 16));
        }
#pragma GCC unroll 5
        for (ky = 0; ky < K; ky++) {
            r = (i - ky) / (int)S;
            if (i < ky || (i - ky) % (int)S != 0 || r >= R)
                continue;
#pragma GCC unroll 5
            for (kx = 0; kx < K; kx++)
                acc[r] = _mm512_fmadd_ps(K == 3 ? w3[ky * 3 + kx] : _mm512_set1_ps(wk[ky * K + kx]),
                                         v[kx], acc[r]);
        }
    }
#pragma GCC unroll 8
    for (r = 0; r < R; r++)
        cnnrt_dw_store_avx512(acc[r], act, out + r * W2, omask, nvalid);
}

__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_dw_plane_avx512(const float *plane, ptrdiff_t H, ptrdiff_t W,
                                         const float *wk, ptrdiff_t kh, ptrdiff_t kw,
                                         const ptrdiff_t s, ptrdiff_t dh, ptrdiff_t dw,
                                         ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t H2,
                                         ptrdiff_t W2, float bias, int act, float *out,
                                         float *work)
{
    /* a row of zeros for the vertical padding, readable from column -pl to
     * past the last column any block loads */
    const ptrdiff_t zlen = cnnrt_dw_zero_row(W, W2, kw, dw, pl, s);
    const float *zrow = work + pl;
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512 bv = _mm512_set1_ps(bias);
    ptrdiff_t xstart[CNNRT_DW_MAXKW];
    __mmask16 m0[CNNRT_DW_MAXKW], m1[CNNRT_DW_MAXKW];
    ptrdiff_t ox0, oy, kx, ky;
    int cols_in;
    memset(work, 0, zlen * sizeof(float));
    /* blocks of eight (or four) output rows, outermost, so the input is read
     * row after row; the last block ends at the last row and may overlap the
     * one before (the overlapping rows get the same values).  Maps under four
     * rows go one row at a time. */
    {
        const ptrdiff_t R = H2 >= 8 ? 8 : H2 >= 4 ? 4 : 1;
        /* 3x3 and 5x5 taps: each input row loaded once per block */
        const int rows_k = dh == 1 && dw == 1 && kh == kw && (kw == 3 || kw == 5);
        __m512 w3[9];
        for (kx = 0; kx < 9; kx++)
            w3[kx] = _mm512_set1_ps(kh == 3 && kw == 3 ? wk[kx] : 0.0f);
        ptrdiff_t oyb;
        for (oyb = 0; oyb < H2; oyb += R) {
            const ptrdiff_t o = oyb + R <= H2 ? oyb : H2 - R;
            for (ox0 = 0; ox0 < W2; ox0 += 16) {
                const ptrdiff_t nvalid = W2 - ox0 < 16 ? W2 - ox0 : 16;
                const __mmask16 omask = (__mmask16)(nvalid >= 16 ? 0xFFFFu : (1u << nvalid) - 1u);
                for (kx = 0; kx < kw; kx++) {
                    const ptrdiff_t start = ox0 * s - pl + kx * dw;
                    xstart[kx] = start;
                    if (s == 1) {
                        m0[kx] = cnnrt_dw_span_mask(start, W, nvalid);
                        m1[kx] = 0;
                    } else {
                        /* input lanes 0 .. 2*nvalid-2 feed the outputs (even lanes) */
                        const ptrdiff_t span = 2 * nvalid - 1;
                        m0[kx] = cnnrt_dw_span_mask(start, W, span < 16 ? span : 16);
                        m1[kx] = span > 16 ? cnnrt_dw_span_mask(start + 16, W, span - 16) : 0;
                    }
                }
                /* every tap of this column block reads full vectors inside the row */
                cols_in = nvalid == 16 && xstart[0] >= 0 && xstart[kw - 1] + 16 * s <= W;
                if (rows_k && R >= 4) {
#define CNNRT_DW_K(K_, R_)                                                              \
                    if (cols_in)                                                            \
                        cnnrt_dw_rows_k_avx512(plane, H, W, wk, w3, K_, s, pt, o, R_, 1,    \
                                               xstart, m0, m1, zrow, bv, act,               \
                                               out + o * W2 + ox0, W2, omask, nvalid);      \
                    else                                                                    \
                        cnnrt_dw_rows_k_avx512(plane, H, W, wk, w3, K_, s, pt, o, R_, 0,    \
                                               xstart, m0, m1, zrow, bv, act,               \
                                               out + o * W2 + ox0, W2, omask, nvalid);
                    if (kw == 3 && R == 8) {
                        CNNRT_DW_K(3, 8)
                    } else if (kw == 3) {
                        CNNRT_DW_K(3, 4)
                    } else if (R == 8) {
                        CNNRT_DW_K(5, 8)
                    } else {
                        CNNRT_DW_K(5, 4)
                    }
#undef CNNRT_DW_K
                } else if (R == 8) {
                    cnnrt_dw_rows_avx512(plane, H, W, wk, kh, kw, s, dh, pt, o, 8, cols_in,
                                         xstart, m0, m1, zrow, bv, act, out + o * W2 + ox0, W2,
                                         omask, nvalid);
                } else if (R == 4) {
                    cnnrt_dw_rows_avx512(plane, H, W, wk, kh, kw, s, dh, pt, o, 4, cols_in,
                                         xstart, m0, m1, zrow, bv, act, out + o * W2 + ox0, W2,
                                         omask, nvalid);
                } else {
                    __m512 a0 = bv;
                    oy = o;
                    for (ky = 0; ky < kh; ky++) {
                        const float *p0;
                        __mmask16 r0;
                        CNNRT_DW_ROW(p0, r0, oy)
                        for (kx = 0; kx < kw; kx++) {
                            const __m512 wv = _mm512_set1_ps(wk[ky * kw + kx]);
                            __m512 v0;
                            CNNRT_DW_LOAD(v0, p0, r0)
                            a0 = _mm512_fmadd_ps(wv, v0, a0);
                        }
                    }
                    cnnrt_dw_store_avx512(a0, act, out + oy * W2 + ox0, omask, nvalid);
                }
            }
        }
    }
}
#undef CNNRT_DW_LOAD
#undef CNNRT_DW_ROW

__attribute__((target("avx512f")))
static void f32_dwconv_direct_s1__avx512(CNNRT_DWCONV_PLANE_ARGS)
{
    if (kw > CNNRT_DW_MAXKW) {
        f32_dwconv_plane_s1__avx512(plane, H, W, wk, kh, kw, dh, dw, pt, pl, pb, pr,
                                    H2, W2, bias, act, out, work);
        return;
    }
    cnnrt_dw_plane_avx512(plane, H, W, wk, kh, kw, 1, dh, dw, pt, pl, H2, W2, bias, act, out,
                          work);
}

__attribute__((target("avx512f")))
static void f32_dwconv_direct_s2__avx512(CNNRT_DWCONV_PLANE_ARGS)
{
    if (kw > CNNRT_DW_MAXKW) {
        f32_dwconv_plane_s2__avx512(plane, H, W, wk, kh, kw, dh, dw, pt, pl, pb, pr,
                                    H2, W2, bias, act, out, work);
        return;
    }
    cnnrt_dw_plane_avx512(plane, H, W, wk, kh, kw, 2, dh, dw, pt, pl, H2, W2, bias, act, out,
                          work);
}
#endif

/*
 * Depthwise convolution of 16 channels at once (one input channel per
 * output channel), the channels in the lanes of a vector.  A band of input
 * rows of the group's 16 planes is transposed into `work` as [row][column]
 * [16] with its zero padding, so every tap of every output position is one
 * aligned vector load and one multiply-add with the tap's 16 weights; eight
 * output positions of a row are computed together.  The band's outputs, [row][column]
 * [16], are transposed back into the 16 output planes.  Per output: bias,
 * then the taps in (ky, kx) order, then the activation, exactly as the
 * plane kernels.
 *
 * wk16: the group's weights as [kh*kw][16]; bias16: 16 biases (zeros if the
 * layer has none); nc: channels in the group (the rest of the lanes are
 * computed on zeros and not stored).  `work` needs cnnrt_dw16_work() floats.
 */
#define CNNRT_DW16_BAND_FLOATS 32768

static inline ptrdiff_t cnnrt_dw16_band_rows(ptrdiff_t W, ptrdiff_t kh, ptrdiff_t sh, ptrdiff_t dh,
                                             ptrdiff_t pl, ptrdiff_t pr, ptrdiff_t H2)
{
    /* output rows per band: their input rows fit the band budget (at least one) */
    const ptrdiff_t row = (W + pl + pr) * 16;
    const ptrdiff_t in_rows = CNNRT_DW16_BAND_FLOATS / row;
    ptrdiff_t br = (in_rows - (kh - 1) * dh - 1) / sh + 1;
    if (br < 1)
        br = 1;
    return br < H2 ? br : H2;
}

static inline ptrdiff_t cnnrt_dw16_work(ptrdiff_t W, ptrdiff_t kh, ptrdiff_t sh, ptrdiff_t dh,
                                        ptrdiff_t pl, ptrdiff_t pr, ptrdiff_t H2, ptrdiff_t W2)
{
    const ptrdiff_t br = cnnrt_dw16_band_rows(W, kh, sh, dh, pl, pr, H2);
    const ptrdiff_t in_rows = (br - 1) * sh + (kh - 1) * dh + 1;
    return in_rows * (W + pl + pr) * 16 + br * W2 * 16 + 16;
}

#ifdef CNNRT_X86
/* R output positions (R = 8, 4 or 1) of one row from position ox, 16
 * channels each: R accumulators, taps in (ky, kx) order. */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_dw16_block(const float *rbase, const float *wk16, __m512 bv,
                                    ptrdiff_t ox, const int R, ptrdiff_t kh, ptrdiff_t kw,
                                    ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Wp,
                                    int act, float *orow)
{
    __m512 acc[8];
    ptrdiff_t ky, kx;
    int r;
#pragma GCC unroll 8
    for (r = 0; r < R; r++)
        acc[r] = bv;
    for (ky = 0; ky < kh; ky++) {
        const float *rr = rbase + ky * dh * Wp * 16 + ox * sw * 16;
        for (kx = 0; kx < kw; kx++) {
            const __m512 wv = _mm512_loadu_ps(wk16 + (ky * kw + kx) * 16);
            const float *pp = rr + kx * dw * 16;
#pragma GCC unroll 8
            for (r = 0; r < R; r++)
                acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(pp + r * sw * 16), acc[r]);
        }
    }
#pragma GCC unroll 8
    for (r = 0; r < R; r++)
        _mm512_storeu_ps(orow + (ox + r) * 16, cnnrt_dw_finish_avx512(acc[r], act));
}

__attribute__((target("avx512f")))
static void f32_dwconv_c16__avx512(const float *x, ptrdiff_t H, ptrdiff_t W, const float *wk16,
                                   const float *bias16, ptrdiff_t nc, ptrdiff_t kh, ptrdiff_t kw,
                                   ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,
                                   ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t pr, ptrdiff_t H2,
                                   ptrdiff_t W2, int act, float *y, float *work)
{
    const ptrdiff_t Wp = W + pl + pr;
    const ptrdiff_t br = cnnrt_dw16_band_rows(W, kh, sh, dh, pl, pr, H2);
    const ptrdiff_t HW = H * W, P2 = H2 * W2;
    float *in = work;
    float *ob = work + ((br - 1) * sh + (kh - 1) * dh + 1) * Wp * 16;
    const __m512 bv = _mm512_loadu_ps(bias16);
    ptrdiff_t oy0, oy1, iy0, iy1, iy, ix0, oy, ox, j, c;
    for (oy0 = 0; oy0 < H2; oy0 = oy1) {
        oy1 = oy0 + br < H2 ? oy0 + br : H2;
        iy0 = oy0 * sh - pt;                          /* first padded input row - pt */
        iy1 = (oy1 - 1) * sh - pt + (kh - 1) * dh + 1;
        /* input rows iy0 .. iy1-1 as [row][Wp][16], zeros outside the image */
        for (iy = iy0; iy < iy1; iy++) {
            float *row = in + (iy - iy0) * Wp * 16;
            if (iy < 0 || iy >= H) {
                memset(row, 0, Wp * 16 * sizeof(float));
                continue;
            }
            memset(row, 0, pl * 16 * sizeof(float));
            memset(row + (pl + W) * 16, 0, pr * 16 * sizeof(float));
            for (ix0 = 0; ix0 < W; ix0 += 16) {
                const ptrdiff_t n = W - ix0 < 16 ? W - ix0 : 16;
                const __mmask16 m = (__mmask16)(n >= 16 ? 0xFFFFu : (1u << n) - 1u);
                __m512 r[16];
                for (c = 0; c < 16; c++)
                    r[c] = c < nc ? _mm512_maskz_loadu_ps(m, x + c * HW + iy * W + ix0)
                                  : _mm512_setzero_ps();
                cnnrt_transpose16_avx512(r);
                for (j = 0; j < n; j++)
                    _mm512_storeu_ps(row + (pl + ix0 + j) * 16, r[j]);
            }
        }
        /* the band's outputs, eight (or four) positions of a row at a time;
         * the last block of a row ends at its last position and may overlap
         * the one before (overlapping positions get the same values) */
        for (oy = oy0; oy < oy1; oy++) {
            const float *rbase = in + (oy * sh - pt - iy0) * Wp * 16;
            float *orow = ob + (oy - oy0) * W2 * 16;
            if (W2 >= 8) {
                for (ox = 0; ox < W2; ox += 8)
                    cnnrt_dw16_block(rbase, wk16, bv, ox + 8 <= W2 ? ox : W2 - 8, 8, kh, kw, sw,
                                     dh, dw, Wp, act, orow);
            } else if (W2 >= 4) {
                cnnrt_dw16_block(rbase, wk16, bv, 0, 4, kh, kw, sw, dh, dw, Wp, act, orow);
                cnnrt_dw16_block(rbase, wk16, bv, W2 - 4, 4, kh, kw, sw, dh, dw, Wp, act, orow);
            } else {
                for (ox = 0; ox < W2; ox++)
                    cnnrt_dw16_block(rbase, wk16, bv, ox, 1, kh, kw, sw, dh, dw, Wp, act, orow);
            }
        }
        /* back to the 16 output planes */
        for (oy = oy0; oy < oy1; oy++) {
            const float *orow = ob + (oy - oy0) * W2 * 16;
            for (ox = 0; ox < W2; ox += 16) {
                const ptrdiff_t n = W2 - ox < 16 ? W2 - ox : 16;
                const __mmask16 m = (__mmask16)(n >= 16 ? 0xFFFFu : (1u << n) - 1u);
                __m512 r[16];
                for (j = 0; j < 16; j++)
                    r[j] = j < n ? _mm512_loadu_ps(orow + (ox + j) * 16) : _mm512_setzero_ps();
                cnnrt_transpose16_avx512(r);
                for (c = 0; c < nc; c++) {
                    float *dst = y + c * P2 + oy * W2 + ox;
                    _mm512_mask_storeu_ps(dst, m, r[c]);
                    if (act == CNNRT_ACT_SIGMOID || act == CNNRT_ACT_TANH)
                        for (j = 0; j < n; j++)
                            dst[j] = cnnrt_act_scalar(dst[j], act);
                }
            }
        }
    }
}
#endif

typedef void (*cnnrt_dw16_fn)(const float *x, ptrdiff_t H, ptrdiff_t W, const float *wk16,
                              const float *bias16, ptrdiff_t nc, ptrdiff_t kh, ptrdiff_t kw,
                              ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pt,
                              ptrdiff_t pl, ptrdiff_t pr, ptrdiff_t H2, ptrdiff_t W2, int act,
                              float *y, float *work);

/* The 16-channel kernel for this ISA, or NULL (then planes one by one). */
static cnnrt_dw16_fn cnnrt_dw16_select(int isa)
{
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512))
        return f32_dwconv_c16__avx512;
#endif
    (void)isa;
    return NULL;
}

static cnnrt_dwconv_plane_fn cnnrt_dwconv_plane_select(int isa)
{
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512))
        return f32_dwconv_direct_s1__avx512;
    if (isa == CNNRT_ISA_AVX2 && cnnrt_isa_supported(CNNRT_ISA_AVX2))
        return f32_dwconv_plane_s1__avx2;
#endif
    (void)isa;
    return f32_dwconv_plane_s1__scalar;
}

static cnnrt_dwconv_plane_fn cnnrt_dwconv_plane2_select(int isa)
{
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512))
        return f32_dwconv_direct_s2__avx512;
    if (isa == CNNRT_ISA_AVX2 && cnnrt_isa_supported(CNNRT_ISA_AVX2))
        return f32_dwconv_plane_s2__avx2;
#endif
    (void)isa;
    return f32_dwconv_plane_s2__scalar;
}

#endif /* CNNRT_F32_DWCONV_H */
