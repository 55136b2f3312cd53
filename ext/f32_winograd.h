/*
 * Winograd F(4x4, 3x3) transforms for cnnrt (3x3 stride-1 convolutions).
 *
 * Each 4x4 block of outputs is computed from a 6x6 input tile d as
 *
 *     Y = A^T [ sum_c  U[k, c] (.) V[c] ] A,   V = B^T d B,   U = G g G^T
 *
 * with the interpolation points 0, +-1, +-2 (the weight transform U is done
 * once at load, in double precision).  The 36 element-wise products summed
 * over channels are 36 independent GEMMs, which run on the ordinary GEMM
 * micro-kernels: the input transform writes V straight into packed A panels
 * (8 tiles per panel), and U is packed as B panels of 32 output channels.
 *
 * Layouts (T_pad = tiles rounded up to a multiple of 8):
 *   padded input  xp[n][c][Hp][Wp], the image at (pt, pl), zeros around it,
 *                 Hp = 4*tiles_h + 2, Wp = 4*tiles_w + 2
 *   V (A panels)  v[xi][panel][c][8]       xi = 6*row + col of the 6x6 tile
 *   M (output)    m[xi][t][k]              row-major, ldc = K
 *
 * Bodies are written once and compiled per ISA; loops over the 8 tiles of a
 * panel or over 16 output channels are vectorised by the compiler.
 */
#ifndef CNNRT_F32_WINOGRAD_H
#define CNNRT_F32_WINOGRAD_H

#include "f32_gemm.h"

/* B^T z for one 6-vector (the same for rows and columns). */
#define CNNRT_WINO_BT(z0, z1, z2, z3, z4, z5, w0, w1, w2, w3, w4, w5)            \
    do {                                                                        \
        w0 = 4.0f * z0 - 5.0f * z2 + z4;                                        \
        w1 = -4.0f * (z1 + z2) + (z3 + z4);                                     \
        w2 = 4.0f * (z1 - z2) + (z4 - z3);                                      \
        w3 = 2.0f * (z3 - z1) + (z4 - z2);                                      \
        w4 = 2.0f * (z1 - z3) + (z4 - z2);                                      \
        w5 = 4.0f * z1 - 5.0f * z3 + z5;                                        \
    } while (0)

/* A^T m for one 6-vector -> 4 outputs. */
#define CNNRT_WINO_AT(m0, m1, m2, m3, m4, m5, y0, y1, y2, y3)                   \
    do {                                                                        \
        const float s12 = m1 + m2, d12 = m1 - m2;                               \
        const float s34 = m3 + m4, d34 = m3 - m4;                               \
        y0 = m0 + s12 + s34;                                                    \
        y1 = d12 + 2.0f * d34;                                                  \
        y2 = s12 + 4.0f * s34;                                                  \
        y3 = d12 + 8.0f * d34 + m5;                                             \
    } while (0)

/*
 * Input transform of one panel of 8 tiles for channels c0..c1.
 *   xp:    padded input of image 0; tile r's top-left corner is xp + base[r]
 *          (its channel plane added as c * plane)
 *   v:     this panel's V block for xi = 0: v + xi * xi_stride + c * 8 + r
 * Tiles r >= nvalid are written as zeros.
 */
#define CNNRT_WINO_IN_ARGS                                                       \
    const float *xp, ptrdiff_t plane, ptrdiff_t Wp, const ptrdiff_t *base,       \
    ptrdiff_t nvalid, ptrdiff_t c0, ptrdiff_t c1, float *v, ptrdiff_t xi_stride

#define CNNRT_WINO_IN_BODY                                                       \
    ptrdiff_t c, a, b, r;                                                        \
    for (c = c0; c < c1; c++) {                                                  \
        float d[6][6][8];                                                        \
        float t[6][6][8];                                                        \
        for (r = 0; r < 8; r++) {                                                \
            if (r < nvalid) {                                                    \
                const float *src = xp + c * plane + base[r];                     \
                for (a = 0; a < 6; a++)                                          \
                    for (b = 0; b < 6; b++)                                      \
                        d[a][b][r] = src[a * Wp + b];                            \
            } else {                                                             \
                for (a = 0; a < 6; a++)                                          \
                    for (b = 0; b < 6; b++)                                      \
                        d[a][b][r] = 0.0f;                                       \
            }                                                                    \
        }                                                                        \
        for (b = 0; b < 6; b++)                                                  \
            for (r = 0; r < 8; r++)                                              \
                CNNRT_WINO_BT(d[0][b][r], d[1][b][r], d[2][b][r], d[3][b][r],    \
                              d[4][b][r], d[5][b][r], t[0][b][r], t[1][b][r],    \
                              t[2][b][r], t[3][b][r], t[4][b][r], t[5][b][r]);   \
        for (a = 0; a < 6; a++) {                                                \
            float *o = v + (6 * a) * xi_stride + c * 8;                          \
            for (r = 0; r < 8; r++) {                                            \
                float w0, w1, w2, w3, w4, w5;                                    \
                CNNRT_WINO_BT(t[a][0][r], t[a][1][r], t[a][2][r], t[a][3][r],    \
                              t[a][4][r], t[a][5][r], w0, w1, w2, w3, w4, w5);   \
                o[0 * xi_stride + r] = w0;                                       \
                o[1 * xi_stride + r] = w1;                                       \
                o[2 * xi_stride + r] = w2;                                       \
                o[3 * xi_stride + r] = w3;                                       \
                o[4 * xi_stride + r] = w4;                                       \
                o[5 * xi_stride + r] = w5;                                       \
            }                                                                    \
        }                                                                        \
    }

/*
 * Output transform of one tile for output channels k0..k1.
 *   m:   M for this tile at xi = 0, channel 0: m + xi * xi_stride + k
 *   y:   output of this tile's image at channel 0, row oy0, column ox0;
 *        channel k's plane starts at y + k * P (P = H2 * W2)
 *   rows, cols: how many of the 4x4 outputs lie inside the image
 *   pool: 1 to write the 2x2 stride-2 max pool of the (activated) tile
 *        instead: y, P and W2 then describe the pooled output, and rows,
 *        cols count the pooled outputs (up to 2x2) inside it.  Each is the
 *        first greatest of its window in (ky, kx) order, max(v, acc) from
 *        -inf, as the max pooling kernels compute it.
 */
#define CNNRT_WINO_OUT_ARGS                                                      \
    const float *m, ptrdiff_t xi_stride, ptrdiff_t k0, ptrdiff_t k1,            \
    const float *bias, int act, float *y, ptrdiff_t P, ptrdiff_t W2,             \
    ptrdiff_t rows, ptrdiff_t cols, int pool

#define CNNRT_WINO_OUT_BODY                                                      \
    ptrdiff_t kb, kk, a, u, w;                                                   \
    for (kb = k0; kb < k1; kb += 16) {                                           \
        const ptrdiff_t kn = k1 - kb < 16 ? k1 - kb : 16;                        \
        float mm[36][16];                                                        \
        float t[4][6][16];                                                       \
        float o[4][4][16];                                                       \
        for (a = 0; a < 36; a++)                                                 \
            for (kk = 0; kk < 16; kk++)                                          \
                mm[a][kk] = kk < kn ? m[a * xi_stride + kb + kk] : 0.0f;         \
        for (w = 0; w < 6; w++)                                                  \
            for (kk = 0; kk < 16; kk++)                                          \
                CNNRT_WINO_AT(mm[0 + w][kk], mm[6 + w][kk], mm[12 + w][kk],      \
                              mm[18 + w][kk], mm[24 + w][kk], mm[30 + w][kk],    \
                              t[0][w][kk], t[1][w][kk], t[2][w][kk], t[3][w][kk]); \
        for (u = 0; u < 4; u++)                                                  \
            for (kk = 0; kk < 16; kk++) {                                        \
                const float bv = bias ? bias[kb + (kk < kn ? kk : 0)] : 0.0f;    \
                float y0, y1, y2, y3;                                            \
                CNNRT_WINO_AT(t[u][0][kk], t[u][1][kk], t[u][2][kk],             \
                              t[u][3][kk], t[u][4][kk], t[u][5][kk],             \
                              y0, y1, y2, y3);                                   \
                o[u][0][kk] = y0 + bv;                                           \
                o[u][1][kk] = y1 + bv;                                           \
                o[u][2][kk] = y2 + bv;                                           \
                o[u][3][kk] = y3 + bv;                                           \
            }                                                                    \
        for (kk = 0; kk < kn; kk++) {                                            \
            float *dst = y + (kb + kk) * P;                                      \
            if (pool) {                                                          \
                for (u = 0; u < rows; u++)                                       \
                    for (w = 0; w < cols; w++) {                                 \
                        float acc = -INFINITY;                                   \
                        for (a = 0; a < 4; a++) { /* (ky, kx) order */           \
                            const float v = cnnrt_act_scalar(                    \
                                o[2 * u + a / 2][2 * w + a % 2][kk], act);       \
                            acc = v > acc ? v : acc;                             \
                        }                                                        \
                        dst[u * W2 + w] = acc;                                   \
                    }                                                            \
                continue;                                                        \
            }                                                                    \
            for (u = 0; u < rows; u++)                                           \
                for (w = 0; w < cols; w++)                                       \
                    dst[u * W2 + w] = cnnrt_act_scalar(o[u][w][kk], act);        \
        }                                                                        \
    }

static void f32_wino4x3_input__scalar(CNNRT_WINO_IN_ARGS) { CNNRT_WINO_IN_BODY }
static void f32_wino4x3_output__scalar(CNNRT_WINO_OUT_ARGS) { CNNRT_WINO_OUT_BODY }
#ifdef CNNRT_X86
/* AVX2 (also used with AVX-512): each tile's six rows are loaded as vectors
 * and combined (B^T over rows); an 8x8 transpose per row of the result puts
 * the 8 tiles of the panel in the lanes, and B^T over columns then yields V
 * rows that are stored whole. */
#define CNNRT_WINO_BT_AVX2(z, w)                                                 \
    do {                                                                        \
        const __m256 c4 = _mm256_set1_ps(4.0f), c5 = _mm256_set1_ps(5.0f);      \
        const __m256 c2 = _mm256_set1_ps(2.0f);                                 \
        const __m256 d42 = _mm256_sub_ps(z[4], z[2]);                           \
        w[0] = _mm256_fmadd_ps(c4, z[0], _mm256_fnmadd_ps(c5, z[2], z[4]));     \
        w[1] = _mm256_fnmadd_ps(c4, _mm256_add_ps(z[1], z[2]), _mm256_add_ps(z[3], z[4])); \
        w[2] = _mm256_fmadd_ps(c4, _mm256_sub_ps(z[1], z[2]), _mm256_sub_ps(z[4], z[3])); \
        w[3] = _mm256_fmadd_ps(c2, _mm256_sub_ps(z[3], z[1]), d42);             \
        w[4] = _mm256_fmadd_ps(c2, _mm256_sub_ps(z[1], z[3]), d42);             \
        w[5] = _mm256_fmadd_ps(c4, z[1], _mm256_fnmadd_ps(c5, z[3], z[5]));     \
    } while (0)

__attribute__((target("avx2,fma")))
static void f32_wino4x3_input__avx2(CNNRT_WINO_IN_ARGS)
{
    const __m256i six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
    ptrdiff_t c, a, b, r;
    for (c = c0; c < c1; c++) {
        __m256 t[6][8]; /* t[row of B^T d][tile], lanes: columns */
        for (r = 0; r < 8; r++) {
            __m256 d[6], w[6];
            if (r < nvalid) {
                const float *src = xp + c * plane + base[r];
                for (a = 0; a < 6; a++)
                    d[a] = _mm256_maskload_ps(src + a * Wp, six);
                CNNRT_WINO_BT_AVX2(d, w);
                for (a = 0; a < 6; a++)
                    t[a][r] = w[a];
            } else {
                for (a = 0; a < 6; a++)
                    t[a][r] = _mm256_setzero_ps();
            }
        }
        for (a = 0; a < 6; a++) {
            __m256 w[6];
            float *o = v + (6 * a) * xi_stride + c * 8;
            cnnrt_transpose8_avx2(t[a]); /* t[a][col], lanes: tiles */
            CNNRT_WINO_BT_AVX2(t[a], w);
            for (b = 0; b < 6; b++)
                _mm256_storeu_ps(o + b * xi_stride, w[b]);
        }
    }
}
__attribute__((target("avx2,fma")))
static void f32_wino4x3_output__avx2(CNNRT_WINO_OUT_ARGS) { CNNRT_WINO_OUT_BODY }

/* AVX-512: 16 output channels per pass, one lane per channel; the 4x4
 * outputs are then transposed so that each register holds one channel's
 * 4x4 block, stored as four rows of four. */
__attribute__((target("avx512f")))
static void f32_wino4x3_output__avx512(CNNRT_WINO_OUT_ARGS)
{
    ptrdiff_t kb, a, u, w, j;
    for (kb = k0; kb < k1; kb += 16) {
        const ptrdiff_t kn = k1 - kb < 16 ? k1 - kb : 16;
        const __mmask16 mask = (__mmask16)((1u << kn) - 1u);
        __m512 t[4][6];
        __m512 o[16];
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias + kb) : _mm512_setzero_ps();
        for (w = 0; w < 6; w++) {
            __m512 mm[6];
            for (a = 0; a < 6; a++)
                mm[a] = _mm512_maskz_loadu_ps(mask, m + (6 * a + w) * xi_stride + kb);
            {
                const __m512 s12 = _mm512_add_ps(mm[1], mm[2]), d12 = _mm512_sub_ps(mm[1], mm[2]);
                const __m512 s34 = _mm512_add_ps(mm[3], mm[4]), d34 = _mm512_sub_ps(mm[3], mm[4]);
                t[0][w] = _mm512_add_ps(_mm512_add_ps(mm[0], s12), s34);
                t[1][w] = _mm512_fmadd_ps(_mm512_set1_ps(2.0f), d34, d12);
                t[2][w] = _mm512_fmadd_ps(_mm512_set1_ps(4.0f), s34, s12);
                t[3][w] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0f), d34, d12), mm[5]);
            }
        }
        for (u = 0; u < 4; u++) {
            const __m512 *r = t[u];
            const __m512 s12 = _mm512_add_ps(r[1], r[2]), d12 = _mm512_sub_ps(r[1], r[2]);
            const __m512 s34 = _mm512_add_ps(r[3], r[4]), d34 = _mm512_sub_ps(r[3], r[4]);
            o[4 * u + 0] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(r[0], s12), s34), bv);
            o[4 * u + 1] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(2.0f), d34, d12), bv);
            o[4 * u + 2] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(4.0f), s34, s12), bv);
            o[4 * u + 3] = _mm512_add_ps(_mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0f), d34, d12),
                                                       r[5]), bv);
        }
        for (j = 0; j < 16; j++)
            o[j] = cnnrt_act_avx512(o[j], act);
        if (pool) { /* (ky, kx) order, lanes: channels; the planner fuses
                     * only activations that act_avx512 applies itself */
            float buf[4][16];
            for (u = 0; u < 2; u++)
                for (w = 0; w < 2; w++) {
                    __m512 acc = _mm512_set1_ps(-INFINITY);
                    acc = _mm512_max_ps(o[8 * u + 2 * w], acc);
                    acc = _mm512_max_ps(o[8 * u + 2 * w + 1], acc);
                    acc = _mm512_max_ps(o[8 * u + 4 + 2 * w], acc);
                    acc = _mm512_max_ps(o[8 * u + 4 + 2 * w + 1], acc);
                    _mm512_storeu_ps(buf[2 * u + w], acc);
                }
            for (j = 0; j < kn; j++) {
                float *dst = y + (kb + j) * P;
                for (u = 0; u < rows; u++)
                    for (w = 0; w < cols; w++)
                        dst[u * W2 + w] = buf[2 * u + w][j];
            }
            continue;
        }
        cnnrt_transpose16_avx512(o);
        for (j = 0; j < kn; j++) {
            float *dst = y + (kb + j) * P;
            if (rows == 4 && cols == 4 && act != CNNRT_ACT_SIGMOID && act != CNNRT_ACT_TANH) {
                _mm_storeu_ps(dst, _mm512_castps512_ps128(o[j]));
                _mm_storeu_ps(dst + W2, _mm512_extractf32x4_ps(o[j], 1));
                _mm_storeu_ps(dst + 2 * W2, _mm512_extractf32x4_ps(o[j], 2));
                _mm_storeu_ps(dst + 3 * W2, _mm512_extractf32x4_ps(o[j], 3));
            } else {
                float buf[16];
                _mm512_storeu_ps(buf, o[j]);
                for (u = 0; u < rows; u++)
                    for (w = 0; w < cols; w++)
                        dst[u * W2 + w] = (act == CNNRT_ACT_SIGMOID || act == CNNRT_ACT_TANH)
                                          ? cnnrt_act_scalar(buf[4 * u + w], act) : buf[4 * u + w];
            }
        }
    }
}
#endif

typedef void (*cnnrt_wino_input_fn)(CNNRT_WINO_IN_ARGS);
typedef void (*cnnrt_wino_output_fn)(CNNRT_WINO_OUT_ARGS);

typedef struct {
    cnnrt_wino_input_fn input;
    cnnrt_wino_output_fn output;
} cnnrt_wino_config;

static cnnrt_wino_config cnnrt_wino_select(int isa)
{
    cnnrt_wino_config cfg;
    cfg.input = f32_wino4x3_input__scalar;
    cfg.output = f32_wino4x3_output__scalar;
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512)) {
        cfg.input = f32_wino4x3_input__avx2;
        cfg.output = f32_wino4x3_output__avx512;
    } else if (isa == CNNRT_ISA_AVX2 && cnnrt_isa_supported(CNNRT_ISA_AVX2)) {
        cfg.input = f32_wino4x3_input__avx2;
        cfg.output = f32_wino4x3_output__avx2;
    }
#endif
    return cfg;
}

#endif /* CNNRT_F32_WINOGRAD_H */
