/* y[t, n] = sum_k x[t, k] * W[n, k] with W in its stored form (float, MXFP4 or a 32-value ggml
 * block type) and x float32, for the runtime on the CPU.
 *
 * W is expanded 16 rows at a time into a float32 tile that stays in cache, so a packed expert is
 * never written out whole; every token of the call is multiplied against the tile before the next
 * one is expanded. Expansion uses the arithmetic of the numpy codecs (ggml's dequantizers), so the
 * tile holds exactly the values they give. A few tokens (decode) take the direct rows instead.
 *
 * Every output is summed in one fixed order that depends on nothing but K: lane j of a 16-lane
 * accumulator takes k = j, j + 16, j + 32, ... by fused multiply-add, then the lanes are added
 * as a fixed tree. A token's result is therefore the same whichever format held the values,
 * whichever other tokens share the call, however many threads run, and with or without AVX-512
 * (the portable loop does the same operations lane by lane).
 */

#include "kernels.h"

#define TILE_ROWS 16

#if defined(HAVE_DIRECT)
/* Few tokens (decode): each row is expanded 16 values at a time in registers and multiplied at
 * once, never stored; the same lanes, the same fused multiply-adds in the same order as the tile
 * path, so the same floats. Every format but F16 (which takes the tile path). */
#define DIRECT_MAX_TOKENS 4

INTERNAL int oss_direct_format(int format) {
    return format != F16;
}

/* 16 float values of an F32 or BF16 row from value c on (zeros past k) */
static inline __attribute__((always_inline)) __m512 float_values(int format, const uint8_t *row, int64_t k, int64_t c) {
    __mmask16 mask = k - c >= LANES ? 0xffff : (__mmask16)((1u << (k - c)) - 1);
    if (format == F32) return _mm512_maskz_loadu_ps(mask, (const float *)row + c);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
        _mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + c)), 16));
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
INTERNAL int64_t oss_direct_group_rows(int format, int64_t tokens) {
    const int64_t *rows = format == F32 || format == BF16 ? FLOAT_GROUP : format == MXFP4 ? SCALES_APART_GROUP
                                                                                           : BLOCK_GROUP;
    return rows[tokens - 1];
}

/* the function for oss_direct_group_rows(format, tokens) rows (`grouped`) or for one row, of `format`,
 * against 1 to 4 tokens */
INTERNAL direct_fn oss_direct_rows_of(int format, int grouped, int64_t tokens) {
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
    direct_fn group = oss_direct_rows_of(format, 1, tokens), one = oss_direct_rows_of(format, 0, tokens);
    int64_t rows = oss_direct_group_rows(format, tokens), groups = n / rows;
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
    if (tokens <= DIRECT_MAX_TOKENS && oss_direct_format(format)) {
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
                oss_expand_row(format, w, scales, first + r, k, padded, tile + r * padded);
            tile_times_tokens(tile, rows, padded, x, k, tokens, y + first, n, acc);
        }
        free(tile);
        free(acc);
    }
    return failed ? -2 : 0;
}
