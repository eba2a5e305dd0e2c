/* MXFP4 blocks into Q8_0, Q4_0 or Q5_0 by table: mxfp4_requant.py's `requantize`, block by
 * block instead of column by column. The tables (made there from the ggml-exact quantizers) are
 * passed in; this file only looks up, assembles and sums, with the same float32 operations in
 * the same order, so the same bytes and the same per-block error figures.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "half.h"

enum { Q8_0 = 0, Q4_0 = 1, Q5_0 = 2 };

/* code of element e (0..31) of an HF block: byte e/2, low nibble for even e */
static inline int hf_code(const uint8_t *block, int e) {
    return (block[e >> 1] >> ((e & 1) << 2)) & 15;
}

/* The block's first value of largest magnitude (E2M1 magnitudes order as the codes' low three
 * bits), as its code; 0 when every value is a zero, whatever its sign. Each value's key is its
 * magnitude, then 31 - its position, so the largest key is the first largest value. */
static inline int leading_code(const uint8_t *block) {
    int best = 0;
    for (int j = 0; j < 16; j++) {
        int low = ((block[j] & 7) << 5) | (31 - 2 * j), high = (((block[j] >> 4) & 7) << 5) | (30 - 2 * j);
        best = best > low ? best : low;
        best = best > high ? best : high;
    }
    return best >> 5 ? hf_code(block, 31 - (best & 31)) : 0;
}

/* 2^(scale - 127) in float32, as numpy's ldexp gives it: 2^-127 a subnormal, 2^128 inf */
static inline float scale_value(int scale) {
    if (scale == 255) return INFINITY;
    return half_float_from_bits(scale ? (uint32_t)scale << 23 : 0x00400000u);
}

/* kind: Q8_0, Q4_0 or Q5_0. blocks [n, 16] (HF bytes), scales [n] (E8M0). Tables, indexed by
 * lead << 8 | byte (a byte of two codes: HF pairing for Q8_0, ggml's j and j + 16 otherwise):
 * words (uint16 for Q8_0, uint8 for Q4_0, uint32 for Q5_0), sums (float32 pairs: squared error,
 * squared value, at unit scale), max_sq_err; per lead code, d_unit and d16_unit.
 * Writes out [n, block bytes] and regular [n] (1 where the bytes and the error figures follow
 * from the tables: scale byte in [safe_lo, safe_hi] and the stored d exactly s times d16_unit).
 * Adds to stats, over the regular blocks: [0] sum of s^2 * (block's squared values), [1] of
 * s^2 * (block's squared errors); [2] becomes the largest s^2 * squared error. Returns how many
 * blocks are regular; the caller redoes the others. */
/* The table index (lead << 8 | byte) of each of the block's 16 bytes; writes its output block. */
static inline void lookup_block(int kind, const uint8_t *block, int scale, const void *words, const float *d_unit,
                                const float *d16_unit, int safe_lo, int safe_hi, uint8_t *dst, int *index,
                                float *s, uint8_t *regular) {
    int lead = leading_code(block);
    *s = scale_value(scale);
    uint16_t d16 = half_bits(d_unit[lead] * *s);
    memcpy(dst, &d16, 2);
    for (int j = 0; j < 16; j++)
        index[j] = lead << 8 | (kind == Q8_0 ? block[j] : hf_code(block, j) | hf_code(block, j + 16) << 4);
    if (kind == Q8_0) {
        const uint16_t *w = words;
        for (int j = 0; j < 16; j++) memcpy(dst + 2 + 2 * j, &w[index[j]], 2);
    } else if (kind == Q4_0) {
        const uint8_t *w = words;
        for (int j = 0; j < 16; j++) dst[2 + j] = w[index[j]];
    } else {
        /* a word's bits 8 and 24 are the fifth bits of elements j and j + 16 */
        const uint32_t *w = words;
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            uint32_t word = w[index[j]];
            qh |= (word >> 8) << j;
            dst[6 + j] = (uint8_t)word;
        }
        memcpy(dst + 2, &qh, 4);
    }
    *regular = scale >= safe_lo && scale <= safe_hi && half_value(d16) == d16_unit[lead] * *s;
}

#define GROUP 8  /* blocks whose error sums run side by side: each block's sum is a chain of adds */

/* kind: Q8_0, Q4_0 or Q5_0. blocks [n, 16] (HF bytes), scales [n] (E8M0). Tables, indexed by
 * lead << 8 | byte (a byte of two codes: HF pairing for Q8_0, ggml's j and j + 16 otherwise):
 * words (uint16 for Q8_0, uint8 for Q4_0, uint32 for Q5_0), sums (float32 pairs: squared error,
 * squared value, at unit scale), max_sq_err; per lead code, d_unit and d16_unit.
 * Writes out [n, block bytes] and regular [n] (1 where the bytes and the error figures follow
 * from the tables: scale byte in [safe_lo, safe_hi] and the stored d exactly s times d16_unit).
 * Adds to stats, over the regular blocks: [0] sum of s^2 * (block's squared values), [1] of
 * s^2 * (block's squared errors); [2] becomes the largest s^2 * squared error. Each block's own
 * sums add its 16 bytes' table entries in order, in float32, as numpy's column-wise reduction
 * does. Returns how many blocks are regular; the caller redoes the others. */
int64_t oss_mxfp4_requant(int kind, const uint8_t *blocks, const uint8_t *scales, int64_t n, const void *words,
                          const float *sums, const float *max_sq_err, const float *d_unit, const float *d16_unit,
                          int safe_lo, int safe_hi, uint8_t *out, uint8_t *regular, double *stats) {
    const int out_bytes = kind == Q8_0 ? 34 : kind == Q4_0 ? 18 : 22;
    int64_t regular_count = 0;
    double sum_sq_x = 0.0, sum_sq_err = 0.0, worst = stats[2];
    for (int64_t first = 0; first < n; first += GROUP) {
        int count = n - first < GROUP ? (int)(n - first) : GROUP;
        int index[GROUP][16];
        float s[GROUP], err[GROUP] = {0}, x[GROUP] = {0}, block_worst[GROUP] = {0};
        for (int b = 0; b < count; b++)
            lookup_block(kind, blocks + 16 * (first + b), scales[first + b], words, d_unit, d16_unit, safe_lo,
                         safe_hi, out + out_bytes * (first + b), index[b], &s[b], &regular[first + b]);
        for (int j = 0; j < 16; j++)
            for (int b = 0; b < count; b++) {
                int at = index[b][j];
                err[b] += sums[2 * at];
                x[b] += sums[2 * at + 1];
                block_worst[b] = max_sq_err[at] > block_worst[b] ? max_sq_err[at] : block_worst[b];
            }
        for (int b = 0; b < count; b++) {
            if (!regular[first + b]) continue;
            regular_count++;
            double s2 = (double)s[b] * (double)s[b];
            sum_sq_x += (double)x[b] * s2;
            sum_sq_err += (double)err[b] * s2;
            if ((double)block_worst[b] * s2 > worst) worst = (double)block_worst[b] * s2;
        }
    }
    stats[0] += sum_sq_x;
    stats[1] += sum_sq_err;
    stats[2] = worst;
    return regular_count;
}
