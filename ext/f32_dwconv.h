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

static cnnrt_dwconv_plane_fn cnnrt_dwconv_plane_select(int isa)
{
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512))
        return f32_dwconv_plane_s1__avx512;
    if (isa == CNNRT_ISA_AVX2 && cnnrt_isa_supported(CNNRT_ISA_AVX2))
        return f32_dwconv_plane_s1__avx2;
#endif
    (void)isa;
    return f32_dwconv_plane_s1__scalar;
}

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

static cnnrt_dwconv_plane_fn cnnrt_dwconv_plane2_select(int isa)
{
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512))
        return f32_dwconv_plane_s2__avx512;
    if (isa == CNNRT_ISA_AVX2 && cnnrt_isa_supported(CNNRT_ISA_AVX2))
        return f32_dwconv_plane_s2__avx2;
#endif
    (void)isa;
    return f32_dwconv_plane_s2__scalar;
}

#endif /* CNNRT_F32_DWCONV_H */
