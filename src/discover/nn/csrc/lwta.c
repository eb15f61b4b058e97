/* Fused CPU kernels for discover's LWTA layer (float32, contiguous (P, U, Q) blocks).
 *
 * Built on first use by discover/lwta_kernel.py (gcc -O3 -march=native -fopenmp) and
 * loaded with ctypes: no Python or torch headers, so it compiles in about a second.
 *
 * Competition over the U axis of every (p, q): winner = argmax_u (h + T * g) with Gumbel
 * noise g, i.e. a draw from softmax(h / T) (T = 0: the largest h, first index on ties).
 * Training also writes the Gumbel-softmax surrogate soft = softmax((h + T g) / tau) that
 * the straight-through backward needs.
 *
 * Noise: g = -log(-log(u)), u = (top 23 bits of hash32(hash32(i ^ k0) + k1) + 0.5) / 2^23
 * for the element's flat index i and a 64-bit seed (k0, k1), so u lies strictly inside (0, 1) and the draw of
 * an element does not depend on the thread that computes it. `noise`, when not NULL,
 * supplies g instead (used to check the kernel against the unfused code).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define TILE 4096 /* elements per tile: z, softmax and block maxima stay in L1/L2 */

/* Two rounds of a 32-bit avalanche hash (lowbias32) keyed by the seed: a counter-based
 * generator that vectorises on AVX2 (32-bit multiplies only). */
static inline uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* Gumbel noise from 32 random bits: u = (top 23 bits + 0.5) / 2^23 lies on a grid strictly
 * inside (0, 1) that float32 represents exactly (1 - 2^-24 is the largest), so -log(u) > 0
 * and the noise is always finite. */
static inline float gumbel_of(uint32_t x) {
    float u = ((float)(int32_t)(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
    return -logf(-logf(u));
}

/* exported for the tests: the noise of the extreme bit patterns */
float lwta_gumbel_of(uint32_t x) { return gumbel_of(x); }

static inline float gumbel(uint32_t k0, uint32_t k1, uint32_t i) {
    return gumbel_of(hash32(hash32(i ^ k0) + k1));
}

/* Block maxima and first-index winners of z[0 .. nb*U*Q) laid out as (nb, U, Q). */
static void winners(const float *z, int64_t nb, int64_t U, int64_t Q, float *mx, int32_t *arg) {
    for (int64_t b = 0; b < nb; b++) {
        const float *zb = z + b * U * Q;
        float *m = mx + b * Q;
        int32_t *a = arg + b * Q;
        for (int64_t q = 0; q < Q; q++) {
            m[q] = zb[q];
            a[q] = 0;
        }
        for (int64_t u = 1; u < U; u++) {
            const float *zu = zb + u * Q;
            for (int64_t q = 0; q < Q; q++) {
                int better = zu[q] > m[q];
                m[q] = better ? zu[q] : m[q];
                a[q] = better ? (int32_t)u : a[q];
            }
        }
    }
}

/* Forward. h, out: (P, U, Q); hard: bool (P, U, Q); soft: (P, U, Q) or NULL (no surrogate,
 * evaluation). T = 0 takes the largest h (no noise). */
void lwta_forward(const float *h, float *out, uint8_t *hard, float *soft, int64_t P, int64_t U,
                  int64_t Q, float T, float inv_tau, uint64_t seed, const float *noise,
                  int threads) {
    int64_t block = U * Q;
    int64_t per_tile = block >= TILE ? 1 : TILE / block;
    int64_t tiles = (P + per_tile - 1) / per_tile;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma omp parallel num_threads(threads)
    {
        /* per-thread scratch: z (unless soft holds it), maxima, winners, block sums */
        static __thread float zbuf[TILE];
        static __thread float mbuf[TILE];
        static __thread int32_t abuf[TILE];
        static __thread float tbuf[TILE];
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            int64_t p0 = t * per_tile;
            int64_t np = P - p0 < per_tile ? P - p0 : per_tile;
            int64_t base = p0 * block;
            int64_t n = np * block;
            /* big blocks (block > TILE) are processed whole; their scratch is the soft
             * buffer or, in evaluation, the output itself */
            float *z = soft ? soft + base : (n <= TILE ? zbuf : out + base);
            float *mx = n <= TILE ? mbuf : NULL;
            int32_t *arg = n <= TILE ? abuf : NULL;
            const float *hb = h + base;
            if (T == 0.0f) {
                memcpy(z, hb, (size_t)n * sizeof(float));
            } else if (noise) {
                const float *gb = noise + base;
                for (int64_t j = 0; j < n; j++) z[j] = hb[j] + T * gb[j];
            } else {
#pragma omp simd
                for (int64_t j = 0; j < n; j++)
                    z[j] = hb[j] + T * gumbel(k0, k1 + (uint32_t)((base + j) >> 32), (uint32_t)(base + j));
            }
            if (mx == NULL) {
                /* one block larger than a tile (e.g. a 112 x 112 map): walk it in Q-chunks */
                for (int64_t q0 = 0; q0 < Q; q0 += TILE) {
                    int64_t qn = Q - q0 < TILE ? Q - q0 : TILE;
                    for (int64_t q = 0; q < qn; q++) {
                        mbuf[q] = z[q0 + q];
                        abuf[q] = 0;
                    }
                    for (int64_t u = 1; u < U; u++) {
                        const float *zu = z + u * Q + q0;
                        for (int64_t q = 0; q < qn; q++) {
                            int better = zu[q] > mbuf[q];
                            mbuf[q] = better ? zu[q] : mbuf[q];
                            abuf[q] = better ? (int32_t)u : abuf[q];
                        }
                    }
                    for (int64_t u = 0; u < U; u++) {
                        int64_t off = base + u * Q + q0;
                        float *zu = z + u * Q + q0;
                        for (int64_t q = 0; q < qn; q++) {
                            uint8_t win = abuf[q] == u;
                            hard[off + q] = win;
                            if (soft) zu[q] = expf((zu[q] - mbuf[q]) * inv_tau);
                        }
                    }
                    if (soft) {
                        for (int64_t q = 0; q < qn; q++) mbuf[q] = 0.0f;
                        for (int64_t u = 0; u < U; u++)
                            for (int64_t q = 0; q < qn; q++) mbuf[q] += z[u * Q + q0 + q];
                        for (int64_t q = 0; q < qn; q++) mbuf[q] = 1.0f / mbuf[q];
                        for (int64_t u = 0; u < U; u++)
                            for (int64_t q = 0; q < qn; q++) z[u * Q + q0 + q] *= mbuf[q];
                    }
                }
                for (int64_t j = 0; j < n; j++) out[base + j] = hb[j] * (float)hard[base + j];
                continue;
            }
            if (Q == 1) {
                /* units on the last axis: transpose the tile to (U, np) so that every
                 * per-block step below runs over contiguous blocks */
                float *zt = tbuf;
                for (int64_t b = 0; b < np; b++)
                    for (int64_t u = 0; u < U; u++) zt[u * np + b] = z[b * U + u];
                winners(zt, 1, U, np, mx, arg); /* one (U, np) block: np columns */
                for (int64_t b = 0; b < np; b++)
                    for (int64_t u = 0; u < U; u++) {
                        uint8_t win = arg[b] == u;
                        hard[base + b * U + u] = win;
                        out[base + b * U + u] = hb[b * U + u] * (float)win;
                    }
                if (!soft) continue;
                for (int64_t u = 0; u < U; u++) {
                    float *zu = zt + u * np;
#pragma omp simd
                    for (int64_t b = 0; b < np; b++) zu[b] = expf((zu[b] - mx[b]) * inv_tau);
                }
                for (int64_t b = 0; b < np; b++) mx[b] = zt[b];
                for (int64_t u = 1; u < U; u++)
                    for (int64_t b = 0; b < np; b++) mx[b] += zt[u * np + b];
                for (int64_t b = 0; b < np; b++) mx[b] = 1.0f / mx[b];
                for (int64_t b = 0; b < np; b++)
                    for (int64_t u = 0; u < U; u++) z[b * U + u] = zt[u * np + b] * mx[b];
                continue;
            }
            winners(z, np, U, Q, mx, arg);
            for (int64_t b = 0; b < np; b++)
                for (int64_t u = 0; u < U; u++) {
                    int64_t off = b * block + u * Q;
                    for (int64_t q = 0; q < Q; q++) {
                        uint8_t win = arg[b * Q + q] == u;
                        hard[base + off + q] = win;
                        out[base + off + q] = hb[off + q] * (float)win;
                    }
                }
            if (!soft) continue;
            /* soft = softmax((z - max) / tau) over u, in place in z (= soft + base) */
            for (int64_t b = 0; b < np; b++)
                for (int64_t u = 0; u < U; u++) {
                    float *zu = z + b * block + u * Q;
                    const float *m = mx + b * Q;
#pragma omp simd
                    for (int64_t q = 0; q < Q; q++) zu[q] = expf((zu[q] - m[q]) * inv_tau);
                }
            for (int64_t b = 0; b < np; b++) {
                float *sum = mx + b * Q; /* the maxima are no longer needed */
                const float *zb = z + b * block;
                for (int64_t q = 0; q < Q; q++) sum[q] = zb[q];
                for (int64_t u = 1; u < U; u++)
                    for (int64_t q = 0; q < Q; q++) sum[q] += zb[u * Q + q];
                for (int64_t q = 0; q < Q; q++) sum[q] = 1.0f / sum[q];
            }
            for (int64_t b = 0; b < np; b++)
                for (int64_t u = 0; u < U; u++) {
                    float *zu = z + b * block + u * Q;
                    const float *r = mx + b * Q;
                    for (int64_t q = 0; q < Q; q++) zu[q] *= r[q];
                }
        }
    }
}

/* Straight-through backward: grad = (g*h - sum_u g*h*soft) * soft / tau + g * hard. */
void lwta_backward(const float *grad_out, const float *h, const float *soft, const uint8_t *hard,
                   float *grad, int64_t P, int64_t U, int64_t Q, float inv_tau, int threads) {
    int64_t block = U * Q;
#pragma omp parallel num_threads(threads)
    {
        static __thread float sbuf[TILE];
#pragma omp for schedule(static)
        for (int64_t p = 0; p < (Q == 1 ? 0 : P); p++) {
            int64_t base = p * block;
            for (int64_t q0 = 0; q0 < Q; q0 += TILE) {
                int64_t qn = Q - q0 < TILE ? Q - q0 : TILE;
                for (int64_t q = 0; q < qn; q++) sbuf[q] = 0.0f;
                for (int64_t u = 0; u < U; u++) {
                    int64_t off = base + u * Q + q0;
#pragma omp simd
                    for (int64_t q = 0; q < qn; q++)
                        sbuf[q] += grad_out[off + q] * h[off + q] * soft[off + q];
                }
                for (int64_t u = 0; u < U; u++) {
                    int64_t off = base + u * Q + q0;
#pragma omp simd
                    for (int64_t q = 0; q < qn; q++) {
                        float g = grad_out[off + q];
                        grad[off + q] = (g * h[off + q] - sbuf[q]) * soft[off + q] * inv_tau +
                                        g * (float)hard[off + q];
                    }
                }
            }
        }
        if (Q == 1) {
            /* units on the last axis: tiles of whole blocks, flat vectorised passes */
            int64_t per_tile = U >= TILE ? 1 : TILE / U;
            int64_t tiles = (P + per_tile - 1) / per_tile;
            static __thread float pbuf[TILE];
#pragma omp for schedule(static)
            for (int64_t t = 0; t < tiles; t++) {
                int64_t p0 = t * per_tile;
                int64_t np = P - p0 < per_tile ? P - p0 : per_tile;
                int64_t base = p0 * U, n = np * U;
                const float *g = grad_out + base, *hh = h + base, *ss = soft + base;
                const uint8_t *hd = hard + base;
                float *gr = grad + base;
#pragma omp simd
                for (int64_t j = 0; j < n; j++) pbuf[j] = g[j] * hh[j];
                for (int64_t b = 0; b < np; b++) {
                    float acc = 0.0f;
                    for (int64_t u = 0; u < U; u++) acc += pbuf[b * U + u] * ss[b * U + u];
                    for (int64_t u = 0; u < U; u++) sbuf[b * U + u] = acc;
                }
#pragma omp simd
                for (int64_t j = 0; j < n; j++)
                    gr[j] = (pbuf[j] - sbuf[j]) * ss[j] * inv_tau + g[j] * (float)hd[j];
            }
        }
    }
}
