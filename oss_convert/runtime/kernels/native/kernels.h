/* What the CPU kernels' files share: the weight formats they read in place, reading a block's
 * values (the arithmetic of the numpy codecs, ggml's dequantizers), and the functions one file
 * calls in another.
 *
 *   expand.c          a stored row as float32 values; bytes per row
 *   float_products.c  products against float32 activations (tiles, and direct rows at decode)
 *   q8_products.c     products against activations rounded to Q8_0 (llama.cpp's arithmetic)
 *   batch.c           several products in one parallel loop (a decode step's)
 *   decoder.c         a decode step's attention block and MoE block
 *
 * Built together into one library by oss_convert/cbuild.py with -ffp-contract=off: the compiler
 * must not fuse the codecs' separate multiply and add (Q5_1: d * q + m).
 */

#ifndef OSS_KERNELS_H
#define OSS_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../../formats/half.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* shared between the files of the library, not exported from it */
#define INTERNAL __attribute__((visibility("hidden")))

/* The formats, numbered as oss_convert.formats.table's `kernel` column.
 * MXFP4: HF's layout (codes [K/2], byte j = values 2j and 2j + 1; E8M0 scales apart);
 * MXFP4_GGML: ggml's blocks of 17 bytes (the E8M0 byte, then byte j = values j and j + 16) */
enum { F32 = 0, BF16 = 1, F16 = 2, MXFP4 = 3, Q8_0 = 4, Q5_0 = 5, Q4_0 = 6, Q5_1 = 7, MXFP4_GGML = 8, Q4_K = 9 };

#define LANES 16

static const float E2M1[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                               -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

static inline float from_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* 2^(s - 127) for each E8M0 byte s (255: NaN), filled when the library loads (expand.c) */
extern INTERNAL float oss_e8m0_table[256];
static inline float e8m0(uint8_t s) { return oss_e8m0_table[s]; }

static inline uint16_t read16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t read32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* bytes of a stored row of k values (MXFP4: its codes; the scales lie apart), -1 where `format`
 * cannot hold k values */
int64_t oss_row_bytes(int format, int64_t k);

/* Q4_K: super-blocks of 256 values (fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128
 * bytes of nibbles); sub-block j (32 values) is d * scale_j * q - dmin * min_j, its nibbles the
 * low (j even) or high (j odd) halves of bytes 32 * (j / 2) to 32 * (j / 2) + 31. The two
 * products and the difference are rounded one by one, as the codec computes them. */
static inline void q4_k_sub_block(const uint8_t *super, int j, float *scale, float *min) {
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

/* the lanes of an accumulator added as a fixed tree: lane j + lane j + width, width 8, 4, 2, 1 */
static inline float add_lanes(float *lanes) {
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int j = 0; j < width; j++) lanes[j] += lanes[j + width];
    return lanes[0];
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define HAVE_DIRECT 1

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
#endif

/* ---------------------------------------------------------------------- between the files */

/* expand.c: row n of W as k float32 values, followed by zeros up to `padded` */
INTERNAL void oss_expand_row(int format, const uint8_t *w, const uint8_t *scales, int64_t n, int64_t k,
                             int64_t padded, float *out);

/* float_products.c: y [tokens, n] = x [tokens, k] @ W[n, k]^T; 0, -1 for a format or k it cannot
 * take, -2 when out of memory */
int oss_packed_matmul(int format, const uint8_t *w, const uint8_t *scales, int64_t n, int64_t k,
                      const float *x, int64_t tokens, float *y, int threads);

#if defined(HAVE_DIRECT)
/* float_products.c: the direct rows (a few tokens, each row expanded in registers). A direct
 * function multiplies rows first, first + stride, ... (direct_group_rows of them, or one) */
typedef void (*direct_fn)(const uint8_t *w, const uint8_t *scales, int64_t first, int64_t stride, int64_t k,
                          const float *x, float *y, int64_t n_out);
INTERNAL int oss_direct_format(int format);
INTERNAL int64_t oss_direct_group_rows(int format, int64_t tokens);
INTERNAL direct_fn oss_direct_rows_of(int format, int grouped, int64_t tokens);
#endif

/* q8_products.c: a product's activations as Q8_0: codes q [tokens, blocks, 32], scales d and
 * offset sums correction [tokens, padded]; for one token against MXFP4, the codes also as `quads` */
typedef struct {
    int8_t *q, *quads;
    float *d;
    int32_t *correction;
    int64_t padded;
} q8_activations;

int oss_q8_matmul(int format, const uint8_t *w, const uint8_t *scales, int64_t n, int64_t k, const float *x,
                  int64_t tokens, float *y, int threads);
INTERNAL int oss_q8_takes(int format, int64_t k);
INTERNAL int oss_q8_prepare(int format, const float *x, int64_t tokens, int64_t k, q8_activations *a);
INTERNAL void oss_q8_release(q8_activations *a);
INTERNAL void oss_q8_product_row(int format, const uint8_t *row, const uint8_t *scales, int64_t k,
                                 const q8_activations *a, int64_t tokens, float *y, int64_t n_out);

/* batch.c */
int oss_matmul_batch(int count, const int *formats, const uint8_t *const *ws, const uint8_t *const *scales_of,
                     const int64_t *ns, const int64_t *ks, const float *const *xs, float *const *ys,
                     const int *q8, int64_t tokens, int threads);

#endif
