/*
 * Strided GEMM for the training kernels (module cnnrt._train).
 *
 *   C[M, N] = A[M, K] * B[K, N]            (accumulate == 0)
 *   C[M, N] = C + A[M, K] * B[K, N]        (accumulate == 1)
 *   and, when bias != NULL, bias[i] is added to row i at the end.
 *
 * A and B are addressed through strides, so either may be a transposed view
 * without a copy: A(i, k) = a[i * ars + k * acs], B(k, j) = b[k * brs + j * bcs].
 * C is row-major with leading dimension ldc.
 *
 * float: the operands are packed into the panels the runtime's micro-kernels
 * expect (f32_gemm.h: A panels of kc x MR floats, B panels of kc x NR floats,
 * zero-padded), and every MR x NR tile of C is computed by the selected
 * micro-kernel.  Blocks of TR_KC steps and TR_NC columns keep the packed B
 * block in the L2 cache.  The caller passes a work buffer of
 * cnnrt_tr_gemm_work() floats (one per thread).
 *
 * double: a plain loop.  The float64 path exists so that gradient checks
 * can compare the backward passes against finite differences of the forward
 * pass in double precision; it follows the same index arithmetic.
 *
 * Every element of C sums its K products in ascending k order, so the result
 * does not depend on how a caller splits M or N between threads.
 */
#ifndef CNNRT_TRAIN_GEMM_H
#define CNNRT_TRAIN_GEMM_H

#include <stddef.h>
#include <string.h>
#include "f32_gemm.h"

#define TR_KC 256
#define TR_NC 1024

static inline size_t cnnrt_tr_gemm_work(void)
{
    return (size_t)TR_KC * (TR_NC + CNNRT_MR);
}

/* Pack B(pc .. pc+kc, jc .. jc+nc) into NR-wide panels, step-major. */
static void cnnrt_tr_pack_b(const float *b, ptrdiff_t brs, ptrdiff_t bcs,
                            size_t pc, size_t kc, size_t jc, size_t nc, float *dst)
{
    size_t jp, j, k;
    for (jp = 0; jp < nc; jp += CNNRT_NR) {
        const size_t nr = nc - jp < CNNRT_NR ? nc - jp : CNNRT_NR;
        float *d = dst + jp * kc;
        const float *src = b + (ptrdiff_t)pc * brs + (ptrdiff_t)(jc + jp) * bcs;
        if (bcs == 1) {
            for (k = 0; k < kc; k++) {
                const float *s = src + (ptrdiff_t)k * brs;
                float *dk = d + k * CNNRT_NR;
                for (j = 0; j < nr; j++)
                    dk[j] = s[j];
                for (; j < CNNRT_NR; j++)
                    dk[j] = 0.0f;
            }
        } else {
            /* Column-wise reads are contiguous when brs == 1 (a transposed view). */
            for (j = 0; j < nr; j++) {
                const float *s = src + (ptrdiff_t)j * bcs;
                for (k = 0; k < kc; k++)
                    d[k * CNNRT_NR + j] = s[(ptrdiff_t)k * brs];
            }
            for (k = 0; k < kc; k++)
                for (j = nr; j < CNNRT_NR; j++)
                    d[k * CNNRT_NR + j] = 0.0f;
        }
    }
}

/* Pack A(i .. i+mr, pc .. pc+kc) as one MR-row panel, step-major. */
static void cnnrt_tr_pack_a(const float *a, ptrdiff_t ars, ptrdiff_t acs,
                            size_t i, size_t mr, size_t pc, size_t kc, float *dst)
{
    size_t r, k;
    const float *src = a + (ptrdiff_t)i * ars + (ptrdiff_t)pc * acs;
    if (acs == 1) {
        for (r = 0; r < mr; r++) {
            const float *s = src + (ptrdiff_t)r * ars;
            for (k = 0; k < kc; k++)
                dst[k * CNNRT_MR + r] = s[k];
        }
    } else {
        for (k = 0; k < kc; k++) {
            const float *s = src + (ptrdiff_t)k * acs;
            for (r = 0; r < mr; r++)
                dst[k * CNNRT_MR + r] = s[(ptrdiff_t)r * ars];
        }
    }
    for (k = 0; k < kc; k++)
        for (r = mr; r < CNNRT_MR; r++)
            dst[k * CNNRT_MR + r] = 0.0f;
}

/* ------------------------------------------------------------ B sources */

/* Where the B operand comes from.  STRIDED: any strided matrix.  IM2COL:
 * the im2col matrix of one image (group) without materialising it,
 * B(q, p) = x[c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] (0 in the padding)
 * for tap q = (c*kh + i)*kw + j and output position p = oh*W2 + ow, as the
 * forward pass reads it.  IM2COL_T: its transpose, B(p, q), as the weight
 * gradient reads it.  Packing straight from the image saves a pass over
 * the (kh*kw times larger) im2col matrix. */
enum { CNNRT_TR_B_STRIDED = 0, CNNRT_TR_B_IM2COL = 1, CNNRT_TR_B_IM2COL_T = 2 };

typedef struct {
    int kind;
    const float *b;
    ptrdiff_t brs, bcs;
    const float *x;
    ptrdiff_t H, W, H2, W2, kh, kw, sh, sw, pt, pl, dh, dw;
} cnnrt_tr_bsrc;

/* Outputs o in [*lo, *hi) read input index o*s + off inside [0, size). */
static inline void cnnrt_tr_valid(ptrdiff_t off, ptrdiff_t s, ptrdiff_t size, ptrdiff_t n,
                                  ptrdiff_t *lo, ptrdiff_t *hi)
{
    ptrdiff_t a = off >= 0 ? 0 : (-off + s - 1) / s;
    ptrdiff_t b = size - 1 - off < 0 ? 0 : (size - 1 - off) / s + 1;
    if (a > n) a = n;
    if (b > n) b = n;
    if (b < a) b = a;
    *lo = a;
    *hi = b;
}

/* Write `count` values of tap (c, i, j) for consecutive output positions
 * starting at (oh, ow) to dst[0], dst[step], ...; off = j*dw - pl and
 * [lo, hi) the output columns whose input column is inside the image. */
static inline void cnnrt_tr_tap_run(const cnnrt_tr_bsrc *s, ptrdiff_t c, ptrdiff_t i,
                                    ptrdiff_t off, ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t oh,
                                    ptrdiff_t ow, ptrdiff_t count, float *dst, ptrdiff_t step)
{
    ptrdiff_t o;
    while (count > 0) {
        const ptrdiff_t seg = count < s->W2 - ow ? count : s->W2 - ow;
        const ptrdiff_t end = ow + seg;
        const ptrdiff_t ih = oh * s->sh - s->pt + i * s->dh;
        if (ih < 0 || ih >= s->H) {
            for (o = ow; o < end; o++, dst += step)
                *dst = 0.0f;
        } else {
            const float *row = s->x + (c * s->H + ih) * s->W + off;
            const ptrdiff_t a = lo > ow ? (lo < end ? lo : end) : ow;
            const ptrdiff_t b = hi < end ? (hi > a ? hi : a) : end;
            for (o = ow; o < a; o++, dst += step)
                *dst = 0.0f;
            if (s->sw == 1)
                for (; o < b; o++, dst += step)
                    *dst = row[o];
            else
                for (; o < b; o++, dst += step)
                    *dst = row[o * s->sw];
            for (; o < end; o++, dst += step)
                *dst = 0.0f;
        }
        count -= seg;
        ow = 0;
        oh++;
    }
}

#define CNNRT_TR_MAX_KW 64

static void cnnrt_tr_pack_bsrc(const cnnrt_tr_bsrc *s, size_t pc, size_t kc, size_t jc,
                               size_t nc, float *dst)
{
    size_t jp, j, k;
    ptrdiff_t lo[CNNRT_TR_MAX_KW], hi[CNNRT_TR_MAX_KW], t;
    const ptrdiff_t khw = s->kh * s->kw;
    if (s->kind == CNNRT_TR_B_STRIDED) {
        cnnrt_tr_pack_b(s->b, s->brs, s->bcs, pc, kc, jc, nc, dst);
        return;
    }
    if (s->kw <= CNNRT_TR_MAX_KW)
        for (t = 0; t < s->kw; t++)
            cnnrt_tr_valid(t * s->dw - s->pl, s->sw, s->W, s->W2, &lo[t], &hi[t]);
    for (jp = 0; jp < nc; jp += CNNRT_NR) {
        const size_t nr = nc - jp < CNNRT_NR ? nc - jp : CNNRT_NR;
        float *d = dst + jp * kc;
        if (s->kind == CNNRT_TR_B_IM2COL) {
            /* row k = tap pc + k, columns = positions jc + jp .. jc + jp + nr */
            const ptrdiff_t p0 = (ptrdiff_t)(jc + jp);
            const ptrdiff_t oh0 = p0 / s->W2, ow0 = p0 % s->W2;
            ptrdiff_t q = (ptrdiff_t)pc;
            ptrdiff_t c = q / khw, i = (q % khw) / s->kw, jj = q % s->kw;
            for (k = 0; k < kc; k++) {
                ptrdiff_t l, h;
                const ptrdiff_t off = jj * s->dw - s->pl;
                if (s->kw <= CNNRT_TR_MAX_KW) {
                    l = lo[jj];
                    h = hi[jj];
                } else {
                    cnnrt_tr_valid(off, s->sw, s->W, s->W2, &l, &h);
                }
                cnnrt_tr_tap_run(s, c, i, off, l, h, oh0, ow0, (ptrdiff_t)nr, d + k * CNNRT_NR, 1);
                for (j = nr; j < CNNRT_NR; j++)
                    d[k * CNNRT_NR + j] = 0.0f;
                if (++jj == s->kw) {
                    jj = 0;
                    if (++i == s->kh) {
                        i = 0;
                        c++;
                    }
                }
            }
        } else {
            /* row k = position pc + k, column j = tap jc + jp + j */
            const ptrdiff_t oh0 = (ptrdiff_t)pc / s->W2, ow0 = (ptrdiff_t)pc % s->W2;
            for (j = 0; j < nr; j++) {
                const ptrdiff_t q = (ptrdiff_t)(jc + jp + j);
                const ptrdiff_t c = q / khw, i = (q % khw) / s->kw, jj = q % s->kw;
                const ptrdiff_t off = jj * s->dw - s->pl;
                ptrdiff_t l, h;
                cnnrt_tr_valid(off, s->sw, s->W, s->W2, &l, &h);
                cnnrt_tr_tap_run(s, c, i, off, l, h, oh0, ow0, (ptrdiff_t)kc, d + j, CNNRT_NR);
            }
            for (k = 0; k < kc; k++)
                for (j = nr; j < CNNRT_NR; j++)
                    d[k * CNNRT_NR + j] = 0.0f;
        }
    }
}

/* Floats of A packed whole by cnnrt_tr_pack_a_all: M rounded up to MR, times K. */
static inline size_t cnnrt_tr_packed_a_size(size_t M, size_t K)
{
    return (M + CNNRT_MR - 1) / CNNRT_MR * CNNRT_MR * K;
}

/* Pack all of A once (for an operand shared by many GEMMs, e.g. the weights
 * across the samples of a batch): block pc (a multiple of TR_KC) starts at
 * pc * Mpad, and its row panel i (a multiple of MR) at + i * kc. */
static void cnnrt_tr_pack_a_all(const float *a, ptrdiff_t ars, ptrdiff_t acs, size_t M,
                                size_t K, float *dst)
{
    const size_t mpad = (M + CNNRT_MR - 1) / CNNRT_MR * CNNRT_MR;
    size_t pc, i;
    for (pc = 0; pc < K; pc += TR_KC) {
        const size_t kc = K - pc < TR_KC ? K - pc : TR_KC;
        for (i = 0; i < M; i += CNNRT_MR) {
            const size_t mr = M - i < CNNRT_MR ? M - i : CNNRT_MR;
            cnnrt_tr_pack_a(a, ars, acs, i, mr, pc, kc, dst + pc * mpad + i * kc);
        }
    }
}

static void cnnrt_tr_sgemm_src(cnnrt_gemm_ukernel uk, size_t M, size_t N, size_t K,
                               const float *a, ptrdiff_t ars, ptrdiff_t acs,
                               const float *apacked, const cnnrt_tr_bsrc *bs,
                               float *c, size_t ldc, int accumulate, const float *bias,
                               float *work)
{
    float *bp = work;
    float *ap = work + (size_t)TR_KC * TR_NC;
    const size_t mpad = (M + CNNRT_MR - 1) / CNNRT_MR * CNNRT_MR;
    size_t jc, pc, i, jp;
    if (M == 0 || N == 0)
        return;
    if (K == 0) {
        for (i = 0; i < M; i++)
            for (jc = 0; jc < N; jc++)
                c[i * ldc + jc] = (accumulate ? c[i * ldc + jc] : 0.0f) + (bias ? bias[i] : 0.0f);
        return;
    }
    for (jc = 0; jc < N; jc += TR_NC) {
        const size_t nc = N - jc < TR_NC ? N - jc : TR_NC;
        for (pc = 0; pc < K; pc += TR_KC) {
            const size_t kc = K - pc < TR_KC ? K - pc : TR_KC;
            const int first = (pc == 0) && !accumulate;
            const int last = (pc + kc == K);
            cnnrt_tr_pack_bsrc(bs, pc, kc, jc, nc, bp);
            for (i = 0; i < M; i += CNNRT_MR) {
                const size_t mr = M - i < CNNRT_MR ? M - i : CNNRT_MR;
                if (apacked)
                    ap = (float *)apacked + pc * mpad + i * kc;
                else
                    cnnrt_tr_pack_a(a, ars, acs, i, mr, pc, kc, ap);
                for (jp = 0; jp < nc; jp += CNNRT_NR) {
                    const size_t nr = nc - jp < CNNRT_NR ? nc - jp : CNNRT_NR;
                    uk(kc, ap, bp + jp * kc, c + i * ldc + jc + jp, ldc, mr, nr,
                       bias ? bias + i : NULL, first, last, CNNRT_ACT_NONE);
                }
            }
        }
    }
}

static void cnnrt_tr_sgemm(cnnrt_gemm_ukernel uk, size_t M, size_t N, size_t K,
                           const float *a, ptrdiff_t ars, ptrdiff_t acs,
                           const float *b, ptrdiff_t brs, ptrdiff_t bcs,
                           float *c, size_t ldc, int accumulate, const float *bias,
                           float *work)
{
    cnnrt_tr_bsrc bs;
    memset(&bs, 0, sizeof(bs));
    bs.kind = CNNRT_TR_B_STRIDED;
    bs.b = b;
    bs.brs = brs;
    bs.bcs = bcs;
    cnnrt_tr_sgemm_src(uk, M, N, K, a, ars, acs, NULL, &bs, c, ldc, accumulate, bias, work);
}

/* Y[M, P] (+)= A @ im2col(x) (transposed = 0), or C[M, Q] (+)= A @ im2col(x)^T
 * (transposed = 1), for one image (group) x of Cg x H x W.  A is given
 * packed (cnnrt_tr_pack_a_all) when apacked is not NULL. */
static void cnnrt_tr_sgemm_im2col(cnnrt_gemm_ukernel uk, size_t M, size_t N, size_t K,
                                  const float *a, ptrdiff_t ars, ptrdiff_t acs,
                                  const float *apacked, int transposed,
                                  const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t H2,
                                  ptrdiff_t W2, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                  ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t dh,
                                  ptrdiff_t dw, float *c, size_t ldc, int accumulate,
                                  const float *bias, float *work)
{
    cnnrt_tr_bsrc bs;
    memset(&bs, 0, sizeof(bs));
    bs.kind = transposed ? CNNRT_TR_B_IM2COL_T : CNNRT_TR_B_IM2COL;
    bs.x = x;
    bs.H = H; bs.W = W; bs.H2 = H2; bs.W2 = W2;
    bs.kh = kh; bs.kw = kw; bs.sh = sh; bs.sw = sw;
    bs.pt = pt; bs.pl = pl; bs.dh = dh; bs.dw = dw;
    cnnrt_tr_sgemm_src(uk, M, N, K, a, ars, acs, apacked, &bs, c, ldc, accumulate, bias, work);
}

/* C (+)= A @ B for a strided B, with A packed whole (cnnrt_tr_pack_a_all). */
static void cnnrt_tr_sgemm_apacked(cnnrt_gemm_ukernel uk, size_t M, size_t N, size_t K,
                                   const float *apacked, const float *b, ptrdiff_t brs,
                                   ptrdiff_t bcs, float *c, size_t ldc, int accumulate,
                                   const float *bias, float *work)
{
    cnnrt_tr_bsrc bs;
    memset(&bs, 0, sizeof(bs));
    bs.kind = CNNRT_TR_B_STRIDED;
    bs.b = b;
    bs.brs = brs;
    bs.bcs = bcs;
    cnnrt_tr_sgemm_src(uk, M, N, K, NULL, 0, 0, apacked, &bs, c, ldc, accumulate, bias, work);
}

static void cnnrt_tr_dgemm(size_t M, size_t N, size_t K,
                           const double *a, ptrdiff_t ars, ptrdiff_t acs,
                           const double *b, ptrdiff_t brs, ptrdiff_t bcs,
                           double *c, size_t ldc, int accumulate, const double *bias)
{
    size_t i, j, k;
    for (i = 0; i < M; i++) {
        double *ci = c + i * ldc;
        if (!accumulate)
            for (j = 0; j < N; j++)
                ci[j] = 0.0;
        for (k = 0; k < K; k++) {
            const double aik = a[(ptrdiff_t)i * ars + (ptrdiff_t)k * acs];
            const double *bk = b + (ptrdiff_t)k * brs;
            for (j = 0; j < N; j++)
                ci[j] += aik * bk[(ptrdiff_t)j * bcs];
        }
        if (bias)
            for (j = 0; j < N; j++)
                ci[j] += bias[i];
    }
}

#endif /* CNNRT_TRAIN_GEMM_H */
