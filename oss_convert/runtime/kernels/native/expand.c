/* A stored row as float32 values, for every format the kernels read: the arithmetic of the numpy
 * codecs (ggml's dequantizers), so the values are theirs bit for bit. With AVX-512 the block
 * formats go through block_values, the direct products' own expansion. */

#include "kernels.h"

INTERNAL float oss_e8m0_table[256];

/* 2^(s - 127) for the E8M0 byte s; 255 is NaN */
static float e8m0_value(int s) {
    if (s == 255) return from_bits(0x7fc00000u);
    if (s == 0) return from_bits(0x00400000u);
    return from_bits((uint32_t)s << 23);
}

__attribute__((constructor)) static void fill_e8m0(void) {
    for (int s = 0; s < 256; s++) oss_e8m0_table[s] = e8m0_value(s);
}

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
INTERNAL void oss_expand_row(int format, const uint8_t *w, const uint8_t *scales, int64_t n, int64_t k, int64_t padded, float *out) {
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
    for (int64_t n = 0; n < rows; n++) oss_expand_row(format, w, scales, n, k, k, out + n * k);
}
