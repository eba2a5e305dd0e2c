/* make_qkx2_quants (kquant_search.py's, which is ggml's: the scale and min of each group by
 * weighted least squares over a grid of candidate scales), compiled for speed: the same
 * float32 operations in the same order as the numpy code, group by group, so the same
 * results. Built by oss_convert/cbuild.py with -ffp-contract=off (no fused multiply-add).
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define MAX_GROUP 32

/* clip(nearest_int(iscale * (x - offset)), 0, nmax), as float: ggml's nearest_int adds
 * 1.5 * 2^23 and reads the mantissa */
static void levels(const float *x, int n, float offset, float iscale, int nmax, float *out) {
    for (int i = 0; i < n; i++) {
        float v = (x[i] - offset) * iscale + 12582912.f;  /* two roundings: no contraction */
        int32_t bits;
        memcpy(&bits, &v, 4);
        int level = (bits & 0x007fffff) - 0x00400000;
        out[i] = (float)(level < 0 ? 0 : level > nmax ? nmax : level);
    }
}

/* sum of w (scale L + offset - x)^2 (or |...| with use_mad), left to right from the first */
static float weighted_error(const float *x, const float *w, const float *l, int n, float scale, float offset,
                            int use_mad) {
    float sum = 0.f;
    for (int i = 0; i < n; i++) {
        float diff = l[i] * scale;
        diff = diff + offset;
        diff = diff - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        diff = diff * w[i];
        sum = i == 0 ? diff : sum + diff;
    }
    return sum;
}

/* numpy's min/max: NaN if any value is NaN */
static float propagating_min(const float *x, int n) {
    float m = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] < m || x[i] != x[i]) m = m != m ? m : x[i];
    return m;
}

static float propagating_max(const float *x, int n) {
    float m = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > m || x[i] != x[i]) m = m != m ? m : x[i];
    return m;
}

static float ordered_sum(const float *a, const float *b, int n) {  /* sum of a*b (b NULL: of a) */
    float sum = 0.f;
    for (int i = 0; i < n; i++) {
        float term = b ? a[i] * b[i] : a[i];
        sum = i == 0 ? term : sum + term;
    }
    return sum;
}

#if defined(__AVX512F__)
/* 16 groups at once, one a lane, each lane doing the scalar code's operations */
#define LANES 16

static inline __m512 sign_flipped(__m512 v) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000)));
}

static inline void levels_lanes(const __m512 *x, int n, __m512 offset, __m512 iscale, int nmax, __m512 *out) {
    for (int i = 0; i < n; i++) {
        __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(x[i], offset), iscale), _mm512_set1_ps(12582912.f));
        __m512i level = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x007fffff)),
                                         _mm512_set1_epi32(0x00400000));
        level = _mm512_min_epi32(_mm512_max_epi32(level, _mm512_setzero_si512()), _mm512_set1_epi32(nmax));
        out[i] = _mm512_cvtepi32_ps(level);
    }
}

static inline __m512 error_lanes(const __m512 *x, const __m512 *w, const __m512 *l, int n, __m512 scale,
                                 __m512 offset, int use_mad) {
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < n; i++) {
        __m512 diff = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(l[i], scale), offset), x[i]);
        diff = use_mad ? _mm512_abs_ps(diff) : _mm512_mul_ps(diff, diff);
        diff = _mm512_mul_ps(diff, w[i]);
        sum = i == 0 ? diff : _mm512_add_ps(sum, diff);
    }
    return sum;
}

static inline __m512 sum_lanes(const __m512 *a, const __m512 *b, int n) {
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < n; i++) {
        __m512 term = b ? _mm512_mul_ps(a[i], b[i]) : a[i];
        sum = i == 0 ? term : _mm512_add_ps(sum, term);
    }
    return sum;
}

static void qkx2_lanes(const float *xs, const float *ws, int64_t count, int n, int nmax, float rmin, float rdelta,
                       int nstep, int use_mad, float *scales, float *the_mins, uint8_t *codes) {
    __m512 x[MAX_GROUP], w[MAX_GROUP], l[MAX_GROUP], wl[MAX_GROUP];
    float column[LANES] __attribute__((aligned(64)));
    for (int i = 0; i < n; i++) {
        for (int g = 0; g < LANES; g++) column[g] = g < count ? xs[g * n + i] : 0.f;
        x[i] = _mm512_load_ps(column);
        for (int g = 0; g < LANES; g++) column[g] = g < count ? ws[g * n + i] : 0.f;
        w[i] = _mm512_load_ps(column);
    }
    __m512 mn = x[0], mx = x[0], one = _mm512_set1_ps(1.f);
    for (int i = 1; i < n; i++) {  /* NaN-propagating, the first of equal values kept */
        __mmask16 x_nan = _mm512_cmp_ps_mask(x[i], x[i], _CMP_UNORD_Q);
        __mmask16 take = (_mm512_cmp_ps_mask(x[i], mn, _CMP_LT_OQ) | x_nan) & ~_mm512_cmp_ps_mask(mn, mn, _CMP_UNORD_Q);
        mn = _mm512_mask_mov_ps(mn, take, x[i]);
        take = (_mm512_cmp_ps_mask(x[i], mx, _CMP_GT_OQ) | x_nan) & ~_mm512_cmp_ps_mask(mx, mx, _CMP_UNORD_Q);
        mx = _mm512_mask_mov_ps(mx, take, x[i]);
    }
    mn = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(mn, mn, _CMP_UNORD_Q) |
                             _mm512_cmp_ps_mask(mn, _mm512_setzero_ps(), _CMP_LT_OQ), mn);
    __m512 sum_w = sum_lanes(w, NULL, n), sum_x = sum_lanes(w, x, n);
    __mmask16 flat = _mm512_cmp_ps_mask(mx, mn, _CMP_EQ_OQ);
    __m512 span = _mm512_mask_mov_ps(_mm512_sub_ps(mx, mn), flat, one);
    __m512 iscale = _mm512_div_ps(_mm512_set1_ps((float)nmax), span), scale = _mm512_div_ps(one, iscale);
    levels_lanes(x, n, mn, iscale, nmax, l);
    __m512 best_error = error_lanes(x, w, l, n, scale, mn, use_mad), best_min = mn;
    __m512 chosen_iscale = iscale, chosen_offset = mn;
    for (int step = 0; step <= nstep; step++) {
        span = _mm512_mask_mov_ps(_mm512_sub_ps(mx, best_min), flat, one);
        iscale = _mm512_div_ps(_mm512_set1_ps(rmin + rdelta * (float)step + (float)nmax), span);
        levels_lanes(x, n, best_min, iscale, nmax, l);
        for (int i = 0; i < n; i++) wl[i] = _mm512_mul_ps(w[i], l[i]);
        __m512 sum_l = sum_lanes(wl, NULL, n), sum_l2 = sum_lanes(wl, l, n), sum_xl = sum_lanes(wl, x, n);
        __m512 D = _mm512_sub_ps(_mm512_mul_ps(sum_w, sum_l2), _mm512_mul_ps(sum_l, sum_l));
        __mmask16 ok = _mm512_cmp_ps_mask(D, _mm512_setzero_ps(), _CMP_GT_OQ);
        __m512 safe = _mm512_mask_mov_ps(one, ok, D);
        __m512 this_scale = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sum_w, sum_xl), _mm512_mul_ps(sum_x, sum_l)), safe);
        __m512 this_min = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sum_l2, sum_x), _mm512_mul_ps(sum_l, sum_xl)), safe);
        __mmask16 positive = _mm512_cmp_ps_mask(this_min, _mm512_setzero_ps(), _CMP_GT_OQ);
        this_scale = _mm512_mask_mov_ps(this_scale, positive, _mm512_div_ps(sum_xl, sum_l2));
        this_min = _mm512_mask_mov_ps(this_min, positive, _mm512_setzero_ps());
        __m512 error = error_lanes(x, w, l, n, this_scale, this_min, use_mad);
        __mmask16 better = ok & _mm512_cmp_ps_mask(error, best_error, _CMP_LT_OQ);
        chosen_iscale = _mm512_mask_mov_ps(chosen_iscale, better, iscale);
        chosen_offset = _mm512_mask_mov_ps(chosen_offset, better, best_min);
        best_error = _mm512_mask_mov_ps(best_error, better, error);
        scale = _mm512_mask_mov_ps(scale, better, this_scale);
        best_min = _mm512_mask_mov_ps(best_min, better, this_min);
    }
    levels_lanes(x, n, chosen_offset, chosen_iscale, nmax, l);
    for (int i = 0; i < n; i++) {
        _mm512_store_ps(column, _mm512_mask_mov_ps(l[i], flat, _mm512_setzero_ps()));
        for (int g = 0; g < count; g++) codes[g * n + i] = (uint8_t)column[g];
    }
    _mm512_store_ps(column, _mm512_mask_mov_ps(scale, flat, _mm512_setzero_ps()));
    for (int g = 0; g < count; g++) scales[g] = column[g];
    _mm512_store_ps(column, sign_flipped(_mm512_mask_mov_ps(best_min, flat, mn)));
    for (int g = 0; g < count; g++) the_mins[g] = column[g];
}
#endif

/* x, w [groups, n] (n <= 32) -> scale [groups], the_min [groups] (= -min), codes L [groups, n] */
void oss_make_qkx2_quants(const float *xs, const float *ws, int64_t groups, int n, int nmax, float rmin,
                          float rdelta, int nstep, int use_mad, float *scales, float *the_mins, uint8_t *codes) {
    float l[MAX_GROUP], wl[MAX_GROUP];
    if (n < 1 || n > MAX_GROUP) return;  /* the caller sends larger groups to numpy */
    int64_t g = 0;
#if defined(__AVX512F__)
    for (; g < groups; g += LANES) {
        int64_t count = groups - g < LANES ? groups - g : LANES;
        qkx2_lanes(xs + g * n, ws + g * n, count, n, nmax, rmin, rdelta, nstep, use_mad, scales + g, the_mins + g,
                   codes + g * n);
    }
#endif
    for (; g < groups; g++) {
        const float *x = xs + g * n, *w = ws + g * n;
        float mn = propagating_min(x, n), mx = propagating_max(x, n);
        if (!(mn != mn) && !(mn < 0.f)) mn = 0.f;  /* np.minimum(min, 0): NaN stays, -0 becomes +0 */
        float sum_w = ordered_sum(w, NULL, n), sum_x = ordered_sum(w, x, n);
        int flat = mx == mn;
        float span = flat ? 1.f : mx - mn;
        float iscale = (float)nmax / span, scale = 1.f / iscale;
        levels(x, n, mn, iscale, nmax, l);
        float best_error = weighted_error(x, w, l, n, scale, mn, use_mad), best_min = mn;
        float chosen_iscale = iscale, chosen_offset = mn;
        for (int step = 0; step <= nstep; step++) {
            span = flat ? 1.f : mx - best_min;
            iscale = (rmin + rdelta * (float)step + (float)nmax) / span;
            levels(x, n, best_min, iscale, nmax, l);
            for (int i = 0; i < n; i++) wl[i] = w[i] * l[i];
            float sum_l = ordered_sum(wl, NULL, n), sum_l2 = ordered_sum(wl, l, n), sum_xl = ordered_sum(wl, x, n);
            float D = sum_w * sum_l2 - sum_l * sum_l;
            int ok = D > 0;
            float safe = ok ? D : 1.f;
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe;
            if (this_min > 0) {
                this_scale = sum_xl / sum_l2;
                this_min = 0.f;
            }
            float error = weighted_error(x, w, l, n, this_scale, this_min, use_mad);
            if (ok && error < best_error) {
                chosen_iscale = iscale;
                chosen_offset = best_min;
                best_error = error;
                scale = this_scale;
                best_min = this_min;
            }
        }
        levels(x, n, chosen_offset, chosen_iscale, nmax, l);
        for (int i = 0; i < n; i++) codes[g * n + i] = flat ? 0 : (uint8_t)l[i];
        scales[g] = flat ? 0.f : scale;
        the_mins[g] = flat ? -mn : -best_min;
    }
}
