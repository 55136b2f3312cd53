/*
 * f32 kernels for channel-blocked activations (c16) in cnnrt.
 *
 * A c16 tensor holds one image as [ceil(C/16)][H][W][16]: each position's
 * 16 channels of a block are one vector, and the lanes past the last channel
 * hold zeros.  Chains of depthwise and pointwise convolutions, and max
 * pools after a convolution on the row kernels, run on this layout (see
 * docs/design.md): a depthwise tap is one vector multiply-add for 16
 * channels with no shuffles or masks, a pointwise convolution reads its
 * input in place and stores whole vectors, a pool takes whole-vector maxima.
 * A chain's input is reordered into c16 once (or stored so by the
 * convolution that makes it) and its output back to planes once.
 *
 * Every output gets the same operations in the same order whatever the
 * thread count: depthwise, the bias then the taps in (ky, kx) order, then
 * the activation.  The scalar versions run where AVX-512 is not selected.
 */
#ifndef CNNRT_F32_C16_H
#define CNNRT_F32_C16_H

#include <math.h>
#include <stddef.h>
#include <string.h>
#include "f32_gemm.h"

#define CNNRT_C16 16

/* ------------------------------------------------------------ reorders */

/* Positions p0 .. p1-1 of channel block cb of one image: planes x (C
 * channels of HW positions) into y (the image in c16), pad lanes zeroed. */
typedef void (*cnnrt_to_c16_fn)(const float *x, ptrdiff_t C, ptrdiff_t HW, ptrdiff_t cb,
                                ptrdiff_t p0, ptrdiff_t p1, float *y);
/* The reverse: c16 image x into planes y (only the C real channels). */
typedef void (*cnnrt_from_c16_fn)(const float *x, ptrdiff_t C, ptrdiff_t HW, ptrdiff_t cb,
                                  ptrdiff_t p0, ptrdiff_t p1, float *y);

static void f32_to_c16__scalar(const float *x, ptrdiff_t C, ptrdiff_t HW, ptrdiff_t cb,
                               ptrdiff_t p0, ptrdiff_t p1, float *y)
{
    const ptrdiff_t c0 = cb * CNNRT_C16;
    float *yb = y + c0 * HW;
    ptrdiff_t p, j;
    for (p = p0; p < p1; p++)
        for (j = 0; j < CNNRT_C16; j++)
            yb[p * CNNRT_C16 + j] = c0 + j < C ? x[(c0 + j) * HW + p] : 0.0f;
}

static void f32_from_c16__scalar(const float *x, ptrdiff_t C, ptrdiff_t HW, ptrdiff_t cb,
                                 ptrdiff_t p0, ptrdiff_t p1, float *y)
{
    const ptrdiff_t c0 = cb * CNNRT_C16;
    const float *xb = x + c0 * HW;
    ptrdiff_t p, j;
    for (j = 0; j < CNNRT_C16 && c0 + j < C; j++)
        for (p = p0; p < p1; p++)
            y[(c0 + j) * HW + p] = xb[p * CNNRT_C16 + j];
}

#ifdef CNNRT_X86
/* 16 positions at a time through a 16x16 register transpose. */
__attribute__((target("avx512f")))
static void f32_to_c16__avx512(const float *x, ptrdiff_t C, ptrdiff_t HW, ptrdiff_t cb,
                               ptrdiff_t p0, ptrdiff_t p1, float *y)
{
    const ptrdiff_t c0 = cb * CNNRT_C16;
    const ptrdiff_t nc = C - c0 < CNNRT_C16 ? C - c0 : CNNRT_C16;
    float *yb = y + c0 * HW;
    ptrdiff_t p, j;
    for (p = p0; p < p1; p += 16) {
        const ptrdiff_t n = p1 - p < 16 ? p1 - p : 16;
        const __mmask16 m = cnnrt_cols_mask((size_t)n, 0);
        __m512 r[16];
        for (j = 0; j < 16; j++)
            r[j] = j < nc ? _mm512_maskz_loadu_ps(m, x + (c0 + j) * HW + p) : _mm512_setzero_ps();
        cnnrt_transpose16_avx512(r);
        for (j = 0; j < n; j++)
            _mm512_storeu_ps(yb + (p + j) * CNNRT_C16, r[j]);
    }
}

__attribute__((target("avx512f")))
static void f32_from_c16__avx512(const float *x, ptrdiff_t C, ptrdiff_t HW, ptrdiff_t cb,
                                 ptrdiff_t p0, ptrdiff_t p1, float *y)
{
    const ptrdiff_t c0 = cb * CNNRT_C16;
    const ptrdiff_t nc = C - c0 < CNNRT_C16 ? C - c0 : CNNRT_C16;
    const float *xb = x + c0 * HW;
    ptrdiff_t p, j;
    for (p = p0; p < p1; p += 16) {
        const ptrdiff_t n = p1 - p < 16 ? p1 - p : 16;
        const __mmask16 m = cnnrt_cols_mask((size_t)n, 0);
        __m512 r[16];
        for (j = 0; j < 16; j++)
            r[j] = j < n ? _mm512_loadu_ps(xb + (p + j) * CNNRT_C16) : _mm512_setzero_ps();
        cnnrt_transpose16_avx512(r);
        for (j = 0; j < nc; j++)
            _mm512_mask_storeu_ps(y + (c0 + j) * HW + p, m, r[j]);
    }
}
#endif

/* ----------------------------------------------------------- depthwise */

/* One output row oy of one channel block: x the block's input [H][W][16],
 * w16 its taps [kh*kw][16], b16 its biases [16], orow the row [W2][16].
 * Taps outside the image are skipped (the zero padding adds nothing). */
typedef void (*cnnrt_dw_c16_row_fn)(const float *x, ptrdiff_t H, ptrdiff_t W, const float *w16,
                                    const float *b16, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                    ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pt,
                                    ptrdiff_t pl, ptrdiff_t oy, ptrdiff_t W2, int act,
                                    float *orow);

static void f32_dw_c16_row__scalar(const float *x, ptrdiff_t H, ptrdiff_t W, const float *w16,
                                   const float *b16, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                   ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pt,
                                   ptrdiff_t pl, ptrdiff_t oy, ptrdiff_t W2, int act, float *orow)
{
    ptrdiff_t ox, ky, kx, j;
    for (ox = 0; ox < W2; ox++) {
        float acc[CNNRT_C16];
        for (j = 0; j < CNNRT_C16; j++)
            acc[j] = b16[j];
        for (ky = 0; ky < kh; ky++) {
            const ptrdiff_t iy = oy * sh - pt + ky * dh;
            if (iy < 0 || iy >= H)
                continue;
            for (kx = 0; kx < kw; kx++) {
                const ptrdiff_t ix = ox * sw - pl + kx * dw;
                const float *v = x + (iy * W + ix) * CNNRT_C16;
                const float *wv = w16 + (ky * kw + kx) * CNNRT_C16;
                if (ix < 0 || ix >= W)
                    continue;
                for (j = 0; j < CNNRT_C16; j++)
                    acc[j] += wv[j] * v[j];
            }
        }
        for (j = 0; j < CNNRT_C16; j++)
            orow[ox * CNNRT_C16 + j] = cnnrt_act_scalar(acc[j], act);
    }
}

#ifdef CNNRT_X86
/* One output position ox with every tap checked against the image. */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_dw_c16_one_avx512(const float *x, ptrdiff_t H, ptrdiff_t W,
                                           const float *w16, __m512 bv, ptrdiff_t kh, ptrdiff_t kw,
                                           ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw,
                                           ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t oy, ptrdiff_t ox,
                                           int act, float *orow)
{
    __m512 acc = bv;
    ptrdiff_t ky, kx;
    for (ky = 0; ky < kh; ky++) {
        const ptrdiff_t iy = oy * sh - pt + ky * dh;
        if (iy < 0 || iy >= H)
            continue;
        for (kx = 0; kx < kw; kx++) {
            const ptrdiff_t ix = ox * sw - pl + kx * dw;
            if (ix < 0 || ix >= W)
                continue;
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(w16 + (ky * kw + kx) * CNNRT_C16),
                                  _mm512_loadu_ps(x + (iy * W + ix) * CNNRT_C16), acc);
        }
    }
    _mm512_storeu_ps(orow + ox * CNNRT_C16, cnnrt_act_avx512(acc, act));
}

/* R positions (up to 8) from ox whose taps are all inside the row, KW taps
 * at stride S without dilation (constants where inlined with them): per tap
 * row, the (R-1)*S+KW input vectors are loaded once and shared. */
#define CNNRT_C16_R 8
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_dw_c16_block_avx512(const float *x, ptrdiff_t H, ptrdiff_t W,
                                             const float *w16, __m512 bv, ptrdiff_t kh,
                                             const ptrdiff_t R, const ptrdiff_t KW,
                                             const ptrdiff_t S, ptrdiff_t sh,
                                             ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t oy,
                                             ptrdiff_t ox, int act, float *orow)
{
    __m512 acc[CNNRT_C16_R];
    ptrdiff_t ky, kx, r, i;
#pragma GCC unroll 8
    for (r = 0; r < R; r++)
        acc[r] = bv;
    for (ky = 0; ky < kh; ky++) {
        const ptrdiff_t iy = oy * sh - pt + ky;
        const float *src;
        __m512 v[(CNNRT_C16_R - 1) * 2 + 7];
        if (iy < 0 || iy >= H)
            continue;
        src = x + (iy * W + ox * S - pl) * CNNRT_C16;
#pragma GCC unroll 24
        for (i = 0; i < (R - 1) * S + KW; i++)
            v[i] = _mm512_loadu_ps(src + i * CNNRT_C16);
#pragma GCC unroll 7
        for (kx = 0; kx < KW; kx++) {
            const __m512 wv = _mm512_loadu_ps(w16 + (ky * KW + kx) * CNNRT_C16);
#pragma GCC unroll 8
            for (r = 0; r < R; r++)
                acc[r] = _mm512_fmadd_ps(wv, v[r * S + kx], acc[r]);
        }
    }
#pragma GCC unroll 8
    for (r = 0; r < R; r++)
        _mm512_storeu_ps(orow + (ox + r) * CNNRT_C16, cnnrt_act_avx512(acc[r], act));
}

/* The interior positions ox .. hi-1 in blocks of 8, then 4, 2 and 1. */
#define CNNRT_DW_BLOCK(R, KW, S)                                                \
    cnnrt_dw_c16_block_avx512(x, H, W, w16, bv, kh, R, KW, S, sh, pt, pl, oy, ox, act, orow)
#define CNNRT_DW_BLOCKS(KW, S)                                                  \
    do {                                                                        \
        for (; ox + 8 <= hi; ox += 8)                                           \
            CNNRT_DW_BLOCK(8, KW, S);                                           \
        if (ox + 4 <= hi) {                                                     \
            CNNRT_DW_BLOCK(4, KW, S);                                           \
            ox += 4;                                                            \
        }                                                                       \
        if (ox + 2 <= hi) {                                                     \
            CNNRT_DW_BLOCK(2, KW, S);                                           \
            ox += 2;                                                            \
        }                                                                       \
        if (ox < hi) {                                                          \
            CNNRT_DW_BLOCK(1, KW, S);                                           \
            ox += 1;                                                            \
        }                                                                       \
    } while (0)

__attribute__((target("avx512f")))
static void f32_dw_c16_row__avx512(const float *x, ptrdiff_t H, ptrdiff_t W, const float *w16,
                                   const float *b16, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                   ptrdiff_t sw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pt,
                                   ptrdiff_t pl, ptrdiff_t oy, ptrdiff_t W2, int act, float *orow)
{
    const __m512 bv = _mm512_loadu_ps(b16);
    /* positions lo .. hi-1 read only columns inside the row */
    ptrdiff_t lo = (pl + sw - 1) / sw;
    ptrdiff_t hi = W - 1 + pl - (kw - 1) * dw < 0 ? 0 : (W - 1 + pl - (kw - 1) * dw) / sw + 1;
    ptrdiff_t ox;
    const int fast = dh == 1 && dw == 1 && (sw == 1 || sw == 2) && kw <= 7;
    if (hi > W2)
        hi = W2;
    if (lo > hi)
        lo = hi;
    for (ox = 0; ox < lo; ox++)
        cnnrt_dw_c16_one_avx512(x, H, W, w16, bv, kh, kw, sh, sw, dh, dw, pt, pl, oy, ox, act, orow);
    if (fast && kw == 3 && sw == 1)
        CNNRT_DW_BLOCKS(3, 1);
    else if (fast && kw == 3)
        CNNRT_DW_BLOCKS(3, 2);
    else if (fast && kw == 5 && sw == 1)
        CNNRT_DW_BLOCKS(5, 1);
    else if (fast && kw == 5)
        CNNRT_DW_BLOCKS(5, 2);
    for (; ox < W2; ox++)
        cnnrt_dw_c16_one_avx512(x, H, W, w16, bv, kh, kw, sh, sw, dh, dw, pt, pl, oy, ox, act, orow);
}
#undef CNNRT_DW_BLOCKS
#undef CNNRT_DW_BLOCK
#endif

/* ------------------------------------------------------------ max pool */

/* One output row oy of one channel block: each output is the first greatest
 * value of its window in (ky, kx) order, max(v, acc) keeping acc unless v
 * is greater, as the plane kernels; taps outside the image never win. */
typedef void (*cnnrt_maxpool_c16_row_fn)(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                         ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt,
                                         ptrdiff_t pl, ptrdiff_t oy, ptrdiff_t W2, float *orow);

static void f32_maxpool_c16_row__scalar(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                        ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt,
                                        ptrdiff_t pl, ptrdiff_t oy, ptrdiff_t W2, float *orow)
{
    ptrdiff_t ox, ky, kx, j;
    for (ox = 0; ox < W2; ox++) {
        float acc[CNNRT_C16];
        for (j = 0; j < CNNRT_C16; j++)
            acc[j] = -INFINITY;
        for (ky = 0; ky < kh; ky++) {
            const ptrdiff_t iy = oy * sh - pt + ky;
            if (iy < 0 || iy >= H)
                continue;
            for (kx = 0; kx < kw; kx++) {
                const ptrdiff_t ix = ox * sw - pl + kx;
                const float *v = x + (iy * W + ix) * CNNRT_C16;
                if (ix < 0 || ix >= W)
                    continue;
                for (j = 0; j < CNNRT_C16; j++)
                    acc[j] = v[j] > acc[j] ? v[j] : acc[j];
            }
        }
        for (j = 0; j < CNNRT_C16; j++)
            orow[ox * CNNRT_C16 + j] = acc[j];
    }
}

#ifdef CNNRT_X86
/* N neighbouring outputs from x0 (their windows inside the row, x0 >= 0):
 * N independent chains, each taking its window in (ky, kx) order as the
 * one-output path does, so the results are the same. */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_maxpool_c16_run_avx512(const int N, const float *x, ptrdiff_t W,
                                                ptrdiff_t kw, ptrdiff_t sw, ptrdiff_t ylo,
                                                ptrdiff_t yhi, ptrdiff_t x0, float *o)
{
    __m512 a[8];
    ptrdiff_t iy, kx;
    int i;
    for (i = 0; i < N; i++)
        a[i] = _mm512_set1_ps(-INFINITY);
    for (iy = ylo; iy < yhi; iy++) {
        const float *row = x + (iy * W + x0) * CNNRT_C16;
        for (kx = 0; kx < kw; kx++)
            for (i = 0; i < N; i++)
                a[i] = _mm512_max_ps(_mm512_loadu_ps(row + (i * sw + kx) * CNNRT_C16), a[i]);
    }
    for (i = 0; i < N; i++)
        _mm512_storeu_ps(o + i * CNNRT_C16, a[i]);
}

__attribute__((target("avx512f")))
static void f32_maxpool_c16_row__avx512(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                        ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt,
                                        ptrdiff_t pl, ptrdiff_t oy, ptrdiff_t W2, float *orow)
{
    const ptrdiff_t y0 = oy * sh - pt;
    const ptrdiff_t ylo = y0 < 0 ? 0 : y0;
    const ptrdiff_t yhi = y0 + kh > H ? H : y0 + kh;
    /* outputs lo..hi-1 have their windows inside the row: eight, then four
     * at a time (one chain of dependent maxima per output would wait on
     * each); the others clip their windows one at a time */
    ptrdiff_t lo = pl > 0 ? (pl + sw - 1) / sw : 0;
    ptrdiff_t hi = W + pl >= kw ? (W + pl - kw) / sw + 1 : 0;
    ptrdiff_t ox, iy, kx;
    if (hi > W2)
        hi = W2;
    if (lo > hi)
        lo = hi;
    for (ox = 0; ox < W2; ox++) {
        if (ox == lo) {
            for (; ox + 8 <= hi; ox += 8)
                cnnrt_maxpool_c16_run_avx512(8, x, W, kw, sw, ylo, yhi, ox * sw - pl,
                                             orow + ox * CNNRT_C16);
            for (; ox + 4 <= hi; ox += 4)
                cnnrt_maxpool_c16_run_avx512(4, x, W, kw, sw, ylo, yhi, ox * sw - pl,
                                             orow + ox * CNNRT_C16);
            if (ox == W2)
                break;
        }
        {
            const ptrdiff_t x0 = ox * sw - pl;
            const ptrdiff_t xlo = x0 < 0 ? 0 : x0;
            const ptrdiff_t xhi = x0 + kw > W ? W : x0 + kw;
            __m512 acc = _mm512_set1_ps(-INFINITY);
            for (iy = ylo; iy < yhi; iy++) {
                const float *row = x + iy * W * CNNRT_C16;
                for (kx = xlo; kx < xhi; kx++)
                    acc = _mm512_max_ps(_mm512_loadu_ps(row + kx * CNNRT_C16), acc);
            }
            _mm512_storeu_ps(orow + ox * CNNRT_C16, acc);
        }
    }
}
#endif

/* ------------------------------------------------- pointwise tile store */

/* Rows r < mr of a tile (c[r*ldc + j]: position r, channel j of the panel;
 * ldc 32 or 48) with bias and activation into two channel blocks: y0
 * (channels 0-15) and y1 (16-31; NULL when the panel has no such block;
 * bias[16..31] is then not read), 16 floats per position.  A 48-wide tile
 * is stored in two calls, the second from its channel 32. */
typedef void (*cnnrt_store_c16_fn)(const float *c, size_t ldc, size_t mr, const float *bias,
                                   int act, float *y0, float *y1);

static void f32_store_c16__scalar(const float *c, size_t ldc, size_t mr, const float *bias,
                                  int act, float *y0, float *y1)
{
    size_t r, j;
    for (r = 0; r < mr; r++) {
        for (j = 0; j < CNNRT_C16; j++)
            y0[r * CNNRT_C16 + j] = cnnrt_act_scalar(c[r * ldc + j] + bias[j], act);
        if (y1 != NULL)
            for (j = 0; j < CNNRT_C16; j++)
                y1[r * CNNRT_C16 + j] = cnnrt_act_scalar(c[r * ldc + 16 + j] + bias[16 + j], act);
    }
}

#ifdef CNNRT_X86
__attribute__((target("avx512f")))
static void f32_store_c16__avx512(const float *c, size_t ldc, size_t mr, const float *bias,
                                  int act, float *y0, float *y1)
{
    const __m512 b0 = _mm512_loadu_ps(bias);
    const __m512 b1 = y1 != NULL ? _mm512_loadu_ps(bias + 16) : b0;
    size_t r;
    for (r = 0; r < mr; r++) {
        _mm512_storeu_ps(y0 + r * CNNRT_C16,
                         cnnrt_act_avx512(_mm512_add_ps(_mm512_loadu_ps(c + r * ldc), b0), act));
        if (y1 != NULL)
            _mm512_storeu_ps(y1 + r * CNNRT_C16,
                             cnnrt_act_avx512(_mm512_add_ps(_mm512_loadu_ps(c + r * ldc + 16), b1),
                                                  act));
    }
}
#endif

/* An mr x 32 pointwise tile (mr positions, 6 to 8) over C input channels,
 * stored channel-blocked: position r's channel q is a[(q/16)*bs + r*16 + q%16]
 * (bs: floats between channel blocks), b the packed weight panel [C][32];
 * y0, y1 as for the tile store.  Unless `first`, the sums start from what y0
 * and y1 hold (the channels before); with `last`, bias and activation are
 * applied.  The 16 channels of a block are unrolled, so each broadcast is
 * one load at a fixed displacement from the block's base.  Runs of 7 or 6
 * positions fill maps such as 7x7 (49 positions: seven runs of 7 instead of
 * 56 slots in runs of 8).  NULL where the ISA has none (then the row
 * micro-kernel and the tile store run). */
typedef void (*cnnrt_pw_c16_fn)(size_t mr, size_t C, const float *a, ptrdiff_t bs,
                                const float *b, const float *bias, int act, float *y0,
                                float *y1, int first, int last);

/* The channel loop of the pointwise tiles: STEP(j) applies input channel
 * q + j of the block at ab (16 unrolled per block, then the rest). */
#define CNNRT_PW_CHANNELS(STEP)                                                 \
    for (q = 0; q + 16 <= C; q += 16) {                                         \
        const float *ab = a + (q / 16) * bs;                                    \
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)         \
        STEP(8) STEP(9) STEP(10) STEP(11) STEP(12) STEP(13) STEP(14) STEP(15)   \
    }                                                                           \
    if (q < C) {                                                                \
        const float *ab = a + (q / 16) * bs;                                    \
        for (j = 0; q + j < C; j++)                                             \
            STEP(j)                                                             \
    }

#ifdef CNNRT_X86
/* The tile for a constant MR (the unused rows are compiled out). */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_pw_c16_avx512(const size_t MR, size_t C, const float *a, ptrdiff_t bs,
                                       const float *b, const float *bias, int act, float *y0,
                                       float *y1, int first, int last)
{
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71;
    size_t q, j;
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm512_setzero_ps();
    c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = _mm512_setzero_ps();
    if (!first) {  /* the partial sums of the channels before */
#define CNNRT_PW_LOAD(R, X0, X1)                                                \
        if ((R) < MR) {                                                         \
            X0 = _mm512_loadu_ps(y0 + (R) * CNNRT_C16);                         \
            if (y1 != NULL)                                                     \
                X1 = _mm512_loadu_ps(y1 + (R) * CNNRT_C16);                     \
        }
        CNNRT_PW_LOAD(0, c00, c01) CNNRT_PW_LOAD(1, c10, c11) CNNRT_PW_LOAD(2, c20, c21)
        CNNRT_PW_LOAD(3, c30, c31) CNNRT_PW_LOAD(4, c40, c41) CNNRT_PW_LOAD(5, c50, c51)
        CNNRT_PW_LOAD(6, c60, c61) CNNRT_PW_LOAD(7, c70, c71)
#undef CNNRT_PW_LOAD
    }
#define CNNRT_PW_ROW(R, J, X0, X1)                                              \
    if ((R) < MR) {                                                             \
        const __m512 av = _mm512_set1_ps(ab[(R) * 16 + (J)]);                   \
        X0 = _mm512_fmadd_ps(av, b0, X0);                                       \
        X1 = _mm512_fmadd_ps(av, b1, X1);                                       \
    }
#define CNNRT_PW_STEP(J)                                                        \
    {                                                                           \
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);     \
        CNNRT_PW_ROW(0, J, c00, c01) CNNRT_PW_ROW(1, J, c10, c11)               \
        CNNRT_PW_ROW(2, J, c20, c21) CNNRT_PW_ROW(3, J, c30, c31)               \
        CNNRT_PW_ROW(4, J, c40, c41) CNNRT_PW_ROW(5, J, c50, c51)               \
        CNNRT_PW_ROW(6, J, c60, c61) CNNRT_PW_ROW(7, J, c70, c71)               \
        b += 32;                                                                \
    }
    CNNRT_PW_CHANNELS(CNNRT_PW_STEP)
#undef CNNRT_PW_STEP
#undef CNNRT_PW_ROW
    {
        const __m512 b0 = _mm512_loadu_ps(bias), b1 = _mm512_loadu_ps(bias + 16);
        const __m512 rows[16] = {c00, c01, c10, c11, c20, c21, c30, c31,
                                 c40, c41, c50, c51, c60, c61, c70, c71};
        size_t r;
        for (r = 0; r < MR; r++) {
            if (!last) {
                _mm512_storeu_ps(y0 + r * CNNRT_C16, rows[2 * r]);
                if (y1 != NULL)
                    _mm512_storeu_ps(y1 + r * CNNRT_C16, rows[2 * r + 1]);
                continue;
            }
            _mm512_storeu_ps(y0 + r * CNNRT_C16,
                             cnnrt_act_avx512(_mm512_add_ps(rows[2 * r], b0), act));
            if (y1 != NULL)
                _mm512_storeu_ps(y1 + r * CNNRT_C16,
                                 cnnrt_act_avx512(_mm512_add_ps(rows[2 * r + 1], b1), act));
        }
    }
}

__attribute__((target("avx512f")))
static void f32_pw_c16__avx512(size_t mr, size_t C, const float *a, ptrdiff_t bs,
                               const float *b, const float *bias, int act, float *y0,
                               float *y1, int first, int last)
{
    if (mr == 8)
        cnnrt_pw_c16_avx512(8, C, a, bs, b, bias, act, y0, y1, first, last);
    else if (mr == 7)
        cnnrt_pw_c16_avx512(7, C, a, bs, b, bias, act, y0, y1, first, last);
    else
        cnnrt_pw_c16_avx512(6, C, a, bs, b, bias, act, y0, y1, first, last);
}

/* The same over a 48-channel panel: three output blocks y0, y1, y2 (y0 and
 * y1 always real; y2 NULL where the third is padding), 24 accumulators, one
 * load per two multiply-adds (the 32-channel tile: nine or ten per 14 or
 * 16). */
typedef void (*cnnrt_pw48_c16_fn)(size_t mr, size_t C, const float *a, ptrdiff_t bs,
                                  const float *b, const float *bias, int act, float *y0,
                                  float *y1, float *y2, int first, int last);

__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_pw48_c16_avx512(const size_t MR, size_t C, const float *a,
                                         ptrdiff_t bs, const float *b, const float *bias,
                                         int act, float *y0, float *y1, float *y2, int first,
                                         int last)
{
    __m512 c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32;
    __m512 c40, c41, c42, c50, c51, c52, c60, c61, c62, c70, c71, c72;
    float *const y2r = y2 != NULL ? y2 : y1;  /* read for the sums, never written */
    size_t q, j;
    c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = _mm512_setzero_ps();
    c30 = c31 = c32 = c40 = c41 = c42 = c50 = c51 = c52 = _mm512_setzero_ps();
    c60 = c61 = c62 = c70 = c71 = c72 = _mm512_setzero_ps();
    if (!first) {  /* the partial sums of the channels before */
#define CNNRT_PW48_LOAD(R)                                                      \
        if ((R) < MR) {                                                         \
            c##R##0 = _mm512_loadu_ps(y0 + (R) * CNNRT_C16);                    \
            c##R##1 = _mm512_loadu_ps(y1 + (R) * CNNRT_C16);                    \
            c##R##2 = _mm512_loadu_ps(y2r + (R) * CNNRT_C16);                   \
        }
        CNNRT_PW48_LOAD(0) CNNRT_PW48_LOAD(1) CNNRT_PW48_LOAD(2) CNNRT_PW48_LOAD(3)
        CNNRT_PW48_LOAD(4) CNNRT_PW48_LOAD(5) CNNRT_PW48_LOAD(6) CNNRT_PW48_LOAD(7)
#undef CNNRT_PW48_LOAD
    }
#define CNNRT_PW48_ROW(R, J)                                                    \
    if ((R) < MR) {                                                             \
        const __m512 av = _mm512_set1_ps(ab[(R) * 16 + (J)]);                   \
        c##R##0 = _mm512_fmadd_ps(av, b0, c##R##0);                             \
        c##R##1 = _mm512_fmadd_ps(av, b1, c##R##1);                             \
        c##R##2 = _mm512_fmadd_ps(av, b2, c##R##2);                             \
    }
#define CNNRT_PW48_STEP(J)                                                      \
    {                                                                           \
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);     \
        const __m512 b2 = _mm512_loadu_ps(b + 32);                              \
        CNNRT_PW48_ROW(0, J) CNNRT_PW48_ROW(1, J) CNNRT_PW48_ROW(2, J)          \
        CNNRT_PW48_ROW(3, J) CNNRT_PW48_ROW(4, J) CNNRT_PW48_ROW(5, J)          \
        CNNRT_PW48_ROW(6, J) CNNRT_PW48_ROW(7, J)                               \
        b += 48;                                                                \
    }
    CNNRT_PW_CHANNELS(CNNRT_PW48_STEP)
#undef CNNRT_PW48_STEP
#undef CNNRT_PW48_ROW
    {
        const __m512 bv0 = _mm512_loadu_ps(bias), bv1 = _mm512_loadu_ps(bias + 16);
        const __m512 bv2 = _mm512_loadu_ps(bias + 32);
#define CNNRT_PW48_OUT(V, BV) (last ? cnnrt_act_avx512(_mm512_add_ps(V, BV), act) : (V))
#define CNNRT_PW48_STORE(R)                                                     \
        if ((R) < MR) {                                                         \
            _mm512_storeu_ps(y0 + (R) * CNNRT_C16, CNNRT_PW48_OUT(c##R##0, bv0));  \
            _mm512_storeu_ps(y1 + (R) * CNNRT_C16, CNNRT_PW48_OUT(c##R##1, bv1));  \
            if (y2 != NULL)                                                     \
                _mm512_storeu_ps(y2 + (R) * CNNRT_C16, CNNRT_PW48_OUT(c##R##2, bv2)); \
        }
        CNNRT_PW48_STORE(0) CNNRT_PW48_STORE(1) CNNRT_PW48_STORE(2) CNNRT_PW48_STORE(3)
        CNNRT_PW48_STORE(4) CNNRT_PW48_STORE(5) CNNRT_PW48_STORE(6) CNNRT_PW48_STORE(7)
#undef CNNRT_PW48_STORE
#undef CNNRT_PW48_OUT
    }
}

__attribute__((target("avx512f")))
static void f32_pw48_c16__avx512(size_t mr, size_t C, const float *a, ptrdiff_t bs,
                                 const float *b, const float *bias, int act, float *y0,
                                 float *y1, float *y2, int first, int last)
{
    if (mr == 8)
        cnnrt_pw48_c16_avx512(8, C, a, bs, b, bias, act, y0, y1, y2, first, last);
    else if (mr == 7)
        cnnrt_pw48_c16_avx512(7, C, a, bs, b, bias, act, y0, y1, y2, first, last);
    else
        cnnrt_pw48_c16_avx512(6, C, a, bs, b, bias, act, y0, y1, y2, first, last);
}
#endif
#undef CNNRT_PW_CHANNELS

typedef struct {
    cnnrt_to_c16_fn to_c16;
    cnnrt_from_c16_fn from_c16;
    cnnrt_dw_c16_row_fn dw_row;
    cnnrt_store_c16_fn store;
    cnnrt_pw_c16_fn pw;
    cnnrt_pw48_c16_fn pw48;
    cnnrt_maxpool_c16_row_fn maxpool_row;
} cnnrt_c16_config;

static cnnrt_c16_config cnnrt_c16_select(int isa)
{
    cnnrt_c16_config cfg;
    cfg.to_c16 = f32_to_c16__scalar;
    cfg.from_c16 = f32_from_c16__scalar;
    cfg.dw_row = f32_dw_c16_row__scalar;
    cfg.store = f32_store_c16__scalar;
    cfg.pw = NULL;
    cfg.pw48 = NULL;
    cfg.maxpool_row = f32_maxpool_c16_row__scalar;
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512)) {
        cfg.to_c16 = f32_to_c16__avx512;
        cfg.from_c16 = f32_from_c16__avx512;
        cfg.dw_row = f32_dw_c16_row__avx512;
        cfg.store = f32_store_c16__avx512;
        cfg.pw = f32_pw_c16__avx512;
        cfg.pw48 = f32_pw48_c16__avx512;
        cfg.maxpool_row = f32_maxpool_c16_row__avx512;
    }
#endif
    (void)isa;
    return cfg;
}

#endif /* CNNRT_F32_C16_H */
