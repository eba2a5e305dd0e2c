/* Several products in one call: product j is y_j [tokens, n_j] = x_j [tokens, k_j] @ W_j^T (with
 * q8[j], Q8_0 activations), each the same floats as oss_packed_matmul or oss_q8_matmul gives it
 * alone. At one token (a decode step: q, k and v; or four experts' gate, up and down) a product
 * takes a few hundred microseconds, and a parallel region of its own for each leaves a thread
 * idle at every end: here the rows of all of them are shared out in one parallel loop, a unit
 * being a direct call's group of rows (the leftover rows of a product one more unit), or four
 * rows of a Q8_0 product. Other token counts run the products one after the other. Returns 0,
 * -1 for a product the kernels cannot take (nothing computed), -2 when out of memory.
 */

#include "kernels.h"

#define Q8_BATCH_ROWS 4

/* units of product j (see above) */
static int64_t batch_units(int format, int64_t n, int q8) {
#if defined(HAVE_DIRECT)
    if (!q8) return n / oss_direct_group_rows(format, 1) + (n % oss_direct_group_rows(format, 1) != 0);
#endif
    return (n + Q8_BATCH_ROWS - 1) / Q8_BATCH_ROWS;
}

static int batch_product_ok(int format, int64_t k, int q8) {
    if (oss_row_bytes(format, k) < 0 || (format >= MXFP4 && k % 32 != 0)) return 0;
    return !q8 || oss_q8_takes(format, k);
}

int oss_matmul_batch(int count, const int *formats, const uint8_t *const *ws, const uint8_t *const *scales_of,
                     const int64_t *ns, const int64_t *ks, const float *const *xs, float *const *ys,
                     const int *q8, int64_t tokens, int threads) {
    if (count <= 0) return count == 0 ? 0 : -1;
    int shared = tokens == 1;  /* one parallel loop: one token, every product direct or Q8_0 */
    for (int j = 0; j < count; j++) {
        if (!batch_product_ok(formats[j], ks[j], q8[j])) return -1;
#if defined(HAVE_DIRECT)
        shared &= q8[j] || oss_direct_format(formats[j]);
#else
        shared &= q8[j];
#endif
    }
    if (!shared) {
        for (int j = 0; j < count; j++) {
            int status = (q8[j] ? oss_q8_matmul : oss_packed_matmul)(formats[j], ws[j], scales_of[j], ns[j], ks[j],
                                                                    xs[j], tokens, ys[j], threads);
            if (status != 0) return status;
        }
        return 0;
    }
    /* per product: its first unit, and (Q8_0) its activations, made once for products of one
     * format that share x (a token's experts: every gate and up product) */
    int64_t *first_unit = malloc(sizeof(int64_t) * (size_t)(count + 1));
    q8_activations *act = calloc((size_t)count, sizeof(q8_activations));
    int *made_by = malloc(sizeof(int) * (size_t)count);  /* the product whose activations j uses */
    int failed = first_unit == NULL || act == NULL || made_by == NULL, prepared = 0;
    for (; prepared < count && !failed; prepared++) {
        int j = prepared;
        first_unit[j + 1] = (j ? first_unit[j] : 0) + batch_units(formats[j], ns[j], q8[j]);
        made_by[j] = j;
        for (int i = 0; i < j && q8[j]; i++)
            if (q8[i] && made_by[i] == i && xs[i] == xs[j] && formats[i] == formats[j] && ks[i] == ks[j]) made_by[j] = i;
        if (q8[j] && made_by[j] == j && oss_q8_prepare(formats[j], xs[j], 1, ks[j], &act[j]) != 0) failed = 1;
    }
    /* units a thread takes at once: Q8_0 rows go best 16 at a time (the experts of a 20b decode
     * step, builds alternating, best of 6: at 16 rows 55 and 67 ms in two sittings, at 64 rows 64
     * and 77, at 4 or 8 rows no better), direct ones 16 groups (20b decode steps on a Xeon,
     * float32, every group 16 rows, medians of 8: experts 53 ms, attention blocks 51; at 4 groups
     * 55 and 52; at 64 groups 52 and 60, the 32 groups of k's and v's rows then shared out
     * unevenly) */
    int chunk = 16;
    for (int j = 0; j < count; j++)
        if (q8[j]) chunk = 4;
    if (!failed) {
        first_unit[0] = 0;
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(dynamic, chunk)
        for (int64_t u = 0; u < first_unit[count]; u++) {
            int j = 0;
            while (u >= first_unit[j + 1]) j++;
            int format = formats[j];
            int64_t n = ns[j], k = ks[j], unit = u - first_unit[j], row_bytes = oss_row_bytes(format, k);
            const uint8_t *w = ws[j], *scales = scales_of[j];
            const float *x = xs[j];
            float *y = ys[j];
            if (q8[j]) {
                int64_t first = unit * Q8_BATCH_ROWS, rows = n - first < Q8_BATCH_ROWS ? n - first : Q8_BATCH_ROWS;
                for (int64_t r = first; r < first + rows; r++)
                    oss_q8_product_row(format, w + r * row_bytes, scales ? scales + r * (k / 32) : NULL, k, &act[made_by[j]], 1,
                                   y + r, n);
                continue;
            }
#if defined(HAVE_DIRECT)
            int64_t group_rows = oss_direct_group_rows(format, 1), groups = n / group_rows;  /* as direct() has them */
            if (unit < groups) {
                oss_direct_rows_of(format, 1, 1)(w, scales, unit, groups, k, x, y, n);
            } else {
                for (int64_t r = groups * group_rows; r < n; r++) oss_direct_rows_of(format, 0, 1)(w, scales, r, 0, k, x, y, n);
            }
#endif
        }
    }
    for (int j = 0; act != NULL && j < prepared; j++)
        if (q8[j] && made_by[j] == j) oss_q8_release(&act[j]);
    free(first_unit);
    free(act);
    free(made_by);
    return failed ? -2 : 0;
}
