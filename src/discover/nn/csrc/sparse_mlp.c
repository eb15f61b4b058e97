/* The second product of an LWTA MLP (Linear -> LWTA -> Linear) under deterministic winners.
 *
 * Compiled on first use by discover.nn.sparse (see discover._utils.load_c_library) and
 * loaded with ctypes: no Python or torch headers.
 *
 * h is the first product, M rows of K = B * U pre-activations. Under the "argmax" policy
 * block b of row m passes only its largest value h[m, b*U + w] (ties: the first unit), so
 *
 *     out[m, :] = bias + sum_b h[m, b*U + w_mb] * wt[b*U + w_mb, :]
 *
 * where wt is the second Linear's weight transposed (K x D, row-major). That is B rows of D
 * multiply-adds per token instead of K: 1/U of the dense product. Rows are independent, so
 * they are split across threads; the sum for an output runs over blocks in order, so the
 * result does not depend on the thread count. The winner rule is csrc/lwta.c's at temperature
 * 0 (a later unit wins only if it is strictly larger), so both paths pick the same units.
 */
#include <stdint.h>
#include <string.h>

static inline int64_t block_winner(const float *block, int64_t U) {
    int64_t w = 0;
    float best = block[0];
    for (int64_t u = 1; u < U; ++u) {
        const float v = block[u];
        if (v > best) {
            best = v;
            w = u;
        }
    }
    return w;
}

/* Output columns are summed CHUNK at a time over all of a row's winners, in eight vector
 * accumulators the compiler keeps in registers (GCC/Clang generic vectors). On x86-64 CPUs
 * with AVX2 the vectors are 8 floats wide (CHUNK 64), else 4 (SSE, NEON; CHUNK 32). Both do
 * an elementwise multiply, then an add, in the same order (AVX2 does not enable FMA
 * contraction), so the bits do not depend on which one runs. */
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));

#define DEFINE_ACCUMULATE(NAME, VEC, W, ATTR)                                                 \
    ATTR static int64_t NAME(float *o, const float *bias, const float *wt, const int64_t *k,  \
                             const float *value, int64_t B, int64_t D, int64_t d0) {         \
        const int64_t chunk = 8 * W;                                                         \
        if (D - d0 < chunk) return 0;                                                        \
        VEC a[8];                                                                            \
        for (int i = 0; i < 8; ++i) {                                                        \
            if (bias != NULL)                                                                \
                memcpy(&a[i], bias + d0 + i * W, sizeof(VEC));                               \
            else                                                                             \
                memset(&a[i], 0, sizeof(VEC));                                               \
        }                                                                                    \
        for (int64_t b = 0; b < B; ++b) {                                                    \
            const float *col = wt + k[b] * D + d0;                                           \
            VEC v;                                                                           \
            for (int i = 0; i < W; ++i) v[i] = value[b];                                     \
            for (int i = 0; i < 8; ++i) {                                                    \
                VEC c;                                                                       \
                memcpy(&c, col + i * W, sizeof(VEC));                                        \
                a[i] += v * c;                                                               \
            }                                                                                \
        }                                                                                    \
        memcpy(o + d0, a, sizeof a);                                                         \
        return chunk;                                                                        \
    }

DEFINE_ACCUMULATE(accumulate4, v4f, 4, )
#if defined(__x86_64__) && defined(__GNUC__)
DEFINE_ACCUMULATE(accumulate8, v8f, 8, __attribute__((target("avx2"))))
#endif

/* out[m, d0:] for the columns the vector chunks left over, one at a time. */
static void accumulate_tail(float *o, const float *bias, const float *wt, const int64_t *k,
                            const float *value, int64_t B, int64_t D, int64_t d0) {
    for (int64_t d = d0; d < D; ++d) {
        float acc = bias != NULL ? bias[d] : 0.0f;
        for (int64_t b = 0; b < B; ++b) acc += value[b] * wt[k[b] * D + d];
        o[d] = acc;
    }
}

static void sparse_row(float *o, const float *bias, const float *wt, const int64_t *k,
                       const float *value, int64_t B, int64_t D, int wide) {
    int64_t d0 = 0, step;
#if defined(__x86_64__) && defined(__GNUC__)
    if (wide)
        while ((step = accumulate8(o, bias, wt, k, value, B, D, d0)) > 0) d0 += step;
#else
    (void)wide;
#endif
    while ((step = accumulate4(o, bias, wt, k, value, B, D, d0)) > 0) d0 += step;
    accumulate_tail(o, bias, wt, k, value, B, D, d0);
}

void lwta_sparse_linear(const float *h, const float *wt, const float *bias, float *out,
                        int64_t M, int64_t K, int64_t U, int64_t D, int threads) {
    const int64_t B = K / U;
#if defined(__x86_64__) && defined(__GNUC__)
    const int wide = __builtin_cpu_supports("avx2");
#else
    const int wide = 0;
#endif
#pragma omp parallel num_threads(threads)
    {
        int64_t k[B];
        float value[B];
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            const float *row = h + m * K;
            for (int64_t b = 0; b < B; ++b) {
                k[b] = b * U + block_winner(row + b * U, U);
                value[b] = row[k[b]];
            }
            sparse_row(out + m * D, bias, wt, k, value, B, D, wide);
        }
    }
}
