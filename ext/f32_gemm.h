/*
 * f32 GEMM micro-kernels for cnnrt.
 *
 * A micro-kernel computes one MR x NR tile of C = A * B over a block of kc
 * steps, from packed operands:
 *
 *   A panel: kc x MR floats, step-major: a[k * MR + r] is row r, step k.
 *            Rows past the matrix end are zero-padded at packing time.
 *   B panel: kc x NR floats, step-major: b[k * NR + j] is column j, step k.
 *            Columns past the matrix end are zero-padded at packing time.
 *
 * With `first` set the tile starts from zero, otherwise from the values
 * already in C (a previous kc block).  With `last` set the per-row bias is
 * added and the activation applied before the store.  Only the mr x nr
 * valid corner of the tile is stored.
 *
 * Every element's terms are summed in the same order (k ascending, then the
 * bias), so for a given micro-kernel results do not depend on how the work
 * was split between threads.
 *
 * Variants are compiled with per-function target attributes, so the build
 * needs no -march flag; cnnrt_gemm_select() picks one from the CPU's
 * features at run time.
 */
#ifndef CNNRT_F32_GEMM_H
#define CNNRT_F32_GEMM_H

#include <stddef.h>
#include <string.h>
#include <math.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CNNRT_X86 1
#endif

/* Every variant computes MR x NR tiles, so packed operands do not depend on
 * the variant in use. */
#define CNNRT_MR 8
#define CNNRT_NR 32
#define CNNRT_NR_MAX 32

enum { CNNRT_ACT_NONE = 0, CNNRT_ACT_RELU, CNNRT_ACT_RELU6, CNNRT_ACT_SIGMOID, CNNRT_ACT_TANH };
enum { CNNRT_ISA_SCALAR = 0, CNNRT_ISA_AVX2 = 1, CNNRT_ISA_AVX512 = 2 };

static int cnnrt_isa_supported(int isa);

typedef void (*cnnrt_gemm_ukernel)(size_t kc, const float *a, const float *b,
                                   float *c, size_t ldc, size_t mr, size_t nr,
                                   const float *bias, int first, int last, int act);

static inline float cnnrt_act_scalar(float v, int act)
{
    switch (act) {
    case CNNRT_ACT_RELU: return v > 0.0f ? v : 0.0f;
    case CNNRT_ACT_RELU6: return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
    case CNNRT_ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case CNNRT_ACT_TANH: return tanhf(v);
    default: return v;
    }
}

/* ---------------------------------------------------------------- scalar */

static void f32_gemm_ukernel_8x32__scalar(size_t kc, const float *a, const float *b,
                                          float *c, size_t ldc, size_t mr, size_t nr,
                                          const float *bias, int first, int last, int act)
{
    float acc[CNNRT_MR][32];
    size_t r, j, k;
    for (r = 0; r < CNNRT_MR; r++)
        for (j = 0; j < 32; j++)
            acc[r][j] = (!first && r < mr && j < nr) ? c[r * ldc + j] : 0.0f;
    for (k = 0; k < kc; k++) {
        const float *ak = a + k * CNNRT_MR;
        const float *bk = b + k * 32;
        for (r = 0; r < CNNRT_MR; r++) {
            const float av = ak[r];
            for (j = 0; j < 32; j++)
                acc[r][j] += av * bk[j];
        }
    }
    for (r = 0; r < mr; r++) {
        float bv = (last && bias) ? bias[r] : 0.0f;
        for (j = 0; j < nr; j++) {
            float v = acc[r][j];
            if (last) {
                v += bv;
                v = cnnrt_act_scalar(v, act);
            }
            c[r * ldc + j] = v;
        }
    }
}

/*
 * Indirect micro-kernels, for convolutions that read the input in place:
 * B row k is the NR floats at b + off[k] (a stretch of one padded or
 * stride-phase input plane), not a packed panel.  Columns nr..NR-1 are not
 * read and their results are unspecified.  The tile is stored whole:
 * c[r * 32 + j] for r < mr, every j.
 */
typedef void (*cnnrt_gemm_ukernel_ind)(size_t kc, const float *a, const float *b,
                                       const ptrdiff_t *off, float *c, size_t mr, size_t nr,
                                       const float *bias, int first, int last, int act);

static void f32_gemm_ukernel_8x32_ind__scalar(size_t kc, const float *a, const float *b,
                                              const ptrdiff_t *off, float *c, size_t mr,
                                              size_t nr, const float *bias, int first,
                                              int last, int act)
{
    float acc[CNNRT_MR][32];
    size_t r, j, k;
    for (r = 0; r < CNNRT_MR; r++)
        for (j = 0; j < 32; j++)
            acc[r][j] = (!first && r < mr) ? c[r * 32 + j] : 0.0f;
    for (k = 0; k < kc; k++) {
        const float *ak = a + k * CNNRT_MR;
        const float *bk = b + off[k];
        for (r = 0; r < CNNRT_MR; r++) {
            const float av = ak[r];
            for (j = 0; j < nr; j++)
                acc[r][j] += av * bk[j];
        }
    }
    for (r = 0; r < mr; r++) {
        float bv = (last && bias) ? bias[r] : 0.0f;
        for (j = 0; j < 32; j++) {
            float v = acc[r][j];
            if (last) {
                v += bv;
                v = cnnrt_act_scalar(v, act);
            }
            c[r * 32 + j] = v;
        }
    }
}

/*
 * Row micro-kernels, for convolutions whose vectors run along output
 * channels and whose input is read in place: row r (output position r of a
 * run along one output row), step k of the A operand is the float
 * a[off[k] + r * as] (as: the stride between neighbouring positions), and
 * B is a packed weight panel, b[k * NR + j].  Rows r >= mr repeat row 0, so
 * nothing past the run is read.  The whole 8 x 32 tile is stored, without
 * bias or activation: c[r * 32 + j] (with `first` unset, added to what c
 * holds).
 *
 * The 8x48 variants (ukernel_rows48) do the same on panels and tiles 48
 * channels wide: b[k * 48 + j], c[r * 48 + j].  Their 24 accumulators take
 * one load per two multiply-adds where the 8x32 tile takes 11 per 16, and
 * layers whose channels come in multiples of 48 fill them as well.
 */
typedef void (*cnnrt_gemm_ukernel_rows)(size_t kc, const float *a, const ptrdiff_t *off,
                                        ptrdiff_t as, size_t mr, const float *b, float *c,
                                        int first);

/* A row tile over all kc taps at once, stored channel-blocked with bias and
 * activation: act(sum + bias[16 j + i]) of position r < mr goes to
 * y[j * ys + r * 16 + i] for the nb blocks of 16 channels j < nb (up to 2
 * for 32-wide panels, 3 for 48).  The sums and the epilogue are those of
 * the tile kernel followed by the channel-blocked tile store, so the
 * results are the same to the bit; only the tile between them is gone.
 * NULL where the ISA has none. */
typedef void (*cnnrt_rows_c16_fn)(size_t kc, const float *a, const ptrdiff_t *off,
                                  ptrdiff_t as, size_t mr, const float *b, const float *bias,
                                  int act, float *y, ptrdiff_t ys, size_t nb);

static inline void cnnrt_rows_scalar(size_t kc, const float *a, const ptrdiff_t *off,
                                     ptrdiff_t as, size_t mr, const float *b, float *c,
                                     int first, size_t width)
{
    float acc[CNNRT_MR][48];
    size_t r, j, k;
    for (r = 0; r < CNNRT_MR; r++)
        for (j = 0; j < width; j++)
            acc[r][j] = first ? 0.0f : c[r * width + j];
    for (k = 0; k < kc; k++) {
        const float *bk = b + k * width;
        for (r = 0; r < CNNRT_MR; r++) {
            const float av = a[off[k] + (r < mr ? (ptrdiff_t)r : 0) * as];
            for (j = 0; j < width; j++)
                acc[r][j] += av * bk[j];
        }
    }
    for (r = 0; r < CNNRT_MR; r++)
        for (j = 0; j < width; j++)
            c[r * width + j] = acc[r][j];
}

static void f32_gemm_ukernel_8x32_rows__scalar(size_t kc, const float *a, const ptrdiff_t *off,
                                               ptrdiff_t as, size_t mr, const float *b,
                                               float *c, int first)
{
    cnnrt_rows_scalar(kc, a, off, as, mr, b, c, first, 32);
}

static void f32_gemm_ukernel_8x48_rows__scalar(size_t kc, const float *a, const ptrdiff_t *off,
                                               ptrdiff_t as, size_t mr, const float *b,
                                               float *c, int first)
{
    cnnrt_rows_scalar(kc, a, off, as, mr, b, c, first, 48);
}

#ifdef CNNRT_X86

/* ------------------------------------------------------------------ AVX2 */

__attribute__((target("avx2,fma")))
static inline __m256 cnnrt_act_avx2(__m256 v, int act)
{
    if (act == CNNRT_ACT_RELU)
        return _mm256_max_ps(v, _mm256_setzero_ps());
    if (act == CNNRT_ACT_RELU6)
        return _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0f));
    return v;
}

/* acc[r] += a[r] * bv for the 8 rows of one step. */
#define CNNRT_AVX2_STEP8(AK, BV, ACC)                                              \
    do {                                                                        \
        int r_;                                                                 \
        for (r_ = 0; r_ < CNNRT_MR; r_++)                                       \
            ACC[r_] = _mm256_fmadd_ps(_mm256_broadcast_ss((AK) + r_), BV, ACC[r_]); \
    } while (0)

/* One 8x8 quarter of an 8x32 tile: B rows are 32 floats apart. */
__attribute__((target("avx2,fma")))
static inline void f32_gemm_quarter_8x8__avx2(size_t kc, const float *a, const float *b,
                                              float *c, size_t ldc, size_t mr, size_t nr,
                                              const float *bias, int first, int last, int act)
{
    __m256 acc[CNNRT_MR];
    float tmp[8];
    size_t r, k, j;
    for (r = 0; r < CNNRT_MR; r++) {
        if (!first && r < mr) {
            if (nr == 8) {
                acc[r] = _mm256_loadu_ps(c + r * ldc);
            } else {
                for (j = 0; j < 8; j++) tmp[j] = j < nr ? c[r * ldc + j] : 0.0f;
                acc[r] = _mm256_loadu_ps(tmp);
            }
        } else {
            acc[r] = _mm256_setzero_ps();
        }
    }
    for (k = 0; k < kc; k++) {
        const __m256 bv = _mm256_loadu_ps(b + k * 32);
        const float *ak = a + k * CNNRT_MR;
        CNNRT_AVX2_STEP8(ak, bv, acc);
    }
    for (r = 0; r < mr; r++) {
        __m256 v = acc[r];
        if (last) {
            if (bias)
                v = _mm256_add_ps(v, _mm256_set1_ps(bias[r]));
            v = cnnrt_act_avx2(v, act);
        }
        if (nr == 8) {
            _mm256_storeu_ps(c + r * ldc, v);
        } else {
            _mm256_storeu_ps(tmp, v);
            for (j = 0; j < nr; j++) c[r * ldc + j] = tmp[j];
        }
        if (last && (act == CNNRT_ACT_SIGMOID || act == CNNRT_ACT_TANH))
            for (j = 0; j < nr; j++) c[r * ldc + j] = cnnrt_act_scalar(c[r * ldc + j], act);
    }
}

__attribute__((target("avx2,fma")))
static void f32_gemm_ukernel_8x32__avx2(size_t kc, const float *a, const float *b,
                                        float *c, size_t ldc, size_t mr, size_t nr,
                                        const float *bias, int first, int last, int act)
{
    size_t j0;
    for (j0 = 0; j0 < nr; j0 += 8)
        f32_gemm_quarter_8x8__avx2(kc, a, b + j0, c + j0, ldc, mr, nr - j0 < 8 ? nr - j0 : 8,
                                   bias, first, last, act);
}

/* One 8x8 quarter of an indirect 8x32 tile (B columns j0..j0+7). */
__attribute__((target("avx2,fma")))
static inline void f32_gemm_quarter_8x8_ind__avx2(size_t kc, const float *a, const float *b,
                                                  const ptrdiff_t *off, float *c, size_t mr,
                                                  size_t nr, const float *bias, int first,
                                                  int last, int act)
{
    __m256 acc[CNNRT_MR];
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr), lanes);
    size_t r, k;
    for (r = 0; r < CNNRT_MR; r++)
        acc[r] = (!first && r < mr) ? _mm256_loadu_ps(c + r * 32) : _mm256_setzero_ps();
    for (k = 0; k < kc; k++) {
        const __m256 bv = nr >= 8 ? _mm256_loadu_ps(b + off[k])
                                  : _mm256_maskload_ps(b + off[k], keep);
        const float *ak = a + k * CNNRT_MR;
        CNNRT_AVX2_STEP8(ak, bv, acc);
    }
    for (r = 0; r < mr; r++) {
        __m256 v = acc[r];
        if (last) {
            if (bias)
                v = _mm256_add_ps(v, _mm256_set1_ps(bias[r]));
            v = cnnrt_act_avx2(v, act);
        }
        _mm256_storeu_ps(c + r * 32, v);
        if (last && (act == CNNRT_ACT_SIGMOID || act == CNNRT_ACT_TANH)) {
            size_t j;
            for (j = 0; j < 8; j++) c[r * 32 + j] = cnnrt_act_scalar(c[r * 32 + j], act);
        }
    }
}

__attribute__((target("avx2,fma")))
static void f32_gemm_ukernel_8x32_ind__avx2(size_t kc, const float *a, const float *b,
                                            const ptrdiff_t *off, float *c, size_t mr, size_t nr,
                                            const float *bias, int first, int last, int act)
{
    size_t j0;
    for (j0 = 0; j0 < nr; j0 += 8)
        f32_gemm_quarter_8x8_ind__avx2(kc, a, b + j0, off, c + j0, mr, nr - j0,
                                       bias, first, last, act);
}

/* One 8x8 part of a row-kernel tile `width` columns wide (B columns
 * j0..j0+7). */
__attribute__((target("avx2,fma")))
static inline void f32_gemm_quarter_8x8_rows__avx2(size_t kc, const float *const ar[8],
                                                   const ptrdiff_t *off, const float *b,
                                                   float *c, int first, size_t width)
{
    __m256 acc[CNNRT_MR];
    size_t r, k;
    for (r = 0; r < CNNRT_MR; r++)
        acc[r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(c + r * width);
    for (k = 0; k < kc; k++) {
        const __m256 bv = _mm256_loadu_ps(b + k * width);
        const ptrdiff_t o = off[k];
        for (r = 0; r < CNNRT_MR; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(ar[r] + o), bv, acc[r]);
    }
    for (r = 0; r < CNNRT_MR; r++)
        _mm256_storeu_ps(c + r * width, acc[r]);
}

__attribute__((target("avx2,fma")))
static inline void cnnrt_rows_avx2(size_t kc, const float *a, const ptrdiff_t *off,
                                   ptrdiff_t as, size_t mr, const float *b, float *c,
                                   int first, size_t width)
{
    const float *ar[CNNRT_MR];
    size_t r, j0;
    for (r = 0; r < CNNRT_MR; r++)
        ar[r] = a + (r < mr ? (ptrdiff_t)r : 0) * as;
    for (j0 = 0; j0 < width; j0 += 8)
        f32_gemm_quarter_8x8_rows__avx2(kc, ar, off, b + j0, c + j0, first, width);
}

__attribute__((target("avx2,fma")))
static void f32_gemm_ukernel_8x32_rows__avx2(size_t kc, const float *a, const ptrdiff_t *off,
                                             ptrdiff_t as, size_t mr, const float *b,
                                             float *c, int first)
{
    cnnrt_rows_avx2(kc, a, off, as, mr, b, c, first, 32);
}

__attribute__((target("avx2,fma")))
static void f32_gemm_ukernel_8x48_rows__avx2(size_t kc, const float *a, const ptrdiff_t *off,
                                             ptrdiff_t as, size_t mr, const float *b,
                                             float *c, int first)
{
    cnnrt_rows_avx2(kc, a, off, as, mr, b, c, first, 48);
}

/* ---------------------------------------------------------------- AVX-512 */

__attribute__((target("avx512f")))
static inline __m512 cnnrt_act_avx512(__m512 v, int act)
{
    if (act == CNNRT_ACT_RELU)
        return _mm512_max_ps(v, _mm512_setzero_ps());
    if (act == CNNRT_ACT_RELU6)
        return _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(6.0f));
    return v;
}

/* Lanes of the 16 columns from `first` that lie below nr. */
static inline __mmask16 cnnrt_cols_mask(size_t nr, size_t first)
{
    if (nr >= first + 16)
        return (__mmask16)0xFFFF;
    return nr <= first ? (__mmask16)0 : (__mmask16)((1u << (nr - first)) - 1u);
}

/* Store rows r < mr of an 8x32 tile held as rows[2r], rows[2r+1] (columns
 * under masks m0, m1; nr columns valid): with `last`, bias and activation
 * first. */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_tile_store_avx512(const __m512 rows[16], size_t mr, size_t nr,
                                           __mmask16 m0, __mmask16 m1, float *c, size_t ldc,
                                           const float *bias, int last, int act)
{
    size_t r, j;
    for (r = 0; r < mr; r++) {
        __m512 v0 = rows[2 * r], v1 = rows[2 * r + 1];
        if (last) {
            if (bias) {
                const __m512 bv = _mm512_set1_ps(bias[r]);
                v0 = _mm512_add_ps(v0, bv);
                v1 = _mm512_add_ps(v1, bv);
            }
            v0 = cnnrt_act_avx512(v0, act);
            v1 = cnnrt_act_avx512(v1, act);
        }
        _mm512_mask_storeu_ps(c + r * ldc, m0, v0);
        _mm512_mask_storeu_ps(c + r * ldc + 16, m1, v1);
        if (last && (act == CNNRT_ACT_SIGMOID || act == CNNRT_ACT_TANH))
            for (j = 0; j < nr; j++) c[r * ldc + j] = cnnrt_act_scalar(c[r * ldc + j], act);
    }
}

__attribute__((target("avx512f")))
static void f32_gemm_ukernel_8x32__avx512(size_t kc, const float *a, const float *b,
                                          float *c, size_t ldc, size_t mr, size_t nr,
                                          const float *bias, int first, int last, int act)
{
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71;
    const __mmask16 m0 = cnnrt_cols_mask(nr, 0), m1 = cnnrt_cols_mask(nr, 16);
    size_t k;
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm512_setzero_ps();
    c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = _mm512_setzero_ps();
    if (!first) {
#define CNNRT_LOAD(R, X0, X1)                                                   \
        if (R < mr) {                                                           \
            X0 = _mm512_maskz_loadu_ps(m0, c + R * ldc);                        \
            X1 = _mm512_maskz_loadu_ps(m1, c + R * ldc + 16);                   \
        }
        CNNRT_LOAD(0, c00, c01) CNNRT_LOAD(1, c10, c11) CNNRT_LOAD(2, c20, c21)
        CNNRT_LOAD(3, c30, c31) CNNRT_LOAD(4, c40, c41) CNNRT_LOAD(5, c50, c51)
        CNNRT_LOAD(6, c60, c61) CNNRT_LOAD(7, c70, c71)
#undef CNNRT_LOAD
    }
    if (nr <= 16) {
        /* the last panel of a row of tiles: its upper 16 columns are padding */
        for (k = 0; k < kc; k++) {
            const __m512 b0 = _mm512_loadu_ps(b);
            _mm_prefetch((const char *)(a + 16 * CNNRT_MR), _MM_HINT_T0);
            c00 = _mm512_fmadd_ps(_mm512_set1_ps(a[0]), b0, c00);
            c10 = _mm512_fmadd_ps(_mm512_set1_ps(a[1]), b0, c10);
            c20 = _mm512_fmadd_ps(_mm512_set1_ps(a[2]), b0, c20);
            c30 = _mm512_fmadd_ps(_mm512_set1_ps(a[3]), b0, c30);
            c40 = _mm512_fmadd_ps(_mm512_set1_ps(a[4]), b0, c40);
            c50 = _mm512_fmadd_ps(_mm512_set1_ps(a[5]), b0, c50);
            c60 = _mm512_fmadd_ps(_mm512_set1_ps(a[6]), b0, c60);
            c70 = _mm512_fmadd_ps(_mm512_set1_ps(a[7]), b0, c70);
            a += CNNRT_MR;
            b += 32;
        }
        kc = 0;
    }
    for (k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_loadu_ps(b);
        const __m512 b1 = _mm512_loadu_ps(b + 16);
        __m512 av;
        /* A panels stream from L2: fetch 16 steps ahead */
        _mm_prefetch((const char *)(a + 16 * CNNRT_MR), _MM_HINT_T0);
        av = _mm512_set1_ps(a[0]); c00 = _mm512_fmadd_ps(av, b0, c00); c01 = _mm512_fmadd_ps(av, b1, c01);
        av = _mm512_set1_ps(a[1]); c10 = _mm512_fmadd_ps(av, b0, c10); c11 = _mm512_fmadd_ps(av, b1, c11);
        av = _mm512_set1_ps(a[2]); c20 = _mm512_fmadd_ps(av, b0, c20); c21 = _mm512_fmadd_ps(av, b1, c21);
        av = _mm512_set1_ps(a[3]); c30 = _mm512_fmadd_ps(av, b0, c30); c31 = _mm512_fmadd_ps(av, b1, c31);
        av = _mm512_set1_ps(a[4]); c40 = _mm512_fmadd_ps(av, b0, c40); c41 = _mm512_fmadd_ps(av, b1, c41);
        av = _mm512_set1_ps(a[5]); c50 = _mm512_fmadd_ps(av, b0, c50); c51 = _mm512_fmadd_ps(av, b1, c51);
        av = _mm512_set1_ps(a[6]); c60 = _mm512_fmadd_ps(av, b0, c60); c61 = _mm512_fmadd_ps(av, b1, c61);
        av = _mm512_set1_ps(a[7]); c70 = _mm512_fmadd_ps(av, b0, c70); c71 = _mm512_fmadd_ps(av, b1, c71);
        a += CNNRT_MR;
        b += 32;
    }
    {
        const __m512 rows[16] = {c00, c01, c10, c11, c20, c21, c30, c31,
                                 c40, c41, c50, c51, c60, c61, c70, c71};
        cnnrt_tile_store_avx512(rows, mr, nr, m0, m1, c, ldc, bias, last, act);
    }
}

__attribute__((target("avx512f")))
static void f32_gemm_ukernel_8x32_ind__avx512(size_t kc, const float *a, const float *b,
                                              const ptrdiff_t *off, float *c, size_t mr,
                                              size_t nr, const float *bias, int first,
                                              int last, int act)
{
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71;
    const __mmask16 m0 = cnnrt_cols_mask(nr, 0), m1 = cnnrt_cols_mask(nr, 16);
    size_t k;
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm512_setzero_ps();
    c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = _mm512_setzero_ps();
    if (!first) {
#define CNNRT_LOAD(R, X0, X1)                                                   \
        if (R < mr) {                                                           \
            X0 = _mm512_loadu_ps(c + R * 32);                                   \
            X1 = _mm512_loadu_ps(c + R * 32 + 16);                              \
        }
        CNNRT_LOAD(0, c00, c01) CNNRT_LOAD(1, c10, c11) CNNRT_LOAD(2, c20, c21)
        CNNRT_LOAD(3, c30, c31) CNNRT_LOAD(4, c40, c41) CNNRT_LOAD(5, c50, c51)
        CNNRT_LOAD(6, c60, c61) CNNRT_LOAD(7, c70, c71)
#undef CNNRT_LOAD
    }
#define CNNRT_STEP(B0, B1)                                                      \
        {                                                                       \
            const __m512 b0 = B0, b1 = B1;                                      \
            __m512 av;                                                          \
            av = _mm512_set1_ps(a[0]); c00 = _mm512_fmadd_ps(av, b0, c00); c01 = _mm512_fmadd_ps(av, b1, c01); \
            av = _mm512_set1_ps(a[1]); c10 = _mm512_fmadd_ps(av, b0, c10); c11 = _mm512_fmadd_ps(av, b1, c11); \
            av = _mm512_set1_ps(a[2]); c20 = _mm512_fmadd_ps(av, b0, c20); c21 = _mm512_fmadd_ps(av, b1, c21); \
            av = _mm512_set1_ps(a[3]); c30 = _mm512_fmadd_ps(av, b0, c30); c31 = _mm512_fmadd_ps(av, b1, c31); \
            av = _mm512_set1_ps(a[4]); c40 = _mm512_fmadd_ps(av, b0, c40); c41 = _mm512_fmadd_ps(av, b1, c41); \
            av = _mm512_set1_ps(a[5]); c50 = _mm512_fmadd_ps(av, b0, c50); c51 = _mm512_fmadd_ps(av, b1, c51); \
            av = _mm512_set1_ps(a[6]); c60 = _mm512_fmadd_ps(av, b0, c60); c61 = _mm512_fmadd_ps(av, b1, c61); \
            av = _mm512_set1_ps(a[7]); c70 = _mm512_fmadd_ps(av, b0, c70); c71 = _mm512_fmadd_ps(av, b1, c71); \
            a += CNNRT_MR;                                                      \
        }
    if (nr == 32) {
        for (k = 0; k < kc; k++) {
            const float *bk = b + off[k];
            CNNRT_STEP(_mm512_loadu_ps(bk), _mm512_loadu_ps(bk + 16))
        }
    } else {
        for (k = 0; k < kc; k++) {
            const float *bk = b + off[k];
            CNNRT_STEP(_mm512_maskz_loadu_ps(m0, bk), _mm512_maskz_loadu_ps(m1, bk + 16))
        }
    }
#undef CNNRT_STEP
    {
        /* the whole tile is stored: every column, whatever nr */
        const __m512 rows[16] = {c00, c01, c10, c11, c20, c21, c30, c31,
                                 c40, c41, c50, c51, c60, c61, c70, c71};
        cnnrt_tile_store_avx512(rows, mr, 32, (__mmask16)0xFFFF, (__mmask16)0xFFFF, c, 32,
                                bias, last, act);
    }
}

/* The eight positions' first taps a0..a7 of a row micro-kernel: as apart,
 * rows past the run repeating row 0. */
#define CNNRT_ROWS_POINTERS                                                     \
    const float *const a0 = a;                                                  \
    const float *const a1 = a + (mr > 1 ? 1 : 0) * as;                          \
    const float *const a2 = a + (mr > 2 ? 2 : 0) * as;                          \
    const float *const a3 = a + (mr > 3 ? 3 : 0) * as;                          \
    const float *const a4 = a + (mr > 4 ? 4 : 0) * as;                          \
    const float *const a5 = a + (mr > 5 ? 5 : 0) * as;                          \
    const float *const a6 = a + (mr > 6 ? 6 : 0) * as;                          \
    const float *const a7 = a + (mr > 7 ? 7 : 0) * as;

__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_rows_8x32_avx512(size_t kc, const float *a, const ptrdiff_t *off,
                                          const ptrdiff_t as, size_t mr, const float *b,
                                          float *c, int first, const float *bias, int act,
                                          float *y, ptrdiff_t ys, size_t nb)
{
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71;
    CNNRT_ROWS_POINTERS
    size_t k;
    if (first) {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm512_setzero_ps();
        c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = _mm512_setzero_ps();
    } else {
        c00 = _mm512_loadu_ps(c + 0); c01 = _mm512_loadu_ps(c + 16);
        c10 = _mm512_loadu_ps(c + 32); c11 = _mm512_loadu_ps(c + 48);
        c20 = _mm512_loadu_ps(c + 64); c21 = _mm512_loadu_ps(c + 80);
        c30 = _mm512_loadu_ps(c + 96); c31 = _mm512_loadu_ps(c + 112);
        c40 = _mm512_loadu_ps(c + 128); c41 = _mm512_loadu_ps(c + 144);
        c50 = _mm512_loadu_ps(c + 160); c51 = _mm512_loadu_ps(c + 176);
        c60 = _mm512_loadu_ps(c + 192); c61 = _mm512_loadu_ps(c + 208);
        c70 = _mm512_loadu_ps(c + 224); c71 = _mm512_loadu_ps(c + 240);
    }
    for (k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_loadu_ps(b);
        const __m512 b1 = _mm512_loadu_ps(b + 16);
        const ptrdiff_t o = off[k];
        __m512 av;
        av = _mm512_set1_ps(a0[o]); c00 = _mm512_fmadd_ps(av, b0, c00); c01 = _mm512_fmadd_ps(av, b1, c01);
        av = _mm512_set1_ps(a1[o]); c10 = _mm512_fmadd_ps(av, b0, c10); c11 = _mm512_fmadd_ps(av, b1, c11);
        av = _mm512_set1_ps(a2[o]); c20 = _mm512_fmadd_ps(av, b0, c20); c21 = _mm512_fmadd_ps(av, b1, c21);
        av = _mm512_set1_ps(a3[o]); c30 = _mm512_fmadd_ps(av, b0, c30); c31 = _mm512_fmadd_ps(av, b1, c31);
        av = _mm512_set1_ps(a4[o]); c40 = _mm512_fmadd_ps(av, b0, c40); c41 = _mm512_fmadd_ps(av, b1, c41);
        av = _mm512_set1_ps(a5[o]); c50 = _mm512_fmadd_ps(av, b0, c50); c51 = _mm512_fmadd_ps(av, b1, c51);
        av = _mm512_set1_ps(a6[o]); c60 = _mm512_fmadd_ps(av, b0, c60); c61 = _mm512_fmadd_ps(av, b1, c61);
        av = _mm512_set1_ps(a7[o]); c70 = _mm512_fmadd_ps(av, b0, c70); c71 = _mm512_fmadd_ps(av, b1, c71);
        b += 32;
    }
    if (y != NULL) {  /* channel-blocked, with bias and activation */
        const __m512 bv0 = _mm512_loadu_ps(bias);
        const __m512 bv1 = nb > 1 ? _mm512_loadu_ps(bias + 16) : bv0;
#define CNNRT_ROWS_C16(R)                                                        \
        if ((R) < mr) {                                                         \
            _mm512_storeu_ps(y + (R) * 16, cnnrt_act_avx512(_mm512_add_ps(c##R##0, bv0), act)); \
            if (nb > 1)                                                         \
                _mm512_storeu_ps(y + ys + (R) * 16,                            \
                                 cnnrt_act_avx512(_mm512_add_ps(c##R##1, bv1), act)); \
        }
        CNNRT_ROWS_C16(0) CNNRT_ROWS_C16(1) CNNRT_ROWS_C16(2) CNNRT_ROWS_C16(3)
        CNNRT_ROWS_C16(4) CNNRT_ROWS_C16(5) CNNRT_ROWS_C16(6) CNNRT_ROWS_C16(7)
#undef CNNRT_ROWS_C16
        return;
    }
    _mm512_storeu_ps(c + 0, c00); _mm512_storeu_ps(c + 16, c01);
    _mm512_storeu_ps(c + 32, c10); _mm512_storeu_ps(c + 48, c11);
    _mm512_storeu_ps(c + 64, c20); _mm512_storeu_ps(c + 80, c21);
    _mm512_storeu_ps(c + 96, c30); _mm512_storeu_ps(c + 112, c31);
    _mm512_storeu_ps(c + 128, c40); _mm512_storeu_ps(c + 144, c41);
    _mm512_storeu_ps(c + 160, c50); _mm512_storeu_ps(c + 176, c51);
    _mm512_storeu_ps(c + 192, c60); _mm512_storeu_ps(c + 208, c61);
    _mm512_storeu_ps(c + 224, c70); _mm512_storeu_ps(c + 240, c71);
}

/* With a stride of 1, 2 or 4, the eight broadcasts of a step are one base
 * and index at fixed displacements (rows past the run repeat row 0);
 * otherwise eight row pointers.  BODY is compiled for each stride and for
 * runs of 4 to 8 positions. */
#define CNNRT_ROWS_ARGS c, first, bias, act, y, ys, nb
#define CNNRT_ROWS_MR(BODY, AS)                                                 \
    switch (mr) {                                                               \
    case 8: BODY(kc, a, off, AS, 8, b, CNNRT_ROWS_ARGS); return;                \
    case 7: BODY(kc, a, off, AS, 7, b, CNNRT_ROWS_ARGS); return;                \
    case 6: BODY(kc, a, off, AS, 6, b, CNNRT_ROWS_ARGS); return;                \
    case 5: BODY(kc, a, off, AS, 5, b, CNNRT_ROWS_ARGS); return;                \
    case 4: BODY(kc, a, off, AS, 4, b, CNNRT_ROWS_ARGS); return;                \
    default: break;                                                             \
    }
#define CNNRT_ROWS_DISPATCH(BODY)                                               \
    if (as == 1) {                                                              \
        CNNRT_ROWS_MR(BODY, 1)                                                  \
    } else if (as == 2) {                                                       \
        CNNRT_ROWS_MR(BODY, 2)                                                  \
    } else if (as == 4) {                                                       \
        CNNRT_ROWS_MR(BODY, 4)                                                  \
    }                                                                           \
    BODY(kc, a, off, as, mr, b, CNNRT_ROWS_ARGS);
/* The tile variants: no epilogue (y NULL, compiled out). */
#define CNNRT_ROWS_TILE                                                         \
    const float *const bias = NULL;                                             \
    const int act = 0;                                                          \
    float *const y = NULL;                                                      \
    const ptrdiff_t ys = 0;                                                     \
    const size_t nb = 0;
/* The channel-blocked variants: all the taps at once, no tile. */
#define CNNRT_ROWS_NO_TILE                                                      \
    float *const c = NULL;                                                      \
    const int first = 1;

/* One step of the 8x48 tile: position R's tap times the three B vectors. */
#define CNNRT_ROWS48_FMA(R, AR)                                                  \
    av = _mm512_set1_ps((AR)[o]);                                               \
    c##R##0 = _mm512_fmadd_ps(av, b0, c##R##0);                                 \
    c##R##1 = _mm512_fmadd_ps(av, b1, c##R##1);                                 \
    c##R##2 = _mm512_fmadd_ps(av, b2, c##R##2);
#define CNNRT_ROWS48_LOAD(R)                                                     \
    c##R##0 = _mm512_loadu_ps(c + R * 48);                                      \
    c##R##1 = _mm512_loadu_ps(c + R * 48 + 16);                                 \
    c##R##2 = _mm512_loadu_ps(c + R * 48 + 32);
#define CNNRT_ROWS48_STORE(R)                                                    \
    _mm512_storeu_ps(c + R * 48, c##R##0);                                      \
    _mm512_storeu_ps(c + R * 48 + 16, c##R##1);                                 \
    _mm512_storeu_ps(c + R * 48 + 32, c##R##2);

__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_rows_8x48_avx512(size_t kc, const float *a, const ptrdiff_t *off,
                                          const ptrdiff_t as, size_t mr, const float *b,
                                          float *c, int first, const float *bias, int act,
                                          float *y, ptrdiff_t ys, size_t nb)
{
    __m512 c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32;
    __m512 c40, c41, c42, c50, c51, c52, c60, c61, c62, c70, c71, c72;
    CNNRT_ROWS_POINTERS
    size_t k;
    if (first) {
        c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = _mm512_setzero_ps();
        c30 = c31 = c32 = c40 = c41 = c42 = c50 = c51 = c52 = _mm512_setzero_ps();
        c60 = c61 = c62 = c70 = c71 = c72 = _mm512_setzero_ps();
    } else {
        CNNRT_ROWS48_LOAD(0) CNNRT_ROWS48_LOAD(1) CNNRT_ROWS48_LOAD(2) CNNRT_ROWS48_LOAD(3)
        CNNRT_ROWS48_LOAD(4) CNNRT_ROWS48_LOAD(5) CNNRT_ROWS48_LOAD(6) CNNRT_ROWS48_LOAD(7)
    }
    for (k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_loadu_ps(b);
        const __m512 b1 = _mm512_loadu_ps(b + 16);
        const __m512 b2 = _mm512_loadu_ps(b + 32);
        const ptrdiff_t o = off[k];
        __m512 av;
        CNNRT_ROWS48_FMA(0, a0) CNNRT_ROWS48_FMA(1, a1) CNNRT_ROWS48_FMA(2, a2)
        CNNRT_ROWS48_FMA(3, a3) CNNRT_ROWS48_FMA(4, a4) CNNRT_ROWS48_FMA(5, a5)
        CNNRT_ROWS48_FMA(6, a6) CNNRT_ROWS48_FMA(7, a7)
        b += 48;
    }
    if (y != NULL) {  /* channel-blocked, with bias and activation */
        const __m512 bv0 = _mm512_loadu_ps(bias);
        const __m512 bv1 = nb > 1 ? _mm512_loadu_ps(bias + 16) : bv0;
        const __m512 bv2 = nb > 2 ? _mm512_loadu_ps(bias + 32) : bv0;
#define CNNRT_ROWS48_C16(R)                                                      \
        if ((R) < mr) {                                                         \
            _mm512_storeu_ps(y + (R) * 16, cnnrt_act_avx512(_mm512_add_ps(c##R##0, bv0), act)); \
            if (nb > 1)                                                         \
                _mm512_storeu_ps(y + ys + (R) * 16,                            \
                                 cnnrt_act_avx512(_mm512_add_ps(c##R##1, bv1), act)); \
            if (nb > 2)                                                         \
                _mm512_storeu_ps(y + 2 * ys + (R) * 16,                        \
                                 cnnrt_act_avx512(_mm512_add_ps(c##R##2, bv2), act)); \
        }
        CNNRT_ROWS48_C16(0) CNNRT_ROWS48_C16(1) CNNRT_ROWS48_C16(2) CNNRT_ROWS48_C16(3)
        CNNRT_ROWS48_C16(4) CNNRT_ROWS48_C16(5) CNNRT_ROWS48_C16(6) CNNRT_ROWS48_C16(7)
#undef CNNRT_ROWS48_C16
        return;
    }
    CNNRT_ROWS48_STORE(0) CNNRT_ROWS48_STORE(1) CNNRT_ROWS48_STORE(2) CNNRT_ROWS48_STORE(3)
    CNNRT_ROWS48_STORE(4) CNNRT_ROWS48_STORE(5) CNNRT_ROWS48_STORE(6) CNNRT_ROWS48_STORE(7)
}
#undef CNNRT_ROWS48_FMA
#undef CNNRT_ROWS48_LOAD
#undef CNNRT_ROWS48_STORE

/* Both entry points of a tile width W: the tile kernel (ukernel_rows,
 * ukernel_rows48) and the channel-blocked one (rows_c16, rows48_c16). */
#define CNNRT_ROWS_ENTRIES(W)                                                   \
    __attribute__((target("avx512f")))                                          \
    static void f32_gemm_ukernel_8x##W##_rows__avx512(                          \
        size_t kc, const float *a, const ptrdiff_t *off, ptrdiff_t as, size_t mr, \
        const float *b, float *c, int first)                                    \
    {                                                                           \
        CNNRT_ROWS_TILE                                                         \
        CNNRT_ROWS_DISPATCH(cnnrt_rows_8x##W##_avx512)                          \
    }                                                                           \
    __attribute__((target("avx512f")))                                          \
    static void f32_rows_c16_8x##W##__avx512(                                   \
        size_t kc, const float *a, const ptrdiff_t *off, ptrdiff_t as, size_t mr, \
        const float *b, const float *bias, int act, float *y, ptrdiff_t ys, size_t nb) \
    {                                                                           \
        CNNRT_ROWS_NO_TILE                                                      \
        CNNRT_ROWS_DISPATCH(cnnrt_rows_8x##W##_avx512)                          \
    }
CNNRT_ROWS_ENTRIES(32)
CNNRT_ROWS_ENTRIES(48)
#undef CNNRT_ROWS_ENTRIES
#undef CNNRT_ROWS_TILE
#undef CNNRT_ROWS_NO_TILE
#undef CNNRT_ROWS_ARGS
#undef CNNRT_ROWS_DISPATCH
#undef CNNRT_ROWS_MR
#undef CNNRT_ROWS_POINTERS

/* The in-lane half of a transpose of n rows (n a multiple of 4): for each
 * group of four rows r[i..i+3], out[i + k] lane 4g + j holds what r[i + j]
 * held in lane 4g + k (a 4x4 transpose inside every 128-bit lane). */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_transpose_lanes4_avx512(const __m512 *r, __m512 *out, int n)
{
    __m512 t[4];
    int i;
    for (i = 0; i < n; i += 4) {
        t[0] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        t[2] = _mm512_unpacklo_ps(r[i + 2], r[i + 3]);
        t[3] = _mm512_unpackhi_ps(r[i + 2], r[i + 3]);
        out[i] = _mm512_shuffle_ps(t[0], t[2], 0x44);
        out[i + 1] = _mm512_shuffle_ps(t[0], t[2], 0xEE);
        out[i + 2] = _mm512_shuffle_ps(t[1], t[3], 0x44);
        out[i + 3] = _mm512_shuffle_ps(t[1], t[3], 0xEE);
    }
}

/* 16x16 transpose: on return r[j] lane i holds what r[i] lane j held. */
__attribute__((target("avx512f"), always_inline))
static inline void cnnrt_transpose16_avx512(__m512 r[16])
{
    __m512 t[16];
    int i;
    cnnrt_transpose_lanes4_avx512(r, r, 16);
    for (i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

#endif /* CNNRT_X86 */

/* ------------------------------------------------------ pointwise packing
 *
 * B panels of a 1x1 stride-1 convolution: taps are input channels, whose
 * planes lie HW floats apart, so one block reads kc separate streams, more
 * than the hardware prefetchers follow.  Copying a block also prefetches the
 * same taps' next `ahead` floats (the next block of positions).
 */
static void cnnrt_pack_pointwise(const float *x, size_t HW, size_t q0, size_t kc, size_t p0,
                                 size_t nr, size_t nr_full, size_t ahead, float *dst)
{
    size_t q, j, L, i;
    for (q = 0; q < kc; q++) {
        const float *src = x + (q0 + q) * HW + p0;
        for (i = 0; i < ahead && p0 + nr + i < HW; i += 16)
            __builtin_prefetch(src + nr + i, 0, 2);
        for (j = 0; j < nr; j += nr_full) {
            float *out = dst + (j / nr_full) * kc * nr_full + q * nr_full;
            L = nr - j < nr_full ? nr - j : nr_full;
            if (L == 32 && nr_full == 32) {
                const float *from = src + j;
                for (i = 0; i < 32; i++)
                    out[i] = from[i];
            } else {
                memcpy(out, src + j, L * sizeof(float));
                memset(out + L, 0, (nr_full - L) * sizeof(float));
            }
        }
    }
}

/* Copy rows of an MR x 32 tile out in segments: for each row r < mr and
 * segment t, len[t] floats from tile[r * 32 + src[t]] to
 * dst[r * ldd + doff[t]].  (In-place convolutions: a tile of grid positions
 * covers pieces of several output rows.) */
static inline void cnnrt_scatter_tile(const float *tile, size_t mr, float *dst, size_t ldd,
                                      const ptrdiff_t *src, const ptrdiff_t *doff,
                                      const ptrdiff_t *len, size_t nseg)
{
    size_t r, t;
    ptrdiff_t i;
    for (r = 0; r < mr; r++)
        for (t = 0; t < nseg; t++) {
            const float *a = tile + r * 32 + src[t];
            float *b = dst + r * ldd + doff[t];
            for (i = 0; i < len[t]; i++)
                b[i] = a[i];
        }
}

/* Fetch the cache lines of floats [from, to) of `rows` rows ldd apart into
 * L2 ahead of the stores that will fill them (tiles stored transposed write
 * 32 bytes to each of 32 rows, and each of those stores would otherwise
 * wait for its line). */
static inline void cnnrt_prefetch_rows(const float *base, size_t ldd, size_t rows, size_t from,
                                       size_t to)
{
    size_t r;
    for (r = 0; r < rows; r++) {
        const char *p = (const char *)((size_t)(base + r * ldd + from) & ~(size_t)63);
        const char *end = (const char *)(base + r * ldd + to);
        for (; p < end; p += 64)
            __builtin_prefetch(p, 0, 2);
    }
}

/* ------------------------------------------------- transposed tile store
 *
 * The transposed convolution orientation computes an 8 x NR tile whose rows
 * are output positions and whose columns are output channels.  This stores
 * it transposed: dst[j * ldd + r] = act(tile[r * ldt + j] + bias[j]) for
 * r < mr, j < nr, where ldt is the tile's row stride (32, or 48 for the
 * 8x48 row kernels).  Same arithmetic in every variant (one add, then the
 * activation).
 */
typedef void (*cnnrt_store_t_fn)(const float *tile, size_t mr, size_t nr, const float *bias,
                                 int act, float *dst, size_t ldd, size_t ldt);

static void f32_store_t__scalar(const float *tile, size_t mr, size_t nr, const float *bias,
                                int act, float *dst, size_t ldd, size_t ldt)
{
    size_t j, r;
    for (j = 0; j < nr; j++) {
        const float bv = bias ? bias[j] : 0.0f;
        float *d = dst + j * ldd;
        for (r = 0; r < mr; r++)
            d[r] = cnnrt_act_scalar(tile[r * ldt + j] + bv, act);
    }
}

#ifdef CNNRT_X86
/* 8x8 transpose: on return r[j] lane i holds what r[i] lane j held. */
__attribute__((target("avx2,fma"), always_inline))
static inline void cnnrt_transpose8_avx2(__m256 r[8])
{
    __m256 u[8], t[8];
    u[0] = _mm256_unpacklo_ps(r[0], r[1]); u[1] = _mm256_unpackhi_ps(r[0], r[1]);
    u[2] = _mm256_unpacklo_ps(r[2], r[3]); u[3] = _mm256_unpackhi_ps(r[2], r[3]);
    u[4] = _mm256_unpacklo_ps(r[4], r[5]); u[5] = _mm256_unpackhi_ps(r[4], r[5]);
    u[6] = _mm256_unpacklo_ps(r[6], r[7]); u[7] = _mm256_unpackhi_ps(r[6], r[7]);
    t[0] = _mm256_shuffle_ps(u[0], u[2], 0x44); t[1] = _mm256_shuffle_ps(u[0], u[2], 0xEE);
    t[2] = _mm256_shuffle_ps(u[1], u[3], 0x44); t[3] = _mm256_shuffle_ps(u[1], u[3], 0xEE);
    t[4] = _mm256_shuffle_ps(u[4], u[6], 0x44); t[5] = _mm256_shuffle_ps(u[4], u[6], 0xEE);
    t[6] = _mm256_shuffle_ps(u[5], u[7], 0x44); t[7] = _mm256_shuffle_ps(u[5], u[7], 0xEE);
    r[0] = _mm256_permute2f128_ps(t[0], t[4], 0x20); r[1] = _mm256_permute2f128_ps(t[1], t[5], 0x20);
    r[2] = _mm256_permute2f128_ps(t[2], t[6], 0x20); r[3] = _mm256_permute2f128_ps(t[3], t[7], 0x20);
    r[4] = _mm256_permute2f128_ps(t[0], t[4], 0x31); r[5] = _mm256_permute2f128_ps(t[1], t[5], 0x31);
    r[6] = _mm256_permute2f128_ps(t[2], t[6], 0x31); r[7] = _mm256_permute2f128_ps(t[3], t[7], 0x31);
}

__attribute__((target("avx2,fma")))
static void f32_store_t__avx2(const float *tile, size_t mr, size_t nr, const float *bias,
                              int act, float *dst, size_t ldd, size_t ldt)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)mr), lanes);
    size_t jb, j, r;
    for (jb = 0; jb < nr; jb += 8) {
        __m256 c[8];
        const size_t nj = nr - jb < 8 ? nr - jb : 8;
        for (r = 0; r < 8; r++)
            c[r] = _mm256_loadu_ps(tile + r * ldt + jb);
        cnnrt_transpose8_avx2(c); /* c[j] = column jb + j of the tile */
        for (j = 0; j < nj; j++) {
            float *d = dst + (jb + j) * ldd;
            __m256 v = _mm256_add_ps(c[j], _mm256_set1_ps(bias ? bias[jb + j] : 0.0f));
            v = cnnrt_act_avx2(v, act);
            if (mr == 8)
                _mm256_storeu_ps(d, v);
            else
                _mm256_maskstore_ps(d, keep, v);
            if (act == CNNRT_ACT_SIGMOID || act == CNNRT_ACT_TANH)
                for (r = 0; r < mr; r++)
                    d[r] = cnnrt_act_scalar(d[r], act);
        }
    }
}
#endif

/* AVX-512: 16 channels at a time.  Bias and activation are applied to the
 * tile's rows (positions) before an 8x16 transpose: two in-lane shuffle
 * stages leave four positions of one channel in each 128-bit lane, and a
 * lane shuffle pairs positions 0-3 with 4-7, so each register then holds
 * two channels' eight positions; the upper channel is stored from lanes
 * 8-15 by a masked store shifted back by 8. */
__attribute__((target("avx512f")))
static void f32_store_t__avx512(const float *tile, size_t mr, size_t nr, const float *bias,
                                int act, float *dst, size_t ldd, size_t ldt)
{
    const __mmask16 lo = (__mmask16)((1u << mr) - 1u), hi = (__mmask16)(lo << 8);
    size_t jb, j, r, k;
    for (jb = 0; jb < nr; jb += 16) {
        const size_t nj = nr - jb < 16 ? nr - jb : 16;
        const __mmask16 cm = (__mmask16)(nj >= 16 ? 0xFFFFu : (1u << nj) - 1u);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(cm, bias + jb) : _mm512_setzero_ps();
        __m512 x[8], u[8];
        for (r = 0; r < 8; r++)
            x[r] = cnnrt_act_avx512(_mm512_add_ps(_mm512_loadu_ps(tile + r * ldt + jb), bv),
                                    act);
        /* u[k] (k < 4): lane group g holds channel 4g + k, positions 0-3;
         * u[k + 4] the same channels, positions 4-7 */
        cnnrt_transpose_lanes4_avx512(x, u, 8);
        for (k = 0; k < 4; k++) {
            /* groups 0, 1 then 2, 3: [u_k.g, u_k+4.g, u_k.g+1, u_k+4.g+1] */
            const __m512 a = _mm512_shuffle_f32x4(u[k], u[k + 4], 0x44);
            const __m512 b = _mm512_shuffle_f32x4(u[k], u[k + 4], 0xEE);
            const __m512 pair[2] = {_mm512_shuffle_f32x4(a, a, 0xD8),
                                    _mm512_shuffle_f32x4(b, b, 0xD8)};
            for (j = 0; j < 2; j++) {
                const size_t c0 = 8 * j + k, c1 = 8 * j + 4 + k; /* channels in lanes 0-7, 8-15 */
                if (c0 < nj)
                    _mm512_mask_storeu_ps(dst + (jb + c0) * ldd, lo, pair[j]);
                if (c1 < nj)
                    _mm512_mask_storeu_ps(dst + (jb + c1) * ldd - 8, hi, pair[j]);
            }
        }
        if (act == CNNRT_ACT_SIGMOID || act == CNNRT_ACT_TANH)
            for (j = 0; j < nj; j++)
                for (r = 0; r < mr; r++)
                    dst[(jb + j) * ldd + r] = cnnrt_act_scalar(
                        tile[r * ldt + jb + j] + (bias ? bias[jb + j] : 0.0f), act);
    }
}

static cnnrt_store_t_fn cnnrt_store_t_select(int isa)
{
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512))
        return f32_store_t__avx512;
    if (isa != CNNRT_ISA_SCALAR && cnnrt_isa_supported(CNNRT_ISA_AVX2))
        return f32_store_t__avx2;
#endif
    (void)isa;
    return f32_store_t__scalar;
}

/* ------------------------------------------------------------- dispatch */

typedef struct {
    int isa;
    size_t nr;
    cnnrt_gemm_ukernel ukernel;
    cnnrt_gemm_ukernel_ind ukernel_ind;
    cnnrt_gemm_ukernel_rows ukernel_rows;
    cnnrt_gemm_ukernel_rows ukernel_rows48;
    cnnrt_rows_c16_fn rows_c16;
    cnnrt_rows_c16_fn rows48_c16;
    const char *name;
} cnnrt_gemm_config;

static int cnnrt_isa_supported(int isa)
{
    if (isa == CNNRT_ISA_SCALAR)
        return 1;
#ifdef CNNRT_X86
    __builtin_cpu_init();
    if (isa == CNNRT_ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == CNNRT_ISA_AVX512)
        return __builtin_cpu_supports("avx512f");
#endif
    return 0;
}

static int cnnrt_isa_best(void)
{
    if (cnnrt_isa_supported(CNNRT_ISA_AVX512)) return CNNRT_ISA_AVX512;
    if (cnnrt_isa_supported(CNNRT_ISA_AVX2)) return CNNRT_ISA_AVX2;
    return CNNRT_ISA_SCALAR;
}

static cnnrt_gemm_config cnnrt_gemm_select(int isa)
{
    cnnrt_gemm_config cfg;
    cfg.isa = CNNRT_ISA_SCALAR;
    cfg.nr = 32;
    cfg.ukernel = f32_gemm_ukernel_8x32__scalar;
    cfg.ukernel_ind = f32_gemm_ukernel_8x32_ind__scalar;
    cfg.ukernel_rows = f32_gemm_ukernel_8x32_rows__scalar;
    cfg.ukernel_rows48 = f32_gemm_ukernel_8x48_rows__scalar;
    cfg.rows_c16 = NULL;
    cfg.rows48_c16 = NULL;
    cfg.name = "f32_gemm_ukernel_8x32__scalar";
#ifdef CNNRT_X86
    if (isa == CNNRT_ISA_AVX512 && cnnrt_isa_supported(CNNRT_ISA_AVX512)) {
        cfg.isa = CNNRT_ISA_AVX512;
        cfg.nr = 32;
        cfg.ukernel = f32_gemm_ukernel_8x32__avx512;
        cfg.ukernel_ind = f32_gemm_ukernel_8x32_ind__avx512;
        cfg.ukernel_rows = f32_gemm_ukernel_8x32_rows__avx512;
        cfg.ukernel_rows48 = f32_gemm_ukernel_8x48_rows__avx512;
        cfg.rows_c16 = f32_rows_c16_8x32__avx512;
        cfg.rows48_c16 = f32_rows_c16_8x48__avx512;
        cfg.name = "f32_gemm_ukernel_8x32__avx512";
    } else if (isa == CNNRT_ISA_AVX2 && cnnrt_isa_supported(CNNRT_ISA_AVX2)) {
        cfg.isa = CNNRT_ISA_AVX2;
        cfg.nr = 32;
        cfg.ukernel = f32_gemm_ukernel_8x32__avx2;
        cfg.ukernel_ind = f32_gemm_ukernel_8x32_ind__avx2;
        cfg.ukernel_rows = f32_gemm_ukernel_8x32_rows__avx2;
        cfg.ukernel_rows48 = f32_gemm_ukernel_8x48_rows__avx2;
        cfg.name = "f32_gemm_ukernel_8x32__avx2";
    }
#endif
    return cfg;
}

#endif /* CNNRT_F32_GEMM_H */
