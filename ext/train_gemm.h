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

static void cnnrt_tr_sgemm(cnnrt_gemm_ukernel uk, size_t M, size_t N, size_t K,
                           const float *a, ptrdiff_t ars, ptrdiff_t acs,
                           const float *b, ptrdiff_t brs, ptrdiff_t bcs,
                           float *c, size_t ldc, int accumulate, const float *bias,
                           float *work)
{
    float *bp = work;
    float *ap = work + (size_t)TR_KC * TR_NC;
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
            cnnrt_tr_pack_b(b, brs, bcs, pc, kc, jc, nc, bp);
            for (i = 0; i < M; i += CNNRT_MR) {
                const size_t mr = M - i < CNNRT_MR ? M - i : CNNRT_MR;
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
