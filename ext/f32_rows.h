/*
 * f32 row kernels for cnnrt: dot products (dense layers) and pooling rows.
 *
 * Each body is written once and compiled for every ISA with target
 * attributes; the compiler vectorises the inner loops.  Summation orders
 * are fixed by the code (16 interleaved partial sums for dot products,
 * window taps row by row for pooling), never by the thread count.
 */
#ifndef CNNRT_F32_ROWS_H
#define CNNRT_F32_ROWS_H

#include "f32_gemm.h"

/* ------------------------------------------------------------------ dot */

typedef float (*cnnrt_dot_fn)(const float *a, const float *b, ptrdiff_t n);

#define CNNRT_DOT_BODY                                                         \
    float acc[16];                                                             \
    ptrdiff_t i, j;                                                            \
    const ptrdiff_t n16 = n - n % 16;                                          \
    for (j = 0; j < 16; j++)                                                   \
        acc[j] = 0.0f;                                                         \
    for (i = 0; i < n16; i += 16)                                              \
        for (j = 0; j < 16; j++)                                               \
            acc[j] += a[i + j] * b[i + j];                                     \
    for (i = n16; i < n; i++)                                                  \
        acc[i - n16] += a[i] * b[i];                                           \
    for (j = 0; j < 8; j++)                                                    \
        acc[j] += acc[j + 8];                                                  \
    for (j = 0; j < 4; j++)                                                    \
        acc[j] += acc[j + 4];                                                  \
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);

static float f32_dot__scalar(const float *a, const float *b, ptrdiff_t n) { CNNRT_DOT_BODY }
#ifdef CNNRT_X86
__attribute__((target("avx2,fma")))
static float f32_dot__avx2(const float *a, const float *b, ptrdiff_t n) { CNNRT_DOT_BODY }
/* AVX-512: four independent accumulators over blocks of 64 (a dot product
 * is a chain of dependent adds otherwise), then blocks of 16, then a masked
 * tail; combined in a fixed order. */
__attribute__((target("avx512f")))
static float f32_dot__avx512(const float *a, const float *b, ptrdiff_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    ptrdiff_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}
#endif

/* -------------------------------------------------------------- pooling */

enum { CNNRT_POOL_MAX = 0, CNNRT_POOL_AVG = 1, CNNRT_POOL_L2 = 2 };

/*
 * One output row `oy` of one channel plane.  Padding cells never win a max
 * and add nothing to a sum; an average divides by the whole window inside
 * the padded extent (count_include_pad) or by the real cells only.
 */
typedef void (*cnnrt_pool_row_fn)(const float *plane, ptrdiff_t H, ptrdiff_t W,
                                  ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                  ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t pb, ptrdiff_t pr,
                                  ptrdiff_t oy, ptrdiff_t W2, int kind, int include_pad,
                                  float *out);

#define CNNRT_POOL_ROW_ARGS                                                      \
    const float *plane, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t kw,    \
    ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t pb,        \
    ptrdiff_t pr, ptrdiff_t oy, ptrdiff_t W2, int kind, int include_pad,         \
    float *out

#define CNNRT_POOL_ROW_BODY                                                      \
    ptrdiff_t ox, ky, kx;                                                        \
    const ptrdiff_t y0 = oy * sh - pt;                                           \
    const ptrdiff_t ylo = y0 < 0 ? 0 : y0;                                       \
    const ptrdiff_t yhi = y0 + kh > H ? H : y0 + kh;                             \
    const float init = kind == CNNRT_POOL_MAX ? -INFINITY : 0.0f;                \
    for (ox = 0; ox < W2; ox++)                                                  \
        out[ox] = init;                                                          \
    for (ky = ylo; ky < yhi; ky++) {                                             \
        const float *row = plane + ky * W;                                       \
        for (kx = 0; kx < kw; kx++) {                                            \
            const ptrdiff_t ix0 = kx - pl;                                       \
            ptrdiff_t lo = ix0 >= 0 ? 0 : (-ix0 + sw - 1) / sw;                  \
            ptrdiff_t hi = W - 1 - ix0 < 0 ? 0 : (W - 1 - ix0) / sw + 1;         \
            const float *src = row + ix0;                                        \
            if (hi > W2)                                                         \
                hi = W2;                                                         \
            if (kind == CNNRT_POOL_MAX) {                                        \
                if (sw == 1) {                                                   \
                    for (ox = lo; ox < hi; ox++)                                 \
                        out[ox] = src[ox] > out[ox] ? src[ox] : out[ox];         \
                } else if (sw == 2) {                                            \
                    for (ox = lo; ox < hi; ox++)                                 \
                        out[ox] = src[2 * ox] > out[ox] ? src[2 * ox] : out[ox]; \
                } else {                                                         \
                    for (ox = lo; ox < hi; ox++) {                               \
                        const float v = src[ox * sw];                            \
                        out[ox] = v > out[ox] ? v : out[ox];                     \
                    }                                                            \
                }                                                                \
            } else if (kind == CNNRT_POOL_AVG) {                                 \
                if (sw == 1) {                                                   \
                    for (ox = lo; ox < hi; ox++)                                 \
                        out[ox] += src[ox];                                      \
                } else {                                                         \
                    for (ox = lo; ox < hi; ox++)                                 \
                        out[ox] += src[ox * sw];                                 \
                }                                                                \
            } else {                                                             \
                for (ox = lo; ox < hi; ox++) {                                   \
                    const float v = src[ox * sw];                                \
                    out[ox] += v * v;                                            \
                }                                                                \
            }                                                                    \
        }                                                                        \
    }                                                                            \
    if (kind == CNNRT_POOL_AVG) {                                                \
        const ptrdiff_t rows = include_pad                                       \
            ? ((y0 + kh < H + pb ? y0 + kh : H + pb) - y0) : (yhi - ylo);        \
        for (ox = 0; ox < W2; ox++) {                                            \
            const ptrdiff_t x0 = ox * sw - pl;                                   \
            ptrdiff_t cols;                                                      \
            if (include_pad) {                                                   \
                cols = (x0 + kw < W + pr ? x0 + kw : W + pr) - x0;               \
            } else {                                                             \
                cols = (x0 + kw > W ? W : x0 + kw) - (x0 < 0 ? 0 : x0);          \
            }                                                                    \
            out[ox] = out[ox] / (float)(rows * cols);                            \
        }                                                                        \
    } else if (kind == CNNRT_POOL_L2) {                                          \
        for (ox = 0; ox < W2; ox++)                                              \
            out[ox] = sqrtf(out[ox]);                                            \
    }

static void f32_pool_row__scalar(CNNRT_POOL_ROW_ARGS) { CNNRT_POOL_ROW_BODY }
#ifdef CNNRT_X86
__attribute__((target("avx2,fma")))
static void f32_pool_row__avx2(CNNRT_POOL_ROW_ARGS) { CNNRT_POOL_ROW_BODY }
__attribute__((target("avx512f")))
static void f32_pool_row__avx512(CNNRT_POOL_ROW_ARGS) { CNNRT_POOL_ROW_BODY }

/* lanes j < n with 0 <= start + step*j < W, for step 1 or 2 */
__attribute__((target("avx512f"), always_inline))
static inline __mmask16 cnnrt_pool_lanes(ptrdiff_t start, ptrdiff_t step, ptrdiff_t W, ptrdiff_t n)
{
    ptrdiff_t lo = start >= 0 ? 0 : (-start + step - 1) / step;
    ptrdiff_t hi = W - 1 - start < 0 ? 0 : (W - 1 - start) / step + 1;
    if (hi > n)
        hi = n;
    if (hi <= lo)
        return 0;
    return (__mmask16)(((1u << (hi - lo)) - 1u) << lo);
}

/* Max pooling of a whole plane with stride 1 or 2 and kernels up to 16
 * wide and CNNRT_POOL_HROWS tall: 16 outputs per vector, separably.  For a
 * column block and a band of output rows, every input row the band reads is
 * first reduced over its kw taps (one load at stride 1, the even lanes of
 * two at stride 2, masked at the borders), once, however many output rows
 * read it; each output row then takes the max of its kh reduced rows.  Every
 * max is max(v, acc), which keeps acc unless v is greater (so where v is
 * NaN, or equal, as for -0.0 and 0.0): both ways the result is the first
 * greatest value of the window in (ky, kx) order, bit for bit what the
 * scalar body computes.  Returns 0 (nothing done) for other shapes, which
 * then go row by row. */
#define CNNRT_POOL_MAXKW 16
#define CNNRT_POOL_HROWS 64

/* One input row reduced over KW taps (KW a constant where inlined with one);
 * taps from column start[kx] of `row`, lanes use[kx]. */
__attribute__((target("avx512f"), always_inline))
static inline __m512 cnnrt_maxpool_hrow_avx512(const float *row, const ptrdiff_t KW,
                                               const ptrdiff_t SW, const ptrdiff_t *start,
                                               const __mmask16 *use, const __mmask16 *mlo,
                                               const __mmask16 *mhi, int full)
{
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    __m512 acc = _mm512_set1_ps(-INFINITY);
    ptrdiff_t kx;
#pragma GCC unroll 4
    for (kx = 0; kx < KW; kx++) {
        const float *src = row + start[kx];
        __m512 v;
        if (SW == 1)
            v = full ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(mlo[kx], src);
        else if (full)
            v = _mm512_permutex2var_ps(_mm512_loadu_ps(src), even, _mm512_loadu_ps(src + 16));
        else
            v = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(mlo[kx], src), even,
                                       _mm512_maskz_loadu_ps(mhi[kx], src + 16));
        acc = full ? _mm512_max_ps(v, acc) : _mm512_mask_max_ps(acc, use[kx], v, acc);
    }
    return acc;
}

/* Input rows r0 .. r1-1 of a column block reduced into h[0 .. r1-r0-1]. */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_maxpool_hrows_avx512(const float *plane, ptrdiff_t W, ptrdiff_t r0,
                                              ptrdiff_t r1, const ptrdiff_t KW, const ptrdiff_t SW,
                                              const ptrdiff_t *start, const __mmask16 *use,
                                              const __mmask16 *mlo, const __mmask16 *mhi,
                                              int full, __m512 *h)
{
    ptrdiff_t y;
    for (y = r0; y < r1; y++)
        h[y - r0] = cnnrt_maxpool_hrow_avx512(plane + y * W, KW, SW, start, use, mlo, mhi, full);
}

__attribute__((target("avx512f")))
static int f32_maxpool_plane__avx512(const float *plane, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                     ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt,
                                     ptrdiff_t pl, ptrdiff_t H2, ptrdiff_t W2, float *out)
{
    __m512 h[CNNRT_POOL_HROWS];
    __mmask16 use[CNNRT_POOL_MAXKW], mlo[CNNRT_POOL_MAXKW], mhi[CNNRT_POOL_MAXKW];
    ptrdiff_t start[CNNRT_POOL_MAXKW];
    ptrdiff_t ox0, o0, o1, oy, ky, kx, band;
    if ((sw != 1 && sw != 2) || kw > CNNRT_POOL_MAXKW || kh > CNNRT_POOL_HROWS)
        return 0;
    /* output rows per band: the input rows they read fit in h */
    band = (CNNRT_POOL_HROWS - kh) / sh + 1;
    for (ox0 = 0; ox0 < W2; ox0 += 16) {
        const ptrdiff_t n = W2 - ox0 < 16 ? W2 - ox0 : 16;
        const __mmask16 omask = cnnrt_cols_mask((size_t)n, 0);
        int full = 1;
        for (kx = 0; kx < kw; kx++) {
            const ptrdiff_t st = ox0 * sw - pl + kx;
            start[kx] = st;
            use[kx] = cnnrt_pool_lanes(st, sw, W, n);
            mlo[kx] = cnnrt_pool_lanes(st, 1, W, 16);
            mhi[kx] = cnnrt_pool_lanes(st + 16, 1, W, 16);
            full &= use[kx] == 0xFFFF && st >= 0 && st + 16 * sw <= W;
        }
        for (o0 = 0; o0 < H2; o0 = o1) {
            /* input rows r0 .. r1-1 (inside the plane) feed output rows o0 .. o1-1 */
            ptrdiff_t r0, r1;
            o1 = o0 + band < H2 ? o0 + band : H2;
            r0 = o0 * sh - pt < 0 ? 0 : o0 * sh - pt;
            r1 = (o1 - 1) * sh - pt + kh > H ? H : (o1 - 1) * sh - pt + kh;
            if (r1 > r0) {
#define CNNRT_HROWS(KW, SW, FULL) \
                cnnrt_maxpool_hrows_avx512(plane, W, r0, r1, KW, SW, start, use, mlo, mhi, FULL, h)
                if (kw == 2 && sw == 2 && full)
                    CNNRT_HROWS(2, 2, 1);
                else if (kw == 3 && sw == 2 && full)
                    CNNRT_HROWS(3, 2, 1);
                else if (kw == 3 && sw == 1 && full)
                    CNNRT_HROWS(3, 1, 1);
                else if (sw == 2)
                    CNNRT_HROWS(kw, 2, 0);
                else
                    CNNRT_HROWS(kw, 1, 0);
#undef CNNRT_HROWS
            }
            for (oy = o0; oy < o1; oy++) {
                const ptrdiff_t y0 = oy * sh - pt;
                const ptrdiff_t ylo = y0 < 0 ? 0 : y0;
                const ptrdiff_t yhi = y0 + kh > H ? H : y0 + kh;
                __m512 acc = _mm512_set1_ps(-INFINITY);
                for (ky = ylo; ky < yhi; ky++)
                    acc = _mm512_max_ps(h[ky - r0], acc);
                _mm512_mask_storeu_ps(out + oy * W2 + ox0, omask, acc);
            }
        }
    }
    return 1;
}
#endif

typedef int (*cnnrt_maxpool_plane_fn)(const float *plane, ptrdiff_t H, ptrdiff_t W,
                                      ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                      ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t H2, ptrdiff_t W2,
                                      float *out);

static int f32_maxpool_plane__none(const float *plane, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                   ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt,
                                   ptrdiff_t pl, ptrdiff_t H2, ptrdiff_t W2, float *out)
{
    (void)plane; (void)H; (void)W; (void)kh; (void)kw; (void)sh; (void)sw; (void)pt;
    (void)pl; (void)H2; (void)W2; (void)out;
    return 0;
}

/* ------------------------------------------------------ input check */

/* How many of n floats are NaN or infinite (every exponent bit set); n is at
 * most a chunk of the input, well under 2^32. */
typedef ptrdiff_t (*cnnrt_nonfinite_fn)(const float *x, ptrdiff_t n);

#define CNNRT_NONFINITE_BODY                                                   \
    const unsigned int *bits = (const unsigned int *)x;                        \
    unsigned int bad = 0;                                                      \
    ptrdiff_t i;                                                               \
    for (i = 0; i < n; i++)                                                    \
        bad += (bits[i] & 0x7f800000u) == 0x7f800000u;                         \
    return (ptrdiff_t)bad;

static ptrdiff_t f32_nonfinite__scalar(const float *x, ptrdiff_t n)
{
    CNNRT_NONFINITE_BODY
}

#ifdef CNNRT_X86
__attribute__((target("avx2")))
static ptrdiff_t f32_nonfinite__avx2(const float *x, ptrdiff_t n)
{
    CNNRT_NONFINITE_BODY
}

__attribute__((target("avx512f")))
static ptrdiff_t f32_nonfinite__avx512(const float *x, ptrdiff_t n)
{
    CNNRT_NONFINITE_BODY
}
#endif
#undef CNNRT_NONFINITE_BODY

typedef struct {
    cnnrt_nonfinite_fn nonfinite;
    cnnrt_dot_fn dot;
    cnnrt_pool_row_fn pool_row;
    cnnrt_maxpool_plane_fn maxpool_plane;  /* returns 0 where it does not apply */
} cnnrt_rows_config;

static cnnrt_rows_config cnnrt_rows_select(int isa)
{
    cnnrt_rows_config cfg;
    cfg.nonfinite = f32_nonfinite__scalar;
    cfg.dot = f32_dot__scalar;
    cfg.pool_row = f32_pool_row__scalar;
    cfg.maxpool_plane = f32_maxpool_plane__none;
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512)) {
        cfg.nonfinite = f32_nonfinite__avx512;
        cfg.dot = f32_dot__avx512;
        cfg.pool_row = f32_pool_row__avx512;
        cfg.maxpool_plane = f32_maxpool_plane__avx512;
    } else if (isa == CNNRT_ISA_AVX2 && cnnrt_isa_supported(CNNRT_ISA_AVX2)) {
        cfg.nonfinite = f32_nonfinite__avx2;
        cfg.dot = f32_dot__avx2;
        cfg.pool_row = f32_pool_row__avx2;
    }
#endif
    return cfg;
}

#endif /* CNNRT_F32_ROWS_H */
