/* Activations rounded to 8 bits, as ggml's CPU backend multiplies MXFP4, Q8_0, Q5_0 and Q4_0
 * weights: each 32-value block of a token becomes Q8_0 (scale max|x|/127 rounded to fp16; values
 * x * 127/max rounded to the nearest integer, ties to even), is multiplied by the weight block's
 * integer codes exactly in 32-bit integers, and the block's integer sum is scaled by both block
 * scales. Far fewer operations than float32 (the integer products are VNNI's four per lane), at
 * the cost of the activations' rounding (relative 2^-8 per value, as llama.cpp has it).
 *
 * Codes are kept unsigned, value = u - offset (MXFP4: twice the E2M1 value + 12, with half the
 * E8M0 scale; Q8_0: q + 128; Q5_0: q; Q4_0: q), so the products are VNNI's unsigned-by-signed
 * ones; the offset comes back exactly through each activation block's sum.
 *
 * The result is fixed by the values alone: block sums are exact integers, whatever order the
 * bytes come in (HF's and ggml's MXFP4 layouts give the same bits), and lane j of an 8-lane
 * float accumulator takes blocks j, j + 8, ... by fused multiply-add, then the lanes are added
 * as a fixed tree, in the vector loop and the portable one alike.
 */

#include "kernels.h"

/* A few tokens make a product memory-bound, and the Q8_0 kernels read one row of a few kilobytes at
 * a time: too short a stream for the hardware prefetcher to learn before it ends. So while a row is
 * multiplied, the `span` bytes that come next are requested ahead, a share at each of the `steps`
 * steps, one cache line at a time, into L2 (prefetcht1): into L1 they evicted the lines still in
 * use (BF16 at one token, 2 threads: 24-25 GB/s, into L2 28-32, on an AMD Zen 4). */
static inline __attribute__((always_inline)) void prefetch_share(const uint8_t *next, int64_t span, int64_t step,
                                                                 int64_t steps) {
    int64_t lines = (span + 63) / 64, per_step = (lines + steps - 1) / steps;
    for (int64_t l = step * per_step; l < (step + 1) * per_step && l < lines; l++)
        __builtin_prefetch(next + 64 * l, 0, 2);
}

#define GROUP 8  /* blocks per step: one lane each */

/* value = u - offset for the format's unsigned codes u; -1: not a format of this path */
static int code_offset(int format) {
    switch (format) {
    case MXFP4: case MXFP4_GGML: return 12;
    case Q8_0: return 128;
    case Q5_0: return 16;  /* Q5_0 and Q4_0 store their codes unsigned already */
    case Q4_0: return 8;
    }
    return -1;
}

/* whether the Q8_0 path multiplies `format` with rows of k values */
INTERNAL int oss_q8_takes(int format, int64_t k) {
    return code_offset(format) >= 0 && k % 32 == 0 && k > 0;
}

/* HF's MXFP4 holds values 2j and 2j + 1 in byte j; the others (low nibble j, high nibble j + 16,
 * or byte j) value j of the first half and j + 16 of the second. Position p of a block's codes,
 * taken as 16 low nibbles then 16 high ones (bytes in order for Q8_0), holds this value: */
static int value_at(int format, int p) {
    if (format != MXFP4) return p;
    return p < 16 ? 2 * p : 2 * (p - 16) + 1;
}

/* x [tokens, k] as Q8_0 blocks, codes in the weight format's positions: q [tokens, blocks, 32],
 * scale d [tokens, padded] and offset * (sum of codes) [tokens, padded]; past the last block
 * (up to `padded`, a multiple of GROUP) both are 0 */
static void quantize_activations(int format, const float *x, int64_t tokens, int64_t k, int8_t *q, float *d,
                                 int32_t *correction, int64_t padded) {
    int64_t blocks = k / 32;
    int offset = code_offset(format);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t b = 0; b < padded; b++) {
            d[t * padded + b] = 0.f;
            correction[t * padded + b] = 0;
            if (b >= blocks) continue;
            const float *v = x + t * k + 32 * b;
            float amax = 0.f;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(v[j]));
            float inverse = amax != 0.f ? 127.f / amax : 0.f;
            int sum = 0;
            int8_t *out = q + (t * blocks + b) * 32;
            for (int p = 0; p < 32; p++) {
                float rounded = nearbyintf(v[value_at(format, p)] * inverse);  /* within +-127 */
                out[p] = rounded == rounded ? (int8_t)rounded : 0;  /* NaN (an infinite x): 0, defined */
                sum += out[p];
            }
            d[t * padded + b] = half_value(half_bits(amax / 127.f));
            correction[t * padded + b] = offset * sum;
        }
}

/* the scale of weight block b (by which u - offset is multiplied) */
static inline float weight_scale(int format, const uint8_t *row, const uint8_t *scales, int64_t b) {
    switch (format) {
    case MXFP4: return e8m0(scales[b]) * 0.5f;  /* exact: the codes are twice the E2M1 values */
    case MXFP4_GGML: return e8m0(row[17 * b]) * 0.5f;
    default: return half_value(read16(row + oss_row_bytes(format, 32) * b));
    }
}

/* MXFP4's codes: twice the E2M1 value, plus 12 */
static const uint8_t MXFP4_CODES[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};

static float add_group_lanes(float *lanes) {
    for (int width = GROUP / 2; width > 0; width /= 2)
        for (int j = 0; j < width; j++) lanes[j] += lanes[j + width];
    return lanes[0];
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
static inline __m256i codes_vector(int format, const uint8_t *row, int64_t b) {
    if (format == Q8_0)
        return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(row + 34 * b + 2)), _mm256_set1_epi8((char)0x80));
    const uint8_t *codes = format == MXFP4 ? row + 16 * b : format == MXFP4_GGML ? row + 17 * b + 1
                         : format == Q5_0 ? row + 22 * b + 6 : row + 18 * b + 2;
    __m128i bytes = _mm_loadu_si128((const __m128i *)codes);
    __m256i nibbles = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), _mm256_set1_epi8(15));
    if (format == MXFP4 || format == MXFP4_GGML) {
        __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)MXFP4_CODES));
        return _mm256_shuffle_epi8(table, nibbles);
    }
    if (format == Q5_0)
        return _mm256_or_si256(nibbles, _mm256_maskz_mov_epi8((__mmask32)read32(row + 22 * b + 2), _mm256_set1_epi8(16)));
    return nibbles;
}

/* eight vectors of 8 partial sums -> the 8 sums, one per lane (integers: any order is exact) */
static inline __m256i sum_each(__m256i *v) {
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* blocks [g, g + GROUP) of one row (`full`: all of them exist) against TT tokens from t0,
 * into their accumulators; the group's codes are decoded once, into registers */
static inline __attribute__((always_inline)) void q8_group(int format, int TT, int full, const uint8_t *row,
                                                           const uint8_t *scales, int64_t g, int64_t blocks,
                                                           const int8_t *q, const float *d, const int32_t *correction,
                                                           int64_t padded, int64_t t0, __m256 *acc) {
    __m256i codes[GROUP];
    float dw[GROUP] __attribute__((aligned(32)));
    for (int j = 0; j < GROUP; j++) {
        int live = full || g + j < blocks;
        codes[j] = live ? codes_vector(format, row, g + j) : _mm256_setzero_si256();
        dw[j] = live ? weight_scale(format, row, scales, g + j) : 0.f;
    }
    __m256 scale_w = _mm256_load_ps(dw);
    for (int t = 0; t < TT; t++) {
        const int8_t *qt = q + ((t0 + t) * blocks + g) * 32;
        __m256i sums[GROUP];
        for (int j = 0; j < GROUP; j++)
            sums[j] = full || g + j < blocks
                ? _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes[j], _mm256_loadu_si256((const __m256i *)(qt + 32 * j)))
                : _mm256_setzero_si256();
        __m256i exact = _mm256_sub_epi32(sum_each(sums), _mm256_loadu_si256((const __m256i *)(correction + (t0 + t) * padded + g)));
        __m256 scale = _mm256_mul_ps(scale_w, _mm256_loadu_ps(d + (t0 + t) * padded + g));
        acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(exact), acc[t]);
    }
}

/* one row against tokens [t0, t0 + TT), the row this many after it requested meanwhile (one
 * token, 2880 x 2880 MXFP4, 32 experts cycled, 2 threads: 4 rows ahead 252-339 us, 32 rows
 * 179-273, 64 the same as 32) */
#define Q8_AHEAD 32
static inline __attribute__((always_inline)) void q8_tokens(int format, int TT, const uint8_t *row, const uint8_t *scales,
                                                            int64_t k, const int8_t *q, const float *d,
                                                            const int32_t *correction, int64_t padded, int64_t t0,
                                                            float *y, int64_t n_out) {
    __m256 acc[4];
    for (int t = 0; t < TT; t++) acc[t] = _mm256_setzero_ps();
    int64_t blocks = k / 32, whole = blocks / GROUP * GROUP, row_bytes = oss_row_bytes(format, k);
    for (int64_t g = 0; g < whole; g += GROUP) {
        prefetch_share(row + Q8_AHEAD * row_bytes, row_bytes, g / GROUP, whole / GROUP);
        if (scales) prefetch_share(scales + Q8_AHEAD * blocks, blocks, g / GROUP, whole / GROUP);
        q8_group(format, TT, 1, row, scales, g, blocks, q, d, correction, padded, t0, acc);
    }
    if (whole < blocks)
        q8_group(format, TT, 0, row, scales, whole, blocks, q, d, correction, padded, t0, acc);
    float lanes[GROUP] __attribute__((aligned(32)));
    for (int t = 0; t < TT; t++) {
        _mm256_store_ps(lanes, acc[t]);
        y[(t0 + t) * n_out] = add_group_lanes(lanes);
    }
}

#define Q8_TOKENS(F)                                                                                   \
    for (int64_t t0 = 0; t0 < tokens; t0 += 4) {                                                       \
        int64_t left = tokens - t0;                                                                    \
        if (left >= 4) q8_tokens(F, 4, row, scales, k, q, d, correction, padded, t0, y, n_out);        \
        else if (left == 3) q8_tokens(F, 3, row, scales, k, q, d, correction, padded, t0, y, n_out);   \
        else if (left == 2) q8_tokens(F, 2, row, scales, k, q, d, correction, padded, t0, y, n_out);   \
        else q8_tokens(F, 1, row, scales, k, q, d, correction, padded, t0, y, n_out);                  \
    }

/* one row against every token, four at a time (the format made a constant for each) */
static void q8_row(int format, const uint8_t *row, const uint8_t *scales, int64_t k, const int8_t *q, const float *d,
                   const int32_t *correction, int64_t padded, int64_t tokens, float *y, int64_t n_out) {
    switch (format) {
    case MXFP4: Q8_TOKENS(MXFP4) break;
    case MXFP4_GGML: Q8_TOKENS(MXFP4_GGML) break;
    case Q8_0: Q8_TOKENS(Q8_0) break;
    case Q5_0: Q8_TOKENS(Q5_0) break;
    default: Q8_TOKENS(Q4_0)
    }
}

/* One token against MXFP4 (either layout): eight blocks a step in two 512-bit vectors of codes,
 * the token's codes laid out to match (`quads`: per four blocks, their 16 low-nibble positions,
 * then their 16 high ones), so two VNNI steps give four blocks' sums, four lanes each, and a few
 * shuffles give the eight whole sums in order. The same integer sums, scales and fused
 * multiply-adds as q8_group, in the same order: the same floats, from about half the
 * instructions (q8_group's horizontal adds and code loads a block at a time dominated). */
#if defined(__AVX512VBMI__)
#define HAVE_Q8_ONE_TOKEN 1

/* the E8M0 scales of eight blocks, halved (weight_scale's values); the vector way covers bytes
 * 2-254, whose halves are normal floats with the exponent field s - 1 */
static inline __m256 half_e8m0(__m128i bytes) {
    __m256i s = _mm256_cvtepu8_epi32(bytes);
    __mmask8 regular = _mm256_cmpge_epu32_mask(s, _mm256_set1_epi32(2)) & _mm256_cmple_epu32_mask(s, _mm256_set1_epi32(254));
    if (regular == 0xff) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(s, _mm256_set1_epi32(1)), 23));
    uint8_t each[16];
    float dw[8] __attribute__((aligned(32)));
    _mm_storeu_si128((__m128i *)each, bytes);
    for (int j = 0; j < 8; j++) dw[j] = e8m0(each[j]) * 0.5f;
    return _mm256_load_ps(dw);
}

/* where the bytes of ggml's eight blocks (8 x 17 bytes) go: the codes of blocks 0-3 (from bytes
 * 0-127), of blocks 4-7 (from bytes 64-191), and the scale bytes */
static const int8_t GGML_FIRST_CODES[64] __attribute__((aligned(64))) = {
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
    28, 29, 30, 31, 32, 33, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67};
static const int8_t GGML_SECOND_CODES[64] __attribute__((aligned(64))) = {
    5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31, 32, 33, 34, 35, 36, 37, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 56,
    57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71};
static const int8_t GGML_SCALES[64] __attribute__((aligned(64))) = {
    0, 17, 34, 51, 68, 85, 102, 119, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0};

/* the first `bytes` of 64 (none when `bytes` <= 0) */
static inline __mmask64 first_bytes(int64_t bytes) {
    return bytes >= 64 ? ~(__mmask64)0 : bytes <= 0 ? 0 : ((__mmask64)1 << bytes) - 1;
}

/* blocks 8g .. 8g + live - 1 of a row (live <= 8), their codes as two vectors of four blocks and
 * their eight scale bytes. Where live < 8 (the row's last group), the absent blocks' codes are
 * 0 and their scale byte 127 (a regular 1, to be multiplied by their activation scale, 0); the
 * loads are masked, so nothing past the row's end is read. ggml's 17-byte blocks are picked out
 * of the group's 136 bytes by byte permutes. */
static inline __attribute__((always_inline)) void eight_blocks(int format, const uint8_t *row, const uint8_t *scales,
                                                               int64_t g, int live, __m512i *codes,
                                                               __m128i *scale_bytes) {
    if (format == MXFP4_GGML) {
        const uint8_t *base = row + 136 * g;
        int64_t bytes = 17 * live;
        __m512i z0 = live == GROUP ? _mm512_loadu_si512(base) : _mm512_maskz_loadu_epi8(first_bytes(bytes), base);
        __m512i z1 = live == GROUP ? _mm512_loadu_si512(base + 64)
                                   : _mm512_maskz_loadu_epi8(first_bytes(bytes - 64), base + 64);
        __m512i z2 = _mm512_maskz_loadu_epi8(first_bytes(bytes - 128) & 0xff, base + 128);
        codes[0] = _mm512_permutex2var_epi8(z0, _mm512_load_si512(GGML_FIRST_CODES), z1);
        codes[1] = _mm512_permutex2var_epi8(z1, _mm512_load_si512(GGML_SECOND_CODES), z2);
        *scale_bytes = _mm512_castsi512_si128(_mm512_permutex2var_epi8(z0, _mm512_load_si512(GGML_SCALES), z1));
    } else if (live == GROUP) {
        codes[0] = _mm512_loadu_si512(row + 128 * g);
        codes[1] = _mm512_loadu_si512(row + 128 * g + 64);
        *scale_bytes = _mm_loadl_epi64((const __m128i *)(scales + 8 * g));
    } else {
        codes[0] = _mm512_maskz_loadu_epi8(first_bytes(16 * live), row + 128 * g);
        codes[1] = _mm512_maskz_loadu_epi8(first_bytes(16 * live - 64), row + 128 * g + 64);
        *scale_bytes = _mm_maskz_loadu_epi8((__mmask16)((1 << live) - 1), scales + 8 * g);
    }
    if (live < GROUP) *scale_bytes = _mm_mask_mov_epi8(_mm_set1_epi8(127), (__mmask16)((1 << live) - 1), *scale_bytes);
}

/* one group of eight blocks (codes and scale bytes from eight_blocks) against the token's
 * (`quads`, `d` and `correction` at the group), into the eight lanes of acc */
static inline __attribute__((always_inline)) __m256 one_token_group(const __m512i *codes, __m128i scale_bytes,
                                                                    const int8_t *quads, const float *d,
                                                                    const int32_t *correction, __m256 acc) {
    /* byte permutes (vpermb) index by a byte's low six bits: in a table of the sixteen codes four
     * times over, a byte finds its low nibble's code with no mask, and so does the byte of a
     * 16-bit shift right by 4 its high nibble's (its bits 4-5, from the next byte, pick a copy) */
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)MXFP4_CODES));
    const __m512i in_order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    __m512i sums[2];
    for (int h = 0; h < 2; h++) {
        const int8_t *a = quads + 128 * h;
        __m512i lows = _mm512_permutexvar_epi8(codes[h], table);
        __m512i highs = _mm512_permutexvar_epi8(_mm512_srli_epi16(codes[h], 4), table);
        sums[h] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lows, _mm512_loadu_si512(a)),
                                      highs, _mm512_loadu_si512(a + 64));
    }
    /* 128-bit lane i of sums[h]: block 4h + i's four partial sums -> the eight sums in order */
    __m512i pairs = _mm512_add_epi32(_mm512_unpacklo_epi32(sums[0], sums[1]), _mm512_unpackhi_epi32(sums[0], sums[1]));
    pairs = _mm512_add_epi32(pairs, _mm512_shuffle_epi32(pairs, _MM_PERM_BADC));
    __m256i whole_sums = _mm512_castsi512_si256(_mm512_permutexvar_epi32(in_order, pairs));
    __m256i exact = _mm256_sub_epi32(whole_sums, _mm256_loadu_si256((const __m256i *)correction));
    __m256 scale = _mm256_mul_ps(half_e8m0(scale_bytes), _mm256_loadu_ps(d));
    return _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(exact), acc);
}

/* (`quads` and the activations' `d` and `correction` run to `padded`, zero past the last block,
 * so a last group of fewer than eight blocks adds 0 to its absent lanes, as q8_group does.) */
static void q8_one_token(int format, const uint8_t *row, const uint8_t *scales, int64_t k, const int8_t *quads,
                         const float *d, const int32_t *correction, int64_t padded, float *y) {
    int64_t blocks = k / 32, whole = blocks / GROUP, groups = padded / GROUP, row_bytes = oss_row_bytes(format, k);
    __m256 acc = _mm256_setzero_ps();
    __m512i codes[2];
    __m128i scale_bytes;
    for (int64_t g = 0; g < whole; g++) {
        prefetch_share(row + Q8_AHEAD * row_bytes, row_bytes, g, groups);
        if (scales) prefetch_share(scales + Q8_AHEAD * blocks, blocks, g, groups);
        eight_blocks(format, row, scales, g, GROUP, codes, &scale_bytes);
        acc = one_token_group(codes, scale_bytes, quads + 256 * g, d + 8 * g, correction + 8 * g, acc);
    }
    if (whole < groups) {
        prefetch_share(row + Q8_AHEAD * row_bytes, row_bytes, whole, groups);
        if (scales) prefetch_share(scales + Q8_AHEAD * blocks, blocks, whole, groups);
        eight_blocks(format, row, scales, whole, (int)(blocks - GROUP * whole), codes, &scale_bytes);
        acc = one_token_group(codes, scale_bytes, quads + 256 * whole, d + 8 * whole, correction + 8 * whole, acc);
    }
    float lanes[GROUP] __attribute__((aligned(32)));
    _mm256_store_ps(lanes, acc);
    y[0] = add_group_lanes(lanes);
}
#endif

/* Two tokens or more: eight rows at a time, lane i of every vector row r0 + i. Each block's codes
 * are transposed once (8x8 lanes of four bytes), so that eight VNNI steps leave each row's block
 * sum whole in its own lane: no horizontal adds per token, which dominate q8_group. The same
 * block sums, scales and fused multiply-adds as q8_group, in the same order (accumulator j takes
 * the blocks b = j mod GROUP, then the same tree), so the same floats. (At one token the
 * transpose costs more than it saves: 433 against 283 us on a 2880 x 2880 MXFP4 expert.) */
#define HAVE_Q8_ROWS 1
#define Q8_ROWS 8
#define Q8_TOKEN_CHUNK 64  /* tokens per pass over the rows: their accumulators stay in cache */

static inline void transpose_lanes(__m256i *v) {  /* v[m] lane i <- v[i] lane m */
    __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    __m256i t4 = _mm256_unpacklo_epi32(v[4], v[5]), t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    __m256i t6 = _mm256_unpacklo_epi32(v[6], v[7]), t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    v[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
    v[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
    v[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
    v[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
    v[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    v[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    v[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    v[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

/* rows [r0, r0 + 8) against tokens [t0, t1) into acc [t1 - t0][GROUP] */
static inline __attribute__((always_inline)) void q8_rows(int format, const uint8_t *w, const uint8_t *scales,
                                                          int64_t r0, int64_t k, const int8_t *q, const float *d,
                                                          const int32_t *correction, int64_t padded, int64_t t0,
                                                          int64_t t1, __m256 *acc) {
    int64_t blocks = k / 32, row_bytes = oss_row_bytes(format, k);
    for (int64_t b = 0; b < blocks; b++) {
        prefetch_share(w + (r0 + Q8_ROWS) * row_bytes, Q8_ROWS * row_bytes, b, blocks);
        __m256i codes[Q8_ROWS];
        float dw[Q8_ROWS] __attribute__((aligned(32)));
        for (int i = 0; i < Q8_ROWS; i++) {
            const uint8_t *row = w + (r0 + i) * row_bytes;
            codes[i] = codes_vector(format, row, b);
            dw[i] = weight_scale(format, row, scales ? scales + (r0 + i) * blocks : NULL, b);
        }
        transpose_lanes(codes);
        __m256 scale_w = _mm256_load_ps(dw);
        for (int64_t t = t0; t < t1; t++) {
            const int8_t *qt = q + (t * blocks + b) * 32;
            __m256i sums = _mm256_setzero_si256();
            for (int m = 0; m < Q8_ROWS; m++) {
                int32_t four;
                memcpy(&four, qt + 4 * m, 4);
                sums = _mm256_dpbusd_epi32(sums, codes[m], _mm256_set1_epi32(four));
            }
            __m256i exact = _mm256_sub_epi32(sums, _mm256_set1_epi32(correction[t * padded + b]));
            __m256 scale = _mm256_mul_ps(scale_w, _mm256_set1_ps(d[t * padded + b]));
            __m256 *a = acc + (t - t0) * GROUP + b % GROUP;
            *a = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(exact), *a);
        }
    }
    for (int64_t b = blocks; b < padded; b++)  /* past the last block: fma(0, 0, acc), as q8_group */
        for (int64_t t = t0; t < t1; t++) {
            __m256 *a = acc + (t - t0) * GROUP + b % GROUP;
            *a = _mm256_fmadd_ps(_mm256_setzero_ps(), _mm256_setzero_ps(), *a);
        }
}

static void q8_eight_rows(int format, const uint8_t *w, const uint8_t *scales, int64_t r0, int64_t k,
                          const int8_t *q, const float *d, const int32_t *correction, int64_t padded,
                          int64_t tokens, float *y, int64_t n_out, __m256 *acc) {
    for (int64_t t0 = 0; t0 < tokens; t0 += Q8_TOKEN_CHUNK) {
        int64_t t1 = tokens - t0 < Q8_TOKEN_CHUNK ? tokens : t0 + Q8_TOKEN_CHUNK;
        for (int64_t i = 0; i < (t1 - t0) * GROUP; i++) acc[i] = _mm256_setzero_ps();
        switch (format) {
        case MXFP4: q8_rows(MXFP4, w, scales, r0, k, q, d, correction, padded, t0, t1, acc); break;
        case MXFP4_GGML: q8_rows(MXFP4_GGML, w, scales, r0, k, q, d, correction, padded, t0, t1, acc); break;
        case Q8_0: q8_rows(Q8_0, w, scales, r0, k, q, d, correction, padded, t0, t1, acc); break;
        case Q5_0: q8_rows(Q5_0, w, scales, r0, k, q, d, correction, padded, t0, t1, acc); break;
        default: q8_rows(Q4_0, w, scales, r0, k, q, d, correction, padded, t0, t1, acc);
        }
        for (int64_t t = t0; t < t1; t++) {  /* add_group_lanes' tree, one row a lane */
            __m256 *a = acc + (t - t0) * GROUP;
            for (int width = GROUP / 2; width > 0; width /= 2)
                for (int j = 0; j < width; j++) a[j] = _mm256_add_ps(a[j], a[j + width]);
            _mm256_storeu_ps(y + t * n_out + r0, a[0]);
        }
    }
}
#else
/* the 32 unsigned codes of weight block b, by position (see value_at) */
static void weight_codes(int format, const uint8_t *row, int64_t b, uint8_t *u) {
    if (format == Q8_0) {
        for (int p = 0; p < 32; p++) u[p] = row[34 * b + 2 + p] ^ 0x80;
        return;
    }
    const uint8_t *codes = format == MXFP4 ? row + 16 * b : format == MXFP4_GGML ? row + 17 * b + 1
                         : format == Q5_0 ? row + 22 * b + 6 : row + 18 * b + 2;
    for (int p = 0; p < 16; p++) {
        u[p] = codes[p] & 15;
        u[p + 16] = codes[p] >> 4;
    }
    if (format == MXFP4 || format == MXFP4_GGML)
        for (int p = 0; p < 32; p++) u[p] = MXFP4_CODES[u[p]];
    if (format == Q5_0) {
        uint32_t qh = read32(row + 22 * b + 2);
        for (int p = 0; p < 32; p++) u[p] |= ((qh >> p) & 1) << 4;
    }
}

static void q8_row(int format, const uint8_t *row, const uint8_t *scales, int64_t k, const int8_t *q, const float *d,
                   const int32_t *correction, int64_t padded, int64_t tokens, float *y, int64_t n_out) {
    int64_t blocks = k / 32;
    uint8_t u[32];
    for (int64_t t = 0; t < tokens; t++) {
        float lanes[GROUP] = {0};
        for (int64_t b = 0; b < padded; b++) {
            int32_t sum = 0;
            float dw = 0.f;
            if (b < blocks) {
                weight_codes(format, row, b, u);
                dw = weight_scale(format, row, scales, b);
                for (int p = 0; p < 32; p++) sum += (int32_t)u[p] * q[(t * blocks + b) * 32 + p];
            }
            lanes[b % GROUP] = fmaf(dw * d[t * padded + b], (float)(sum - correction[t * padded + b]), lanes[b % GROUP]);
        }
        y[t * n_out] = add_group_lanes(lanes);
    }
}
#endif

INTERNAL void oss_q8_release(q8_activations *a) {
    free(a->q);
    free(a->quads);
    free(a->d);
    free(a->correction);
    a->q = a->quads = NULL;
    a->d = NULL;
    a->correction = NULL;
}

/* 0, or -2 when out of memory (with nothing left allocated) */
INTERNAL int oss_q8_prepare(int format, const float *x, int64_t tokens, int64_t k, q8_activations *a) {
    int64_t blocks = k / 32;
    a->padded = (blocks + GROUP - 1) / GROUP * GROUP;
    a->q = malloc((size_t)(tokens * k));
    a->d = malloc((size_t)(tokens * a->padded * 4));
    a->correction = malloc((size_t)(tokens * a->padded * 4));
    a->quads = NULL;
#if defined(HAVE_Q8_ONE_TOKEN)
    if (tokens == 1 && (format == MXFP4 || format == MXFP4_GGML)) a->quads = calloc((size_t)a->padded, 32);
#endif
    if (a->q == NULL || a->d == NULL || a->correction == NULL) {
        oss_q8_release(a);
        return -2;
    }
    quantize_activations(format, x, tokens, k, a->q, a->d, a->correction, a->padded);
    for (int64_t b = 0; a->quads != NULL && b < blocks; b++)  /* per four blocks: their low positions, then high */
        for (int p = 0; p < 32; p++) a->quads[128 * (b / 4) + 64 * (p / 16) + 16 * (b % 4) + p % 16] = a->q[32 * b + p];
    return 0;
}

/* one row against every token of `a` */
INTERNAL void oss_q8_product_row(int format, const uint8_t *row, const uint8_t *scales, int64_t k, const q8_activations *a,
                           int64_t tokens, float *y, int64_t n_out) {
#if defined(HAVE_Q8_ONE_TOKEN)
    if (a->quads != NULL) {
        q8_one_token(format, row, scales, k, a->quads, a->d, a->correction, a->padded, y);
        return;
    }
#endif
    q8_row(format, row, scales, k, a->q, a->d, a->correction, a->padded, tokens, y, n_out);
}

/* y [tokens, n] = Q8_0(x) [tokens, k] @ W[n, k]^T. Returns 0, -1 for a format or k it cannot
 * take, -2 when out of memory. */
int oss_q8_matmul(int format, const uint8_t *w, const uint8_t *scales, int64_t n, int64_t k, const float *x,
                  int64_t tokens, float *y, int threads) {
    if (!oss_q8_takes(format, k)) return -1;
    int64_t blocks = k / 32, row_bytes = oss_row_bytes(format, k);
    q8_activations a;
    int failed = oss_q8_prepare(format, x, tokens, k, &a) != 0;
    if (failed) return -2;
    int64_t first_single = 0;  /* rows before it went eight at a time */
#if defined(HAVE_Q8_ROWS)
    if (tokens >= 2) {
        first_single = n / Q8_ROWS * Q8_ROWS;
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
        {
            int64_t chunk = tokens < Q8_TOKEN_CHUNK ? tokens : Q8_TOKEN_CHUNK;
            __m256 *acc = aligned_alloc(32, (size_t)(chunk * GROUP * 32));
            if (acc == NULL) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(dynamic, 2)
            for (int64_t g = 0; g < n / Q8_ROWS; g++)
                if (acc != NULL)
                    q8_eight_rows(format, w, scales, g * Q8_ROWS, k, a.q, a.d, a.correction, a.padded, tokens, y, n, acc);
            free(acc);
        }
    }
#endif
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(dynamic, 16) if (!failed)
    for (int64_t r = first_single; r < (failed ? first_single : n); r++)
        oss_q8_product_row(format, w + r * row_bytes, scales ? scales + r * blocks : NULL, k, &a, tokens, y + r, n);
    oss_q8_release(&a);
    return failed ? -2 : 0;
}
