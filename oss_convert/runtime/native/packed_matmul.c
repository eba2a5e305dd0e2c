/* y[t, n] = sum_k x[t, k] * W[n, k] with W in its stored form (float, MXFP4 or a 32-value ggml
 * block type), for the runtime on the CPU.
 *
 * W is expanded 16 rows at a time into a float32 tile that stays in cache, so a packed expert is
 * never written out whole; every token of the call is multiplied against the tile before the next
 * one is expanded. Expansion uses the arithmetic of the numpy codecs (ggml's dequantizers), so the
 * tile holds exactly the values they give.
 *
 * Every output is summed in one fixed order that depends on nothing but K: lane j of a 16-lane
 * accumulator takes k = j, j + 16, j + 32, ... by fused multiply-add, then the lanes are added
 * as a fixed tree. A token's result is therefore the same whichever format held the values,
 * whichever other tokens share the call, however many threads run, and with or without AVX-512
 * (the portable loop does the same operations lane by lane).
 *
 * Built by oss_convert/runtime/native/__init__.py with -ffp-contract=off: the compiler must not
 * fuse the codecs' separate multiply and add (Q5_1: d * q + m).
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../formats/half.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* MXFP4: HF's layout (codes [K/2], byte j = values 2j and 2j + 1; E8M0 scales apart);
 * MXFP4_GGML: ggml's blocks of 17 bytes (the E8M0 byte, then byte j = values j and j + 16) */
enum { F32 = 0, BF16 = 1, F16 = 2, MXFP4 = 3, Q8_0 = 4, Q5_0 = 5, Q4_0 = 6, Q5_1 = 7, MXFP4_GGML = 8, Q4_K = 9 };

#define LANES 16
#define TILE_ROWS 16

static const float E2M1[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                               -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

static float from_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* 2^(s - 127) for the E8M0 byte s; 255 is NaN */
static float e8m0_value(int s) {
    if (s == 255) return from_bits(0x7fc00000u);
    if (s == 0) return from_bits(0x00400000u);
    return from_bits((uint32_t)s << 23);
}

static float E8M0[256];

__attribute__((constructor)) static void fill_e8m0(void) {
    for (int s = 0; s < 256; s++) E8M0[s] = e8m0_value(s);
}

static inline float e8m0(uint8_t s) { return E8M0[s]; }

static uint16_t read16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t read32(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24); }

int64_t oss_row_bytes(int format, int64_t k) {
    switch (format) {
    case F32: return 4 * k;
    case BF16: case F16: return 2 * k;
    case MXFP4: return k / 2;
    case Q8_0: return k / 32 * 34;
    case Q5_0: return k / 32 * 22;
    case Q4_0: return k / 32 * 18;
    case Q5_1: return k / 32 * 24;
    case Q4_K: return k % 256 ? -1 : k / 256 * 144;
    case MXFP4_GGML: return k / 32 * 17;
    }
    return -1;
}

/* Q4_K: super-blocks of 256 values (fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128
 * bytes of nibbles); sub-block j (32 values) is d * scale_j * q - dmin * min_j, its nibbles the
 * low (j even) or high (j odd) halves of bytes 32 * (j / 2) to 32 * (j / 2) + 31. The two
 * products and the difference are rounded one by one, as the codec computes them. */
static void q4_k_sub_block(const uint8_t *super, int j, float *scale, float *min) {
    const uint8_t *s = super + 4;
    int sc, m;
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    *scale = half_value(read16(super)) * (float)sc;
    *min = half_value(read16(super + 2)) * (float)m;
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define HAVE_DIRECT 1
/* Few tokens (decode): each row is expanded 16 values at a time in registers and multiplied at
 * once, never stored; the same lanes, the same fused multiply-adds in the same order as the tile
 * path, so the same floats. Every format but F16 (which takes the tile path). */
#define DIRECT_MAX_TOKENS 4

static int direct_format(int format) {
    return format != F16;
}


/* 16 float values of an F32 or BF16 row from value c on (zeros past k) */
static inline __attribute__((always_inline)) __m512 float_values(int format, const uint8_t *row, int64_t k, int64_t c) {
    __mmask16 mask = k - c >= LANES ? 0xffff : (__mmask16)((1u << (k - c)) - 1);
    if (format == F32) return _mm512_maskz_loadu_ps(mask, (const float *)row + c);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
        _mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + c)), 16));
}

/* the 32 values of block b of a row as two vectors (values 0-15, 16-31). The E2M1 table is
 * scaled once per block and then looked up: each value is the same product as the codec's */
static inline __attribute__((always_inline)) void block_values(int format, const uint8_t *row, const uint8_t *scales,
                                                               int64_t b, __m512 *first, __m512 *second) {
    if (format == Q8_0) {
        const uint8_t *block = row + 34 * b;
        __m512 d = _mm512_set1_ps(half_value(read16(block)));
        *first = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(block + 2)))));
        *second = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(block + 18)))));
        return;
    }
    if (format == Q4_K) {
        const uint8_t *super = row + 144 * (b / 8);
        int j = (int)(b % 8);
        float scale, min;
        q4_k_sub_block(super, j, &scale, &min);
        const uint8_t *q = super + 16 + 32 * (j / 2);
        __m512i low = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q));
        __m512i high = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + 16)));
        __m512i nibble = _mm512_set1_epi32(15);
        low = j & 1 ? _mm512_srli_epi32(low, 4) : _mm512_and_si512(low, nibble);
        high = j & 1 ? _mm512_srli_epi32(high, 4) : _mm512_and_si512(high, nibble);
        __m512 d = _mm512_set1_ps(scale), m = _mm512_set1_ps(min);
        *first = _mm512_sub_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(low)), m);
        *second = _mm512_sub_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(high)), m);
        return;
    }
    if (format == Q4_0 || format == Q5_0 || format == Q5_1) {  /* nibble j: values j and j + 16 */
        const uint8_t *block = row + oss_row_bytes(format, 32) * b;
        int codes_at = format == Q4_0 ? 2 : format == Q5_0 ? 6 : 8;
        __m512 d = _mm512_set1_ps(half_value(read16(block)));
        __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(block + codes_at)));
        __m512i low = _mm512_and_si512(bytes, _mm512_set1_epi32(15)), high = _mm512_srli_epi32(bytes, 4);
        if (format != Q4_0) {  /* the fifth bits: bit j of qh for value j */
            uint32_t qh = read32(block + codes_at - 4);
            low = _mm512_mask_or_epi32(low, (__mmask16)(qh & 0xffffu), low, _mm512_set1_epi32(16));
            high = _mm512_mask_or_epi32(high, (__mmask16)(qh >> 16), high, _mm512_set1_epi32(16));
        }
        if (format == Q5_1) {  /* d * q + m, two roundings as the codec has them */
            __m512 m = _mm512_set1_ps(half_value(read16(block + 2)));
            *first = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(low)), m);
            *second = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(high)), m);
            return;
        }
        __m512i offset = _mm512_set1_epi32(format == Q4_0 ? 8 : 16);
        *first = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(low, offset)));
        *second = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(high, offset)));
        return;
    }
    const uint8_t *codes = format == MXFP4_GGML ? row + 17 * b + 1 : row + 16 * b;
    uint8_t scale = format == MXFP4_GGML ? row[17 * b] : scales[b];
    __m512 lut = _mm512_mul_ps(_mm512_loadu_ps(E2M1), _mm512_set1_ps(e8m0(scale)));
    /* (the permutes below read an index's low four bits only: the low nibble needs no mask) */
    __m512i low = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)codes)), high = _mm512_srli_epi32(low, 4);
    if (format == MXFP4_GGML) {  /* byte j holds values j and j + 16 */
        *first = _mm512_permutexvar_ps(low, lut);
        *second = _mm512_permutexvar_ps(high, lut);
    } else {  /* HF: byte j holds values 2j and 2j + 1 */
        *first = _mm512_permutexvar_ps(_mm512_permutex2var_epi32(
            low, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), high), lut);
        *second = _mm512_permutexvar_ps(_mm512_permutex2var_epi32(
            low, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), high), lut);
    }
}

/* block_values for HF's MXFP4 with its lanes in another order: lane i holds value
 * HF_LANE_VALUES[i] (and 16 more), which is byte (value / 2)'s nibble (value % 2). Each 8 code
 * bytes are broadcast to every 64-bit lane and shifted into place, with no widening and no
 * two-source permute (which block_values takes: five shuffles a block against two). Lane i's
 * products are value v's and v + 16's, as lane v's in block order, so with x in the same order
 * and the accumulator put back in order (HF_LANES_IN_ORDER) at the end, the floats are the same. */
#define HF_LANE_VALUES _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15)
#define HF_LANES_IN_ORDER _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15)
static inline __attribute__((always_inline)) void hf_block_values(const uint8_t *codes, const uint8_t *scales,
                                                                  int64_t b, __m512 *first, __m512 *second) {
    __m512 lut = _mm512_mul_ps(_mm512_loadu_ps(E2M1), _mm512_set1_ps(e8m0(scales[b])));
    /* lane i: 32-bit word i % 2 of the 8 bytes, shifted to its byte's nibble */
    const __m512i to_nibble = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    int64_t low, high;
    memcpy(&low, codes + 16 * b, 8);
    memcpy(&high, codes + 16 * b + 8, 8);
    *first = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64(low), to_nibble), lut);
    *second = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64(high), to_nibble), lut);
}
#endif

static void expand_mxfp4(const uint8_t *codes, const uint8_t *scales, int64_t k, float *out) {
    for (int64_t b = 0; b < k / 32; b++) {
        const uint8_t *q = codes + 16 * b;
        float factor = e8m0(scales[b]);
        float *o = out + 32 * b;
        for (int j = 0; j < 16; j++) {
            o[2 * j] = E2M1[q[j] & 15] * factor;
            o[2 * j + 1] = E2M1[q[j] >> 4] * factor;
        }
    }
}

static void expand_mxfp4_ggml(const uint8_t *row, int64_t k, float *out) {
    for (int64_t b = 0; b < k / 32; b++) {
        const uint8_t *q = row + 17 * b + 1;
        float factor = e8m0(row[17 * b]), *o = out + 32 * b;
        for (int j = 0; j < 16; j++) {
            o[j] = E2M1[q[j] & 15] * factor;
            o[j + 16] = E2M1[q[j] >> 4] * factor;
        }
    }
}

static void expand_q4_k(const uint8_t *row, int64_t k, float *out) {
    for (int64_t b = 0; b < k / 32; b++) {
        const uint8_t *super = row + 144 * (b / 8), *q = super + 16 + 32 * (b % 8 / 2);
        float scale, min;
        q4_k_sub_block(super, (int)(b % 8), &scale, &min);
        for (int l = 0; l < 32; l++) out[32 * b + l] = scale * (float)(b % 2 ? q[l] >> 4 : q[l] & 15) - min;
    }
}

/* Q8_0 / Q5_0 / Q4_0 / Q5_1: value j of a 32-value block has a low part from nibble or byte j,
 * and for Q5_* a fifth bit j of the 32-bit qh */
static void expand_legacy(int format, const uint8_t *row, int64_t k, float *out) {
    int64_t size = oss_row_bytes(format, 32);
    for (int64_t b = 0; b < k / 32; b++) {
        const uint8_t *block = row + size * b;
        float *o = out + 32 * b;
        float d = half_value(read16(block));
        if (format == Q8_0) {
            const int8_t *q = (const int8_t *)(block + 2);
            for (int j = 0; j < 32; j++) o[j] = d * (float)q[j];
        } else if (format == Q4_0) {
            const uint8_t *q = block + 2;
            for (int j = 0; j < 16; j++) {
                o[j] = d * (float)((q[j] & 15) - 8);
                o[j + 16] = d * (float)((q[j] >> 4) - 8);
            }
        } else {
            int offset = format == Q5_0 ? 2 : 4;
            uint32_t qh = read32(block + offset);
            const uint8_t *q = block + offset + 4;
            if (format == Q5_0) {
                for (int j = 0; j < 16; j++) {
                    o[j] = d * (float)((int)((q[j] & 15) | (((qh >> j) & 1) << 4)) - 16);
                    o[j + 16] = d * (float)((int)((q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
                }
            } else {
                float m = half_value(read16(block + 2));
                for (int j = 0; j < 16; j++) {
                    o[j] = d * (float)((q[j] & 15) | (((qh >> j) & 1) << 4)) + m;
                    o[j + 16] = d * (float)((q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) + m;
                }
            }
        }
    }
}

/* row n of W as k float32 values, followed by zeros up to `padded` */
static void expand_row(int format, const uint8_t *w, const uint8_t *scales, int64_t n, int64_t k, int64_t padded, float *out) {
    const uint8_t *row = w + n * oss_row_bytes(format, k);
#if defined(HAVE_DIRECT)
    if (format != F32 && format != BF16 && format != F16) {  /* the decode loop's own expansion */
        for (int64_t b = 0; b < k / 32; b++) {
            __m512 first, second;
            block_values(format, row, scales ? scales + n * (k / 32) : NULL, b, &first, &second);
            _mm512_storeu_ps(out + 32 * b, first);
            _mm512_storeu_ps(out + 32 * b + 16, second);
        }
        memset(out + k, 0, 4 * (padded - k));
        return;
    }
#endif
    switch (format) {
    case F32: memcpy(out, row, 4 * k); break;
    case BF16:
        for (int64_t i = 0; i < k; i++) out[i] = from_bits((uint32_t)read16(row + 2 * i) << 16);
        break;
    case F16:
        for (int64_t i = 0; i < k; i++) out[i] = half_value(read16(row + 2 * i));
        break;
    case MXFP4: expand_mxfp4(row, scales + n * (k / 32), k, out); break;
    case MXFP4_GGML: expand_mxfp4_ggml(row, k, out); break;
    case Q4_K: expand_q4_k(row, k, out); break;
    default: expand_legacy(format, row, k, out);
    }
    memset(out + k, 0, 4 * (padded - k));
}

void oss_expand(int format, const uint8_t *w, const uint8_t *scales, int64_t rows, int64_t k, float *out, int threads) {
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static)
    for (int64_t n = 0; n < rows; n++) expand_row(format, w, scales, n, k, k, out + n * k);
}

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

static float add_lanes(float *lanes) {
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int j = 0; j < width; j++) lanes[j] += lanes[j + width];
    return lanes[0];
}

#if defined(__AVX512F__)
/* add_lanes on a register: lane j + lane j + width, for width 8, 4, 2, 1 (the same additions) */
static inline float add_register_lanes(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}
#endif

/* R rows of the tile (stride `padded`) times TT tokens of x (stride k) over values [c0, c1):
 * their 16-lane accumulators (acc, `tokens` apart per row) are read, advanced and written back */
#if defined(__AVX512F__)
#define DEFINE_BLOCK(R, TT)                                                                            \
    static void block_##R##x##TT(const float *w, int64_t padded, const float *x, int64_t k,            \
                                 int64_t c0, int64_t c1, float *acc_mem, int64_t tokens) {             \
        __m512 acc[R][TT];                                                                             \
        for (int i = 0; i < R; i++)                                                                    \
            for (int j = 0; j < TT; j++) acc[i][j] = _mm512_load_ps(acc_mem + (i * tokens + j) * LANES); \
        for (int64_t c = c0; c < c1; c += LANES) {                                                     \
            __mmask16 mask = k - c >= LANES ? 0xffff : (__mmask16)((1u << (k - c)) - 1);               \
            __m512 xv[TT];                                                                             \
            for (int j = 0; j < TT; j++) xv[j] = _mm512_maskz_loadu_ps(mask, x + j * k + c);           \
            for (int i = 0; i < R; i++) {                                                              \
                __m512 wv = _mm512_load_ps(w + i * padded + c);                                        \
                for (int j = 0; j < TT; j++) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);        \
            }                                                                                          \
        }                                                                                              \
        for (int i = 0; i < R; i++)                                                                    \
            for (int j = 0; j < TT; j++) _mm512_store_ps(acc_mem + (i * tokens + j) * LANES, acc[i][j]); \
    }
/* The same for four rows, with the accumulators named one by one: GCC keeps an array of 8 or 16
 * of them on the stack and stores them all at every step, which took two thirds of the time. And
 * GCC folds each use of a loaded row into its multiply-add as a memory operand: 16 loads a step
 * instead of 4, which bound the loop on loads (a fifth of the time at 16 and 64 tokens); an
 * empty asm that claims to change them keeps them in registers. */
#define KEEP_IN_REGISTERS(a, b, c, d) __asm__("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d));
#define TOKENS_1(M, i) M(i, 0)
#define TOKENS_2(M, i) M(i, 0) M(i, 1)
#define TOKENS_4(M, i) M(i, 0) M(i, 1) M(i, 2) M(i, 3)
#define FOUR_ROWS(M, TT) TOKENS_##TT(M, 0) TOKENS_##TT(M, 1) TOKENS_##TT(M, 2) TOKENS_##TT(M, 3)
#define ACC_LOAD(i, j) __m512 a##i##j = _mm512_load_ps(acc_mem + (i * tokens + j) * LANES);
#define ACC_STORE(i, j) _mm512_store_ps(acc_mem + (i * tokens + j) * LANES, a##i##j);
#define ACC_FMA(i, j) a##i##j = _mm512_fmadd_ps(w##i, x##j, a##i##j);
#define X_LOAD(unused, j) __m512 x##j = _mm512_maskz_loadu_ps(mask, x + j * k + c);
#define DEFINE_FOUR_ROW_BLOCK(TT)                                                                      \
    static void block_4x##TT(const float *w, int64_t padded, const float *x, int64_t k,                \
                             int64_t c0, int64_t c1, float *acc_mem, int64_t tokens) {                 \
        FOUR_ROWS(ACC_LOAD, TT)                                                                        \
        for (int64_t c = c0; c < c1; c += LANES) {                                                     \
            __mmask16 mask = k - c >= LANES ? 0xffff : (__mmask16)((1u << (k - c)) - 1);               \
            TOKENS_##TT(X_LOAD, 0)                                                                     \
            __m512 w0 = _mm512_load_ps(w + c), w1 = _mm512_load_ps(w + padded + c);                   \
            __m512 w2 = _mm512_load_ps(w + 2 * padded + c), w3 = _mm512_load_ps(w + 3 * padded + c);   \
            KEEP_IN_REGISTERS(w0, w1, w2, w3)                                                          \
            FOUR_ROWS(ACC_FMA, TT)                                                                     \
        }                                                                                              \
        FOUR_ROWS(ACC_STORE, TT)                                                                       \
    }
DEFINE_FOUR_ROW_BLOCK(4)
DEFINE_FOUR_ROW_BLOCK(2)
DEFINE_FOUR_ROW_BLOCK(1)
#else
#define DEFINE_BLOCK(R, TT)                                                                            \
    static void block_##R##x##TT(const float *w, int64_t padded, const float *x, int64_t k,            \
                                 int64_t c0, int64_t c1, float *acc_mem, int64_t tokens) {             \
        for (int i = 0; i < R; i++)                                                                    \
            for (int j = 0; j < TT; j++) {                                                             \
                float *lanes = acc_mem + (i * tokens + j) * LANES;                                     \
                for (int64_t c = c0; c < c1; c += LANES)                                               \
                    for (int l = 0; l < LANES; l++) {                                                  \
                        float xv = c + l < k ? x[j * k + c + l] : 0.f;                                 \
                        lanes[l] = fmaf(w[i * padded + c + l], xv, lanes[l]);                          \
                    }                                                                                  \
            }                                                                                          \
    }
#endif

#if !defined(__AVX512F__)
DEFINE_BLOCK(4, 4)
DEFINE_BLOCK(4, 2)
DEFINE_BLOCK(4, 1)
#endif
DEFINE_BLOCK(1, 4)
DEFINE_BLOCK(1, 2)
DEFINE_BLOCK(1, 1)

/* values per pass over the tile: a pass's rows and tokens stay in the first-level cache */
#define K_CHUNK 256

static void tile_times_tokens(const float *tile, int64_t rows, int64_t padded, const float *x, int64_t k,
                              int64_t tokens, float *y, int64_t n_out, float *acc) {
    memset(acc, 0, (size_t)(rows * tokens * LANES * 4));
    for (int64_t c0 = 0; c0 < padded; c0 += K_CHUNK) {
        int64_t c1 = padded - c0 < K_CHUNK ? padded : c0 + K_CHUNK;
        for (int64_t t = 0; t < tokens;) {
            int64_t step = tokens - t >= 4 ? 4 : tokens - t >= 2 ? 2 : 1;
            const float *xt = x + t * k;
            int64_t r = 0;
            for (; r + 4 <= rows; r += 4) {
                const float *w = tile + r * padded;
                float *a = acc + (r * tokens + t) * LANES;
                if (step == 4) block_4x4(w, padded, xt, k, c0, c1, a, tokens);
                else if (step == 2) block_4x2(w, padded, xt, k, c0, c1, a, tokens);
                else block_4x1(w, padded, xt, k, c0, c1, a, tokens);
            }
            for (; r < rows; r++) {
                const float *w = tile + r * padded;
                float *a = acc + (r * tokens + t) * LANES;
                if (step == 4) block_1x4(w, padded, xt, k, c0, c1, a, tokens);
                else if (step == 2) block_1x2(w, padded, xt, k, c0, c1, a, tokens);
                else block_1x1(w, padded, xt, k, c0, c1, a, tokens);
            }
            t += step;
        }
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t t = 0; t < tokens; t++) y[t * n_out + r] = add_lanes(acc + (r * tokens + t) * LANES);
}

#if defined(HAVE_DIRECT)
/* R rows (first, first + stride, ...) against TT tokens: R independent chains per token, so the
 * fused multiply-adds' latency overlaps. R and TT are constants where it is inlined.
 *
 * The callers take R rows (direct_group_rows: up to sixteen accumulators, all in registers) 1/R of
 * the matrix apart (stride = rows / R), and at the next call the rows after them: R forward
 * streams, each in pages of its own, which the hardware prefetcher follows, so no software
 * prefetch. For the block formats, the more streams the faster the rows come, up to about 16 (an
 * MXFP4 expert's stream alone is not much faster than one row's arithmetic; the 20b's experts of
 * a decode step, 2 threads, on a Xeon: 4 streams 15 GB/s, 8 streams 22, 16 streams 24). Four
 * adjacent rows, as before, were read in turn from one page, which the prefetcher did not follow,
 * so they were prefetched in software. 20b decode steps on that Xeon, float32, builds alternating
 * in one process, ms a step for the output matrix, the attention blocks and the MXFP4 experts:
 * 4 adjacent rows 48, 57, 85; 4 strided rows 40, 48, 82 (with a software prefetch of each
 * stream's next row 46, 54, 80); 16 strided rows 41, 51, 53. */
#define DIRECT_MAX_ROWS 16
static inline __attribute__((always_inline)) void direct_rows(int format, int R, int TT, const uint8_t *w,
                                                              const uint8_t *scales, int64_t first, int64_t stride,
                                                              int64_t k, const float *x, float *y, int64_t n_out) {
    __m512 acc[DIRECT_MAX_ROWS][DIRECT_MAX_TOKENS];
    const uint8_t *row[DIRECT_MAX_ROWS], *scale_row[DIRECT_MAX_ROWS];
    for (int i = 0; i < R; i++) {
        row[i] = w + (first + i * stride) * oss_row_bytes(format, k);
        scale_row[i] = scales ? scales + (first + i * stride) * (k / 32) : NULL;
        for (int t = 0; t < TT; t++) acc[i][t] = _mm512_setzero_ps();
    }
    if (format == F32 || format == BF16) {
        for (int64_t c = 0; c < k; c += LANES) {
            __mmask16 mask = k - c >= LANES ? 0xffff : (__mmask16)((1u << (k - c)) - 1);
            __m512 xv[DIRECT_MAX_TOKENS];
            for (int t = 0; t < TT; t++) {
                xv[t] = _mm512_maskz_loadu_ps(mask, x + t * k + c);
                __asm__("" : "+v"(xv[t]));  /* loaded once, not at each row's multiply-add */
            }
            for (int i = 0; i < R; i++) {
                __m512 v = float_values(format, row[i], k, c);
                for (int t = 0; t < TT; t++) acc[i][t] = _mm512_fmadd_ps(v, xv[t], acc[i][t]);
            }
        }
    } else {  /* blocks of 32: k is a multiple of 32 */
        for (int64_t b = 0; b < k / 32; b++) {
            __m512 x_first[DIRECT_MAX_TOKENS], x_second[DIRECT_MAX_TOKENS];
            for (int t = 0; t < TT; t++) {
                x_first[t] = _mm512_loadu_ps(x + t * k + 32 * b);
                x_second[t] = _mm512_loadu_ps(x + t * k + 32 * b + 16);
                if (format == MXFP4) {  /* in hf_block_values' lane order */
                    x_first[t] = _mm512_permutexvar_ps(HF_LANE_VALUES, x_first[t]);
                    x_second[t] = _mm512_permutexvar_ps(HF_LANE_VALUES, x_second[t]);
                }
                __asm__("" : "+v"(x_first[t]), "+v"(x_second[t]));
            }
            for (int i = 0; i < R; i++) {
                __m512 v_first, v_second;
                if (format == MXFP4)
                    hf_block_values(row[i], scale_row[i], b, &v_first, &v_second);
                else
                    block_values(format, row[i], scale_row[i], b, &v_first, &v_second);
                for (int t = 0; t < TT; t++) acc[i][t] = _mm512_fmadd_ps(v_first, x_first[t], acc[i][t]);
                for (int t = 0; t < TT; t++) acc[i][t] = _mm512_fmadd_ps(v_second, x_second[t], acc[i][t]);
            }
        }
    }
    for (int i = 0; i < R; i++)
        for (int t = 0; t < TT; t++) {
            if (format == MXFP4) acc[i][t] = _mm512_permutexvar_ps(HF_LANES_IN_ORDER, acc[i][t]);
            y[t * n_out + first + i * stride] = add_register_lanes(acc[i][t]);
        }
}

/* direct_rows with the format, the rows and the tokens made constants, one small function each:
 * inlined into one parallel body all together, GCC kept their accumulators on the stack (a store
 * of every accumulator at every step) */
typedef void (*direct_fn)(const uint8_t *w, const uint8_t *scales, int64_t first, int64_t stride, int64_t k,
                          const float *x, float *y, int64_t n_out);
#define DEFINE_DIRECT(F, R, TT)                                                                        \
    static void direct_##F##_##R##_##TT(const uint8_t *w, const uint8_t *scales, int64_t first, int64_t stride,  \
                                         int64_t k, const float *x, float *y, int64_t n_out) {        \
        direct_rows(F, R, TT, w, scales, first, stride, k, x, y, n_out);                               \
    }
/* Rows a grouped call takes at 1, 2, 3 and 4 tokens, by the kind of format: about sixteen streams
 * (see direct_rows) where the format's scales lie in its rows; eight rows and their eight streams
 * of scales for HF's MXFP4 (a 20b decode step's experts from safetensors on a Xeon: 117.8 ms at
 * 16 rows, 74.1 at 8, 88.7 at 4); F32 and BF16 rows, only fetched, 4 (the attention blocks:
 * 47.2 ms at 4 rows, 50.0 at 16; the output matrix 40 ms at each). */
#define BLOCK_ROWS 16, 8, 5, 4
#define SCALES_APART_ROWS 8, 4, 2, 2
#define FLOAT_ROWS 4, 4, 4, 4
static const int64_t BLOCK_GROUP[4] = {BLOCK_ROWS}, SCALES_APART_GROUP[4] = {SCALES_APART_ROWS},
                     FLOAT_GROUP[4] = {FLOAT_ROWS};

/* direct_F_R_TT for a format's grouped rows at each token count, and for one row */
#define DEFINE_DIRECT_FORMAT(F, ROWS) DEFINE_DIRECT_FORMAT_(F, ROWS)  /* (ROWS expanded first) */
#define DEFINE_DIRECT_FORMAT_(F, R1, R2, R3, R4)                                                        \
    DEFINE_DIRECT(F, R1, 1) DEFINE_DIRECT(F, R2, 2) DEFINE_DIRECT(F, R3, 3) DEFINE_DIRECT(F, R4, 4)     \
    DEFINE_DIRECT(F, 1, 1) DEFINE_DIRECT(F, 1, 2) DEFINE_DIRECT(F, 1, 3) DEFINE_DIRECT(F, 1, 4)
DEFINE_DIRECT_FORMAT(F32, FLOAT_ROWS)
DEFINE_DIRECT_FORMAT(BF16, FLOAT_ROWS)
DEFINE_DIRECT_FORMAT(MXFP4, SCALES_APART_ROWS)
DEFINE_DIRECT_FORMAT(MXFP4_GGML, BLOCK_ROWS)
DEFINE_DIRECT_FORMAT(Q8_0, BLOCK_ROWS)
DEFINE_DIRECT_FORMAT(Q5_0, BLOCK_ROWS)
DEFINE_DIRECT_FORMAT(Q4_0, BLOCK_ROWS)
DEFINE_DIRECT_FORMAT(Q5_1, BLOCK_ROWS)
DEFINE_DIRECT_FORMAT(Q4_K, BLOCK_ROWS)

#define DIRECT_CASE(F, ROWS) DIRECT_CASE_(F, ROWS)
#define DIRECT_CASE_(F, R1, R2, R3, R4)                                                                \
    case F:                                                                                            \
        if (grouped)                                                                                   \
            return tokens == 1 ? direct_##F##_##R1##_1 : tokens == 2 ? direct_##F##_##R2##_2          \
                 : tokens == 3 ? direct_##F##_##R3##_3 : direct_##F##_##R4##_4;                       \
        return tokens == 1 ? direct_##F##_1_1 : tokens == 2 ? direct_##F##_1_2                        \
             : tokens == 3 ? direct_##F##_1_3 : direct_##F##_1_4;

/* rows a grouped direct call of `format` takes against `tokens` (1 to 4) tokens */
static int64_t direct_group_rows(int format, int64_t tokens) {
    const int64_t *rows = format == F32 || format == BF16 ? FLOAT_GROUP : format == MXFP4 ? SCALES_APART_GROUP
                                                                                           : BLOCK_GROUP;
    return rows[tokens - 1];
}

/* the function for direct_group_rows(format, tokens) rows (`grouped`) or for one row, of `format`,
 * against 1 to 4 tokens */
static direct_fn direct_rows_of(int format, int grouped, int64_t tokens) {
    switch (format) {
    DIRECT_CASE(F32, FLOAT_ROWS)
    DIRECT_CASE(BF16, FLOAT_ROWS)
    DIRECT_CASE(MXFP4, SCALES_APART_ROWS)
    DIRECT_CASE(MXFP4_GGML, BLOCK_ROWS)
    DIRECT_CASE(Q8_0, BLOCK_ROWS)
    DIRECT_CASE(Q5_0, BLOCK_ROWS)
    DIRECT_CASE(Q4_0, BLOCK_ROWS)
    DIRECT_CASE(Q5_1, BLOCK_ROWS)
    DIRECT_CASE(Q4_K, BLOCK_ROWS)
    }
    return NULL;  /* F16: not a direct format */
}

static void direct(int format, const uint8_t *w, const uint8_t *scales, int64_t n, int64_t k, const float *x,
                   int64_t tokens, float *y, int threads) {
    direct_fn group = direct_rows_of(format, 1, tokens), one = direct_rows_of(format, 0, tokens);
    int64_t rows = direct_group_rows(format, tokens), groups = n / rows;
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(dynamic, 16)
    for (int64_t g = 0; g < groups; g++) group(w, scales, g, groups, k, x, y, n);
    for (int64_t first = groups * rows; first < n; first++) one(w, scales, first, 0, k, x, y, n);
}
#endif

/* y [tokens, n] = x [tokens, k] @ W[n, k]^T. Returns 0, or -1 for a format or k it cannot take. */
int oss_packed_matmul(int format, const uint8_t *w, const uint8_t *scales, int64_t n, int64_t k,
                      const float *x, int64_t tokens, float *y, int threads) {
    if (oss_row_bytes(format, k) < 0 || (format >= MXFP4 && k % 32 != 0)) return -1;
    int64_t padded = (k + LANES - 1) / LANES * LANES, tiles = (n + TILE_ROWS - 1) / TILE_ROWS;
    int failed = 0;
#if defined(HAVE_DIRECT)
    if (tokens <= DIRECT_MAX_TOKENS && direct_format(format)) {
        direct(format, w, scales, n, k, x, tokens, y, threads);
        return 0;
    }
#endif
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        float *tile = aligned_alloc(64, (size_t)(TILE_ROWS * padded * 4));
        float *acc = aligned_alloc(64, (size_t)(TILE_ROWS * tokens * LANES * 4));
        if (tile == NULL || acc == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 4)
        for (int64_t i = 0; i < tiles; i++) {
            if (tile == NULL || acc == NULL) continue;
            int64_t first = i * TILE_ROWS, rows = n - first < TILE_ROWS ? n - first : TILE_ROWS;
            for (int64_t r = 0; r < rows; r++)
                expand_row(format, w, scales, first + r, k, padded, tile + r * padded);
            tile_times_tokens(tile, rows, padded, x, k, tokens, y + first, n, acc);
        }
        free(tile);
        free(acc);
    }
    return failed ? -2 : 0;
}

/* ------------------------------------------------------------------------------------------------
 * Activations rounded to 8 bits, as ggml's CPU backend multiplies MXFP4, Q8_0, Q5_0 and Q4_0
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
 * ------------------------------------------------------------------------------------------------ */

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

/* A product's activations as Q8_0: codes q [tokens, blocks, 32], scales d and offset sums
 * correction [tokens, padded]; for one token against MXFP4, the codes also as `quads` */
typedef struct {
    int8_t *q, *quads;
    float *d;
    int32_t *correction;
    int64_t padded;
} q8_activations;

static void q8_release(q8_activations *a) {
    free(a->q);
    free(a->quads);
    free(a->d);
    free(a->correction);
    a->q = a->quads = NULL;
    a->d = NULL;
    a->correction = NULL;
}

/* 0, or -2 when out of memory (with nothing left allocated) */
static int q8_prepare(int format, const float *x, int64_t tokens, int64_t k, q8_activations *a) {
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
        q8_release(a);
        return -2;
    }
    quantize_activations(format, x, tokens, k, a->q, a->d, a->correction, a->padded);
    for (int64_t b = 0; a->quads != NULL && b < blocks; b++)  /* per four blocks: their low positions, then high */
        for (int p = 0; p < 32; p++) a->quads[128 * (b / 4) + 64 * (p / 16) + 16 * (b % 4) + p % 16] = a->q[32 * b + p];
    return 0;
}

/* one row against every token of `a` */
static void q8_product_row(int format, const uint8_t *row, const uint8_t *scales, int64_t k, const q8_activations *a,
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
    if (code_offset(format) < 0 || k % 32 != 0 || k == 0) return -1;
    int64_t blocks = k / 32, row_bytes = oss_row_bytes(format, k);
    q8_activations a;
    int failed = q8_prepare(format, x, tokens, k, &a) != 0;
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
        q8_product_row(format, w + r * row_bytes, scales ? scales + r * blocks : NULL, k, &a, tokens, y + r, n);
    q8_release(&a);
    return failed ? -2 : 0;
}

/* ------------------------------------------------------------------------------------------------
 * Several products in one call: product j is y_j [tokens, n_j] = x_j [tokens, k_j] @ W_j^T (with
 * q8[j], Q8_0 activations), each the same floats as oss_packed_matmul or oss_q8_matmul gives it
 * alone. At one token (a decode step: q, k and v; or four experts' gate, up and down) a product
 * takes a few hundred microseconds, and a parallel region of its own for each leaves a thread
 * idle at every end: here the rows of all of them are shared out in one parallel loop, a unit
 * being a direct call's group of rows (the leftover rows of a product one more unit), or four
 * rows of a Q8_0 product. Other token counts run the products one after the other. Returns 0,
 * -1 for a product the kernels cannot take (nothing computed), -2 when out of memory.
 * ------------------------------------------------------------------------------------------------ */
#define Q8_BATCH_ROWS 4

/* units of product j (see above) */
static int64_t batch_units(int format, int64_t n, int q8) {
#if defined(HAVE_DIRECT)
    if (!q8) return n / direct_group_rows(format, 1) + (n % direct_group_rows(format, 1) != 0);
#endif
    return (n + Q8_BATCH_ROWS - 1) / Q8_BATCH_ROWS;
}

static int batch_product_ok(int format, int64_t k, int q8) {
    if (oss_row_bytes(format, k) < 0 || (format >= MXFP4 && k % 32 != 0)) return 0;
    return !q8 || (code_offset(format) >= 0 && k % 32 == 0 && k > 0);
}

int oss_matmul_batch(int count, const int *formats, const uint8_t *const *ws, const uint8_t *const *scales_of,
                     const int64_t *ns, const int64_t *ks, const float *const *xs, float *const *ys,
                     const int *q8, int64_t tokens, int threads) {
    if (count <= 0) return count == 0 ? 0 : -1;
    int shared = tokens == 1;  /* one parallel loop: one token, every product direct or Q8_0 */
    for (int j = 0; j < count; j++) {
        if (!batch_product_ok(formats[j], ks[j], q8[j])) return -1;
#if defined(HAVE_DIRECT)
        shared &= q8[j] || direct_format(formats[j]);
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
        if (q8[j] && made_by[j] == j && q8_prepare(formats[j], xs[j], 1, ks[j], &act[j]) != 0) failed = 1;
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
                    q8_product_row(format, w + r * row_bytes, scales ? scales + r * (k / 32) : NULL, k, &act[made_by[j]], 1,
                                   y + r, n);
                continue;
            }
#if defined(HAVE_DIRECT)
            int64_t group_rows = direct_group_rows(format, 1), groups = n / group_rows;  /* as direct() has them */
            if (unit < groups) {
                direct_rows_of(format, 1, 1)(w, scales, unit, groups, k, x, y, n);
            } else {
                for (int64_t r = groups * group_rows; r < n; r++) direct_rows_of(format, 0, 1)(w, scales, r, 0, k, x, y, n);
            }
#endif
        }
    }
    for (int j = 0; act != NULL && j < prepared; j++)
        if (q8[j] && made_by[j] == j) q8_release(&act[j]);
    free(first_unit);
    free(act);
    free(made_by);
    return failed ? -2 : 0;
}

/* ------------------------------------------------------------------------------------------------
 * One token's experts (a decode step's MoE block after routing), around their batched products:
 * the elementwise operations of moe_reference (mix_experts, swiglu_halves) on one token, each the
 * one correctly rounded float operation torch does, in torch's order. All but the sigmoid, which
 * the caller (oss_moe_experts) runs between the two calls.
 *
 * The chosen experts come in ascending id order (mix_experts'), ids[i] for the biases' rows; the
 * products' arrays (formats, ws, scales_of, q8) hold `parts` matrices per expert: 1 (HF's rows,
 * gate and up interleaved) or 2 (GGUF's gate rows, then its up rows). Both return 0, -1 for a
 * product the kernels cannot take, -2 when out of memory.
 * ------------------------------------------------------------------------------------------------ */

/* h = x @ W1[e]^T + b1[e] (b1 [experts, 2 * inter], interleaved like HF's rows); writes, each
 * [count, inter]: gate = min(h_gate, limit), up1 = clamp(h_up, -limit, limit) + 1, and
 * scaled = alpha * gate, the sigmoid's argument */
int oss_moe_gate_up(int count, int parts, const int *formats, const uint8_t *const *ws, const uint8_t *const *scales_of,
                    const int *q8, int64_t inter, int64_t hidden, const float *x, const float *b1, const int64_t *ids,
                    float limit, float alpha, float *gate, float *up1, float *scaled, int threads) {
    if (count <= 0 || (parts != 1 && parts != 2)) return -1;
    int products = count * parts;
    int64_t *ns = malloc(sizeof(int64_t) * (size_t)products), *ks = malloc(sizeof(int64_t) * (size_t)products);
    const float **xs = malloc(sizeof(float *) * (size_t)products);
    float **ys = malloc(sizeof(float *) * (size_t)products);
    float *interleaved = parts == 1 ? malloc(sizeof(float) * (size_t)(count * 2 * inter)) : NULL;
    int status = ns == NULL || ks == NULL || xs == NULL || ys == NULL || (parts == 1 && interleaved == NULL) ? -2 : 0;
    for (int i = 0; i < count && status == 0; i++)
        for (int p = 0; p < parts; p++) {
            int j = i * parts + p;
            ns[j] = 2 * inter / parts;
            ks[j] = hidden;
            xs[j] = x;
            ys[j] = parts == 1 ? interleaved + i * 2 * inter : (p == 0 ? gate : up1) + i * inter;
        }
    if (status == 0)
        status = oss_matmul_batch(products, formats, ws, scales_of, ns, ks, (const float *const *)xs, ys, q8, 1, threads);
    for (int i = 0; i < count && status == 0; i++) {
        const float *bias = b1 + ids[i] * 2 * inter;
        for (int64_t j = 0; j < inter; j++) {
            int64_t at = i * inter + j;
            float h_gate = (parts == 1 ? interleaved[2 * at] : gate[at]) + bias[2 * j];
            float h_up = (parts == 1 ? interleaved[2 * at + 1] : up1[at]) + bias[2 * j + 1];
            float g = h_gate > limit ? limit : h_gate;  /* (a NaN stays NaN, as in torch's clamp) */
            float u = h_up < -limit ? -limit : h_up > limit ? limit : h_up;
            gate[at] = g;
            up1[at] = u + 1.f;
            scaled[at] = g * alpha;
        }
    }
    free(ns);
    free(ks);
    free(xs);
    free(ys);
    free(interleaved);
    return status;
}

/* a = gate * sigmoid * up1 (into gate), y_i = a_i @ W2[e]^T, and
 * out = 0 + (y_0 + b2[e_0]) * weights[0] + (y_1 + b2[e_1]) * weights[1] + ..., added in order
 * (b2 [experts, hidden]; out [hidden]) */
int oss_moe_down(int count, const int *formats, const uint8_t *const *ws, const uint8_t *const *scales_of, const int *q8,
                 int64_t hidden, int64_t inter, float *gate, const float *sigmoid, const float *up1, const float *b2,
                 const int64_t *ids, const float *weights, float *out, int threads) {
    if (count <= 0) return -1;
    for (int64_t at = 0; at < count * inter; at++) gate[at] = gate[at] * sigmoid[at] * up1[at];
    int64_t *ns = malloc(sizeof(int64_t) * (size_t)count), *ks = malloc(sizeof(int64_t) * (size_t)count);
    const float **xs = malloc(sizeof(float *) * (size_t)count);
    float **ys = malloc(sizeof(float *) * (size_t)count);
    float *y = malloc(sizeof(float) * (size_t)(count * hidden));
    int status = ns == NULL || ks == NULL || xs == NULL || ys == NULL || y == NULL ? -2 : 0;
    for (int i = 0; i < count && status == 0; i++) {
        ns[i] = hidden;
        ks[i] = inter;
        xs[i] = gate + i * inter;
        ys[i] = y + i * hidden;
    }
    if (status == 0)
        status = oss_matmul_batch(count, formats, ws, scales_of, ns, ks, (const float *const *)xs, ys, q8, 1, threads);
    if (status == 0) {
        for (int64_t j = 0; j < hidden; j++) out[j] = 0.f;
        for (int i = 0; i < count; i++) {
            const float *bias = b2 + ids[i] * hidden;
            for (int64_t j = 0; j < hidden; j++) out[j] = out[j] + (y[i * hidden + j] + bias[j]) * weights[i];
        }
    }
    free(ns);
    free(ks);
    free(xs);
    free(ys);
    free(y);
    return status;
}

/* One token's q, k and v (a decode step): the three products as one batch into out = [q | k | v]
 * (their rows ns[0], ns[1], ns[2]; each x @ W^T + its bias), then the NeoX rotation of the first
 * `rotated` heads of head_dim values (q's and k's): value i of a head and its partner
 * j = i + head_dim/2 become (x_i cos_i + (-x_j) sin_i, x_j cos_j + x_i sin_j), each product
 * rounded, then the sum, as model.apply_rope computes them in torch, so the same floats.
 * Returns as oss_matmul_batch. */
int oss_qkv_one_token(const int *formats, const uint8_t *const *ws, const int64_t *ns, int64_t k, const float *x,
                      const int *q8, const float *const *biases, int64_t head_dim, int64_t rotated, const float *cos,
                      const float *sin, float *out, int threads) {
    const uint8_t *no_scales[3] = {NULL, NULL, NULL};
    int64_t ks[3] = {k, k, k};
    const float *xs[3] = {x, x, x};
    float *ys[3] = {out, out + ns[0], out + ns[0] + ns[1]};
    if (head_dim % 2 != 0 || rotated * head_dim > ns[0] + ns[1]) return -1;
    int status = oss_matmul_batch(3, formats, ws, no_scales, ns, ks, xs, ys, q8, 1, threads);
    if (status != 0) return status;
    for (int j = 0; j < 3; j++)
        for (int64_t i = 0; i < ns[j]; i++) ys[j][i] = ys[j][i] + biases[j][i];
    int64_t half = head_dim / 2;
    float *kept = malloc(sizeof(float) * (size_t)head_dim);
    if (kept == NULL) return -2;
    for (int64_t h = 0; h < rotated; h++) {
        float *v = out + h * head_dim;
        memcpy(kept, v, sizeof(float) * (size_t)head_dim);
        for (int64_t i = 0; i < half; i++) {
            v[i] = kept[i] * cos[i] + -kept[i + half] * sin[i];
            v[i + half] = kept[i + half] * cos[i + half] + kept[i] * sin[i + half];
        }
    }
    free(kept);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * One token's attention block (a decode step) in one call, for the layer described once in an
 * oss_attention_layer: x += o(attention(rms_norm(x))) + o's bias, the new position's k and v
 * written into the caller's cache, and the MoE block's normalized input computed from the new x.
 * The products and the rotation are oss_qkv_one_token's and oss_matmul_batch's (the same floats
 * as the per-product paths); the norm and the softmax are this file's own, in float, summed in
 * another order than torch's: within a few units in the last place of model.attention's.
 * ------------------------------------------------------------------------------------------------ */

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim;
    int64_t window;  /* positions a query sees, its own included (sliding layers); 0: all */
    float eps;
    const float *norm;            /* [hidden]: the attention's RMSNorm weight */
    int formats[4];               /* q, k, v, o */
    const uint8_t *ws[4];
    int q8[4];
    const float *biases[4];
    const float *sinks;           /* [heads] */
    const float *next_norm;       /* [hidden]: the MoE block's RMSNorm weight */
} oss_attention_layer;

/* y = (x * r) * w, r = 1 / sqrt(mean(x^2) + eps), as model.rms_norm; the squares summed in double */
static void rms_norm_one(const float *x, const float *w, int64_t n, float eps, float *y) {
    double squares = 0;
    for (int64_t i = 0; i < n; i++) squares += (double)x[i] * (double)x[i];
    float r = 1.f / sqrtf((float)(squares / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

static float dot(const float *a, const float *b, int64_t n) {
    float lanes[LANES] = {0};
    int64_t whole = n / LANES * LANES;
    for (int64_t i = 0; i < whole; i += LANES)
        for (int j = 0; j < LANES; j++) lanes[j] += a[i + j] * b[i + j];
    for (int64_t i = whole; i < n; i++) lanes[i - whole] += a[i] * b[i];
    return add_lanes(lanes);
}

/* one query head q [head_dim] over `count` keys and values (`stride` floats apart), with the
 * head's sink logit in the softmax's denominator: out [head_dim]; p: room for `count` floats */
static void one_query_head(const float *q, const float *keys, const float *values, int64_t count, int64_t stride,
                           int64_t head_dim, float sink, float *p, float *out) {
    float top = sink, scale = sqrtf((float)head_dim);
    for (int64_t s = 0; s < count; s++) {
        p[s] = dot(q, keys + s * stride, head_dim) / scale;
        if (p[s] > top) top = p[s];
    }
    float total = 0.f;
    for (int64_t s = 0; s < count; s++) {
        p[s] = expf(p[s] - top);
        total += p[s];
    }
    total += expf(sink - top);
    for (int64_t d = 0; d < head_dim; d++) out[d] = 0.f;
    for (int64_t s = 0; s < count; s++) {
        float share = p[s] / total;
        const float *v = values + s * stride;
        for (int64_t d = 0; d < head_dim; d++) out[d] += share * v[d];
    }
}

/* x [hidden] is updated in place; keys and values [>= position + 1, kv_heads, head_dim] hold the
 * earlier positions' and get this one's; cos and sin [head_dim] are its rotation; next_h [hidden]
 * gets rms_norm(new x, next_norm). Returns 0, -1 for a layer the kernels cannot take, -2 when out
 * of memory. */
int oss_attention_one_token(const oss_attention_layer *layer, float *x, const float *cos, const float *sin,
                            float *keys, float *values, int64_t position, float *next_h, int threads) {
    int64_t hidden = layer->hidden, heads = layer->heads, hd = layer->head_dim, kv = layer->kv_heads * hd;
    int64_t group = layer->kv_heads > 0 ? heads / layer->kv_heads : 0;
    if (group <= 0 || group * layer->kv_heads != heads || position < 0) return -1;
    int64_t first = layer->window > 0 && position + 1 > layer->window ? position + 1 - layer->window : 0;
    int64_t count = position + 1 - first, ns[3] = {heads * hd, kv, kv}, attended = heads * hd;
    float *h = malloc(sizeof(float) * (size_t)hidden), *qkv = malloc(sizeof(float) * (size_t)(heads * hd + 2 * kv));
    float *mixed = malloc(sizeof(float) * (size_t)(heads * hd)), *o = malloc(sizeof(float) * (size_t)hidden);
    float *p = malloc(sizeof(float) * (size_t)(heads * count));
    int status = h == NULL || qkv == NULL || mixed == NULL || o == NULL || p == NULL ? -2 : 0;
    if (status == 0) {
        rms_norm_one(x, layer->norm, hidden, layer->eps, h);
        status = oss_qkv_one_token(layer->formats, layer->ws, ns, hidden, h, layer->q8, layer->biases, hd,
                                   heads + layer->kv_heads, cos, sin, qkv, threads);
    }
    if (status == 0) {
        memcpy(keys + position * kv, qkv + heads * hd, sizeof(float) * (size_t)kv);
        memcpy(values + position * kv, qkv + heads * hd + kv, sizeof(float) * (size_t)kv);
#pragma omp parallel for num_threads(threads > 0 ? threads : 1)
        for (int64_t head = 0; head < heads; head++) {
            int64_t at = first * kv + head / group * hd;
            one_query_head(qkv + head * hd, keys + at, values + at, count, kv, hd, layer->sinks[head],
                           p + head * count, mixed + head * hd);
        }
        const uint8_t *no_scales[1] = {NULL};
        const float *xs[1] = {mixed};
        float *ys[1] = {o};
        status = oss_matmul_batch(1, layer->formats + 3, layer->ws + 3, no_scales, &hidden, &attended, xs, ys,
                                  layer->q8 + 3, 1, threads);
    }
    if (status == 0) {
        for (int64_t j = 0; j < hidden; j++) x[j] = x[j] + (o[j] + layer->biases[3][j]);
        rms_norm_one(x, layer->next_norm, hidden, layer->eps, next_h);
    }
    free(h);
    free(qkv);
    free(mixed);
    free(o);
    free(p);
    return status;
}

/* ------------------------------------------------------------------------------------------------
 * One token's MoE block (a decode step) in two calls, for the layer described once in an
 * oss_moe_layer: the routing (oss_moe_route), then the chosen experts (oss_moe_experts) with
 * oss_moe_gate_up's and oss_moe_down's products and elementwise operations around a sigmoid of
 * this file's own. Between the two the caller makes sure the chosen experts' matrices are in the
 * layer's arrays (it fills an expert's entries at its first use, mapping its pages in). The
 * router's products, its softmax and the sigmoid round in another order than torch's: within a
 * few units in the last place of moe_reference's.
 * ------------------------------------------------------------------------------------------------ */

typedef struct {
    int64_t experts, top_k, hidden, inter;
    int parts;                      /* first matrices per expert: 1 (HF's rows, gate and up interleaved) or 2 */
    float limit, alpha;
    const float *router_w;          /* [experts, hidden] */
    const float *router_b;          /* [experts] */
    const float *b1, *b2;           /* [experts, 2 inter], [experts, hidden] */
    const int *first_formats;       /* [experts * parts]: expert e's first matrices at e * parts */
    const uint8_t *const *first_ws;
    const uint8_t *const *first_scales;
    const int *first_q8;
    const int *second_formats;      /* [experts]: each expert's second matrix */
    const uint8_t *const *second_ws;
    const uint8_t *const *second_scales;
    const int *second_q8;
} oss_moe_layer;

/* ids [top_k] <- the experts of the top_k largest router logits (the lower id first among
 * equals), in ascending id order; weights [top_k] <- their softmax over those k */
int oss_moe_route(const oss_moe_layer *layer, const float *h, int64_t *ids, float *weights) {
    int64_t experts = layer->experts, k = layer->top_k;
    if (k <= 0 || k > experts) return -1;
    float *logits = malloc(sizeof(float) * (size_t)experts);
    int64_t *top = malloc(sizeof(int64_t) * (size_t)k);
    if (logits == NULL || top == NULL) {
        free(logits);
        free(top);
        return -2;
    }
    for (int64_t e = 0; e < experts; e++)
        logits[e] = dot(h, layer->router_w + e * layer->hidden, layer->hidden) + layer->router_b[e];
    for (int64_t i = 0; i < k; i++) {  /* k passes: k is 4 */
        int64_t best = -1;
        for (int64_t e = 0; e < experts; e++) {
            int taken = 0;
            for (int64_t j = 0; j < i; j++) taken |= top[j] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
        }
        top[i] = best;
    }
    float total = 0.f;
    for (int64_t i = 0; i < k; i++) total += (weights[i] = expf(logits[top[i]] - logits[top[0]]));
    for (int64_t i = 0; i < k; i++) weights[i] /= total;
    for (int64_t i = 0; i < k; i++) ids[i] = top[i];
    for (int64_t i = 1; i < k; i++)  /* ascending ids, weights alongside */
        for (int64_t j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
            int64_t e = ids[j];
            float w = weights[j];
            ids[j] = ids[j - 1], weights[j] = weights[j - 1];
            ids[j - 1] = e, weights[j - 1] = w;
        }
    free(logits);
    free(top);
    return 0;
}

/* x [hidden] += the sum over the chosen experts (ids ascending, weights theirs) of their SwiGLU
 * MLPs on h [hidden], as oss_moe_gate_up and oss_moe_down compute them (the sum first, then
 * added to x: the residual's one rounding, as torch's x + moe) */
int oss_moe_experts(const oss_moe_layer *layer, const float *h, const int64_t *ids, const float *weights, float *x,
                    int threads) {
    int64_t k = layer->top_k, inter = layer->inter, parts = layer->parts, first_count = k * parts;
    int *formats = malloc(sizeof(int) * (size_t)(2 * first_count + 2 * k));
    const uint8_t **pointers = malloc(sizeof(uint8_t *) * (size_t)(2 * first_count + 2 * k));
    float *halves = malloc(sizeof(float) * (size_t)(3 * k * inter)), *out = malloc(sizeof(float) * (size_t)layer->hidden);
    int status = formats == NULL || pointers == NULL || halves == NULL || out == NULL ? -2 : 0;
    for (int64_t i = 0; i < k && status == 0; i++) {
        if (ids[i] < 0 || ids[i] >= layer->experts || layer->second_ws[ids[i]] == NULL) status = -1;
        for (int64_t p = 0; p < parts && status == 0; p++) {
            int64_t from = ids[i] * parts + p, to = i * parts + p;
            if (layer->first_ws[from] == NULL) status = -1;
            formats[to] = layer->first_formats[from];
            formats[first_count + to] = layer->first_q8[from];
            pointers[to] = layer->first_ws[from];
            pointers[first_count + to] = layer->first_scales[from];
        }
        if (status == 0) {
            formats[2 * first_count + i] = layer->second_formats[ids[i]];
            formats[2 * first_count + k + i] = layer->second_q8[ids[i]];
            pointers[2 * first_count + i] = layer->second_ws[ids[i]];
            pointers[2 * first_count + k + i] = layer->second_scales[ids[i]];
        }
    }
    float *gate = halves, *up1 = halves + k * inter, *sigmoid = halves + 2 * k * inter;
    if (status == 0)
        status = oss_moe_gate_up((int)k, (int)parts, formats, pointers, pointers + first_count, formats + first_count,
                                 inter, layer->hidden, h, layer->b1, ids, layer->limit, layer->alpha, gate, up1, sigmoid,
                                 threads);
    if (status == 0) {
        for (int64_t i = 0; i < k * inter; i++) sigmoid[i] = 1.f / (1.f + expf(-sigmoid[i]));
        status = oss_moe_down((int)k, formats + 2 * first_count, pointers + 2 * first_count,
                              pointers + 2 * first_count + k, formats + 2 * first_count + k, layer->hidden, inter, gate,
                              sigmoid, up1, layer->b2, ids, weights, out, threads);
    }
    for (int64_t j = 0; j < layer->hidden && status == 0; j++) x[j] = x[j] + out[j];
    free(formats);
    free(pointers);
    free(halves);
    free(out);
    return status;
}
