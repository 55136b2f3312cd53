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
__attribute__((target("avx512f")))
static float f32_dot__avx512(const float *a, const float *b, ptrdiff_t n) { CNNRT_DOT_BODY }
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
#endif

typedef struct {
    cnnrt_dot_fn dot;
    cnnrt_pool_row_fn pool_row;
} cnnrt_rows_config;

static cnnrt_rows_config cnnrt_rows_select(int isa)
{
    cnnrt_rows_config cfg;
    cfg.dot = f32_dot__scalar;
    cfg.pool_row = f32_pool_row__scalar;
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512)) {
        cfg.dot = f32_dot__avx512;
        cfg.pool_row = f32_pool_row__avx512;
    } else if (isa == CNNRT_ISA_AVX2 && cnnrt_isa_supported(CNNRT_ISA_AVX2)) {
        cfg.dot = f32_dot__avx2;
        cfg.pool_row = f32_pool_row__avx2;
    }
#endif
    return cfg;
}

#endif /* CNNRT_F32_ROWS_H */
