/* Soft-WPMI evidence sums (discover.dissection.similarity.soft_wpmi), float32.
 *
 * For every unit k and concept m of a concept chunk:
 *
 *     L[k, m] = sum_g log( prod_{j in group g} (scale[j] * prob[local[k, j], m] + shift[j]) )
 *
 * where the groups are consecutive runs of `group` ranks j (the last one may be shorter):
 * the same grouping as the torch code, so a product of at most `group` terms never leaves
 * the normal float range (see _product_group). `prob` is the softmax of the concept chunk on
 * the union of the units' top images, row-major with `width` columns; `local[k, j]` is the
 * row of unit k's j-th top image. Tiles of TILE concepts are split over OpenMP threads;
 * each thread packs its tile's columns of all rows into one contiguous buffer (it stays in
 * L2), then every unit makes one pass over its top_k rows there, products and logs in
 * registers. Lanes past the last concept compute on stale values and are never written.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 64 /* concepts per tile: the packed tile (R x 256 bytes) stays in L2 */

void soft_wpmi_sums(const float *prob, int64_t width, const int64_t *local, int64_t units,
                    int64_t top_k, const float *scale, const float *shift, int64_t group,
                    int64_t rows_total, float *out, int64_t out_stride, int threads) {
    const int64_t tiles = (width + TILE - 1) / TILE;
#pragma omp parallel num_threads(threads)
    {
        float *packed = (float *)malloc((size_t)rows_total * TILE * sizeof(float));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            const int64_t m0 = t * TILE;
            const int64_t n = width - m0 < TILE ? width - m0 : TILE;
            /* the tile's columns of every row, contiguous (without memory: strided reads) */
            const float *base = packed ? packed : prob + m0;
            const int64_t stride = packed ? TILE : width, lanes = packed ? TILE : n;
            if (packed)
                for (int64_t r = 0; r < rows_total; r++)
                    memcpy(packed + r * TILE, prob + r * width + m0, (size_t)n * sizeof(float));
            for (int64_t k = 0; k < units; k++) {
                const int64_t *rows = local + k * top_k;
                float acc[TILE], sum[TILE];
                for (int64_t i = 0; i < lanes; i++) {
                    acc[i] = 1.0f;
                    sum[i] = 0.0f;
                }
                for (int64_t j = 0; j < top_k; j++) {
                    const float *x = base + rows[j] * stride;
                    const float s = scale[j], c = shift[j];
#pragma omp simd
                    for (int64_t i = 0; i < lanes; i++) acc[i] *= s * x[i] + c;
                    if ((j + 1) % group == 0 || j + 1 == top_k) {
#pragma omp simd
                        for (int64_t i = 0; i < lanes; i++) {
                            sum[i] += logf(acc[i]);
                            acc[i] = 1.0f;
                        }
                    }
                }
                float *row_out = out + k * out_stride + m0;
                for (int64_t i = 0; i < n; i++) row_out[i] = sum[i];
            }
        }
        free(packed);
    }
}

/* cos3's concept side: out = (x - mean over rows)^3 column-wise and sumsq = its squared
 * column norms, in two passes over x (column means, then centre, cube and square), instead
 * of the four of the torch code. x has `rows` rows of `cols` floats with row stride `ld`;
 * out is rows x cols, contiguous. Threads split the rows (contiguous reads) and reduce
 * their partial sums in double. */
void centred_cubes(const float *x, int64_t rows, int64_t cols, int64_t ld, float *out,
                   float *sumsq, int threads) {
    double *mean = (double *)calloc((size_t)cols, sizeof(double));
    double *total = (double *)calloc((size_t)cols, sizeof(double));
    float *meanf = (float *)malloc((size_t)cols * sizeof(float));
    if (!mean || !total || !meanf) {
        free(mean);
        free(total);
        free(meanf);
        for (int64_t i = 0; i < cols; i++) sumsq[i] = -1.0f; /* tells the caller: no memory */
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        double *part = (double *)calloc((size_t)cols, sizeof(double));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *row = x + r * ld;
#pragma omp simd
            for (int64_t i = 0; i < cols; i++) part[i] += row[i];
        }
#pragma omp critical
        for (int64_t i = 0; i < cols; i++) mean[i] += part[i];
#pragma omp barrier
#pragma omp single
        for (int64_t i = 0; i < cols; i++) meanf[i] = (float)(mean[i] / (double)rows);
        /* implicit barrier after single */
        for (int64_t i = 0; i < cols; i++) part[i] = 0.0;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *row = x + r * ld;
            float *dst = out + r * cols;
#pragma omp simd
            for (int64_t i = 0; i < cols; i++) {
                const float d = row[i] - meanf[i];
                const float c = d * d * d;
                dst[i] = c;
                part[i] += (double)c * (double)c;
            }
        }
#pragma omp critical
        for (int64_t i = 0; i < cols; i++) total[i] += part[i];
        free(part);
    }
    for (int64_t i = 0; i < cols; i++) sumsq[i] = (float)total[i];
    free(mean);
    free(total);
    free(meanf);
}

/* rank_reorder, around numpy's sort of the packed keys (for a chunk of kc units and mc
 * concepts; no threads of its own: it runs on the caller's pool threads, GIL released).
 *
 * reorder_keys:   keys[m, k, j] = (R[m, top[k, j]] << bits) | j   (one pass)
 * reorder_errors: out[k, m] = mean_j |acts[k, keys[m, k, j] & mask] - asc[k, j]|^p
 *                 (after the keys are sorted; one pass, instead of seven numpy passes)
 */
void reorder_keys(const int32_t *R, int64_t N, int64_t mc, const int32_t *top, int64_t kc,
                  int32_t n, int bits, int32_t *keys) {
    for (int64_t m = 0; m < mc; m++) {
        const int32_t *r = R + m * N;
        for (int64_t k = 0; k < kc; k++) {
            const int32_t *t = top + k * n;
            int32_t *dst = keys + (m * kc + k) * n;
#pragma omp simd
            for (int32_t j = 0; j < n; j++) dst[j] = (r[t[j]] << bits) | j;
        }
    }
}

void reorder_errors(const int32_t *keys, int64_t mc, int64_t kc, int64_t n, int bits,
                    const float *acts, const float *asc, float p, float *out,
                    int64_t out_stride) {
    const int32_t mask = (int32_t)((1u << bits) - 1u);
    for (int64_t m = 0; m < mc; m++) {
        for (int64_t k = 0; k < kc; k++) {
            const int32_t *key = keys + (m * kc + k) * n;
            const float *a = acts + k * n, *s = asc + k * n;
            double total = 0.0;
            if (p == 3.0f) {
                for (int64_t j = 0; j < n; j++) {
                    const float d = fabsf(a[key[j] & mask] - s[j]);
                    total += (double)(d * d * d);
                }
            } else {
                for (int64_t j = 0; j < n; j++)
                    total += (double)powf(fabsf(a[key[j] & mask] - s[j]), p);
            }
            out[k * out_stride + m] = (float)(total / (double)n);
        }
    }
}
