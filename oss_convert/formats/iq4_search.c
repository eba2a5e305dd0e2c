/* IQ4_NL and IQ4_XS quantization (iq4.py's algorithm, which is ggml's without an importance
 * matrix), compiled for speed: the same float32 operations in the same order as the numpy
 * codec, block by block, so the same bytes. Built by oss_convert/cbuild.py with
 * -ffp-contract=off, so that no multiply and add are fused.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "half.h"

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

static const float LEVELS[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
#define NTRY 7

/* the nearest level's index; the upper one on a tie, or for NaN */
static inline int best_index(float x) {
    if (x <= LEVELS[0]) return 0;
    if (x >= LEVELS[15]) return 15;
    int lower = 0, upper = 15;  /* LEVELS[lower] <= x < LEVELS[upper] */
    while (upper - lower > 1) {
        int middle = (lower + upper) / 2;
        if (x < LEVELS[middle]) upper = middle;
        else lower = middle;
    }
    return x - LEVELS[upper - 1] < LEVELS[upper] - x ? upper - 1 : upper;
}

/* the first value of largest magnitude (NaN never wins; +0 when there is none) */
static float signed_absmax(const float *v, int n) {
    float amax = 0.f, found = 0.f;
    for (int j = 0; j < n; j++)
        if (amax < fabsf(v[j])) {
            amax = fabsf(v[j]);
            found = v[j];
        }
    return found;
}

static int nearest_int(float x) {  /* ggml's: add 1.5 * 2^23 and read the mantissa */
    float shifted = x + 12582912.f;
    int32_t bits;
    memcpy(&bits, &shifted, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

static float inverse(float d) { return d == 0.f ? 0.f : 1.f / d; }

/* sum of w q x and of w q^2 over a block, q the level nearest to x * inverse_scale; summed
 * value after value from the first */
static inline void weighted_fit(const float *x, const float *weight, float inverse_scale, float *sumqx, float *sumq2) {
    float qx = 0.f, q2 = 0.f;
    for (int j = 0; j < 32; j++) {
        float q = LEVELS[best_index(x[j] * inverse_scale)], wq = weight[j] * q;
        float tqx = wq * x[j], tq2 = wq * q;
        qx = j == 0 ? tqx : qx + tqx;
        q2 = j == 0 ? tq2 : q2 + tq2;
    }
    *sumqx = qx;
    *sumq2 = q2;
}

/* the fitted scale of a block of 32: 0 for a (near) zero block */
static float block_scale(const float *x) {
    float big = signed_absmax(x, 32), weight[32], sumqx, sumq2;
    for (int j = 0; j < 32; j++) weight[j] = x[j] * x[j];
    float d = -big / LEVELS[0];
    weighted_fit(x, weight, 1.f / d, &sumqx, &sumq2);
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    for (int itry = -NTRY; itry <= NTRY; itry++) {
        weighted_fit(x, weight, (float)(itry + (int)LEVELS[0]) / big, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return fabsf(big) < 1e-15f ? 0.f : d;
}

#if defined(__AVX512F__)
/* block_scale for 16 blocks at once, one a lane: each lane does the scalar code's operations */
#define LANES 16

static inline __m512 best_level(__m512 x, __m512 levels) {
    __m512i lower = _mm512_setzero_si512(), upper = _mm512_set1_epi32(15);
    for (int step = 0; step < 4; step++) {  /* binary search; settled lanes stay put */
        __m512i middle = _mm512_srli_epi32(_mm512_add_epi32(lower, upper), 1);
        __mmask16 below = _mm512_cmp_ps_mask(x, _mm512_permutexvar_ps(middle, levels), _CMP_LT_OQ);
        upper = _mm512_mask_mov_epi32(upper, below, middle);
        lower = _mm512_mask_mov_epi32(middle, below, lower);
    }
    __m512i one_below = _mm512_sub_epi32(upper, _mm512_set1_epi32(1));
    __mmask16 take_lower = _mm512_cmp_ps_mask(_mm512_sub_ps(x, _mm512_permutexvar_ps(one_below, levels)),
                                              _mm512_sub_ps(_mm512_permutexvar_ps(upper, levels), x), _CMP_LT_OQ);
    __m512i index = _mm512_mask_mov_epi32(upper, take_lower, one_below);
    index = _mm512_mask_mov_epi32(index, _mm512_cmp_ps_mask(x, _mm512_set1_ps(LEVELS[15]), _CMP_GE_OQ), _mm512_set1_epi32(15));
    index = _mm512_mask_mov_epi32(index, _mm512_cmp_ps_mask(x, _mm512_set1_ps(LEVELS[0]), _CMP_LE_OQ), _mm512_setzero_si512());
    return _mm512_permutexvar_ps(index, levels);
}

static inline void weighted_fit_lanes(const __m512 *x, const __m512 *weight, __m512 inverse_scale, __m512 levels,
                                      __m512 *sumqx, __m512 *sumq2) {
    __m512 qx = _mm512_setzero_ps(), q2 = _mm512_setzero_ps();
    for (int j = 0; j < 32; j++) {
        __m512 q = best_level(_mm512_mul_ps(x[j], inverse_scale), levels), wq = _mm512_mul_ps(weight[j], q);
        __m512 tqx = _mm512_mul_ps(wq, x[j]), tq2 = _mm512_mul_ps(wq, q);
        qx = j == 0 ? tqx : _mm512_add_ps(qx, tqx);
        q2 = j == 0 ? tq2 : _mm512_add_ps(q2, tq2);
    }
    *sumqx = qx;
    *sumq2 = q2;
}

/* blocks [b0, b0 + 16) of x (32 values each; `count` of them real, the rest taken as zeros) */
static void block_scales_lanes(const float *x, int64_t count, float *scales) {
    float column[LANES] __attribute__((aligned(64)));
    __m512 xs[32], weight[32], levels = _mm512_loadu_ps(LEVELS);
    __m512 big = _mm512_setzero_ps(), amax = _mm512_setzero_ps();
    for (int j = 0; j < 32; j++) {
        for (int l = 0; l < LANES; l++) column[l] = l < count ? x[32 * l + j] : 0.f;
        xs[j] = _mm512_load_ps(column);
        weight[j] = _mm512_mul_ps(xs[j], xs[j]);
        __m512 magnitude = _mm512_abs_ps(xs[j]);
        __mmask16 larger = _mm512_cmp_ps_mask(amax, magnitude, _CMP_LT_OQ);
        amax = _mm512_mask_mov_ps(amax, larger, magnitude);
        big = _mm512_mask_mov_ps(big, larger, xs[j]);
    }
    __m512 sumqx, sumq2, zero = _mm512_setzero_ps();
    __m512 d = _mm512_div_ps(_mm512_sub_ps(zero, big), _mm512_set1_ps(LEVELS[0]));
    weighted_fit_lanes(xs, weight, _mm512_div_ps(_mm512_set1_ps(1.f), d), levels, &sumqx, &sumq2);
    d = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(sumq2, zero, _CMP_GT_OQ), _mm512_div_ps(sumqx, sumq2));
    __m512 best = _mm512_mul_ps(d, sumqx);
    for (int itry = -NTRY; itry <= NTRY; itry++) {
        weighted_fit_lanes(xs, weight, _mm512_div_ps(_mm512_set1_ps((float)(itry + (int)LEVELS[0])), big), levels,
                           &sumqx, &sumq2);
        __mmask16 better = _mm512_cmp_ps_mask(sumq2, zero, _CMP_GT_OQ) &
                           _mm512_cmp_ps_mask(_mm512_mul_ps(sumqx, sumqx), _mm512_mul_ps(best, sumq2), _CMP_GT_OQ);
        d = _mm512_mask_mov_ps(d, better, _mm512_div_ps(sumqx, sumq2));
        best = _mm512_mask_mov_ps(best, better, _mm512_mul_ps(d, sumqx));
    }
    d = _mm512_mask_mov_ps(d, _mm512_cmp_ps_mask(_mm512_abs_ps(big), _mm512_set1_ps(1e-15f), _CMP_LT_OQ), zero);
    _mm512_store_ps(column, d);
    for (int l = 0; l < count; l++) scales[l] = column[l];
}
#endif

/* the fitted scale of each of `blocks` blocks of 32 */
static void block_scales(const float *x, int64_t blocks, float *scales) {
    int64_t b = 0;
#if defined(__AVX512F__)
    for (; b < blocks; b += LANES)
        block_scales_lanes(x + 32 * b, blocks - b < LANES ? blocks - b : LANES, scales + b);
#endif
    for (; b < blocks; b++) scales[b] = block_scale(x + 32 * b);
}

static void pack_indices(const float *x, float inverse_scale, uint8_t *out) {
    for (int j = 0; j < 16; j++)
        out[j] = (uint8_t)(best_index(x[j] * inverse_scale) | (best_index(x[j + 16] * inverse_scale) << 4));
}

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* IQ4_NL: blocks of 32 values -> 18 bytes each */
void oss_quantize_iq4_nl(const float *x, int64_t blocks, uint8_t *out) {
    float d[64];
    for (int64_t b0 = 0; b0 < blocks; b0 += 64) {
        int64_t count = blocks - b0 < 64 ? blocks - b0 : 64;
        block_scales(x + 32 * b0, count, d);
        for (int64_t b = 0; b < count; b++) {
            put16(out + 18 * (b0 + b), half_bits(d[b]));
            pack_indices(x + 32 * (b0 + b), inverse(d[b]), out + 18 * (b0 + b) + 2);
        }
    }
}

/* IQ4_XS: super-blocks of 256 values -> 136 bytes each */
void oss_quantize_iq4_xs(const float *x, int64_t supers, uint8_t *out) {
    for (int64_t s = 0; s < supers; s++, x += 256, out += 136) {
        float scales[8];
        block_scales(x, 8, scales);
        float d = -signed_absmax(scales, 8) / 32.f, id = inverse(d);
        uint16_t scales_h = 0;
        put16(out, half_bits(d));
        memset(out + 4, 0, 4);
        for (int ib = 0; ib < 8; ib++) {
            int level = nearest_int(id * scales[ib]);
            level = level < -32 ? -32 : level > 31 ? 31 : level;
            int biased = level + 32;
            scales_h |= (uint16_t)((biased >> 4) << (2 * ib));
            out[4 + ib / 2] |= (uint8_t)((biased & 15) << (4 * (ib % 2)));
            pack_indices(x + 32 * ib, inverse(d * (float)level), out + 8 + 16 * ib);
        }
        put16(out + 2, scales_h);
    }
}
