/* IEEE fp16 <-> float32, for the package's C sources (included by each; cbuild.py keys its cache
 * on these local headers too). half_bits rounds as numpy's float32 -> float16 cast does: to
 * nearest, ties to even, overflow to inf, NaN kept a NaN with its sign and high payload bits. */

#ifndef OSS_CONVERT_HALF_H
#define OSS_CONVERT_HALF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float half_float_from_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t half_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    uint32_t sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    if (magnitude >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* inf, or rounds past 65504 */
    if (magnitude < 0x38800000u) {  /* below 2^-14: a subnormal half (or zero), in units of 2^-24 */
        return (uint16_t)(sign | (uint16_t)nearbyintf(half_float_from_bits(magnitude) * 16777216.f));
    }
    uint32_t half = (magnitude >> 13) - (112u << 10), rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1))) half++;
    return (uint16_t)(sign | half);
}

static inline float half_value(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    if (exponent == 0) {  /* zero or subnormal: mantissa * 2^-24, exact in float32 */
        uint32_t bits;
        float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        memcpy(&bits, &magnitude, 4);
        return half_float_from_bits(sign | bits);
    }
    if (exponent == 31) return half_float_from_bits(sign | 0x7f800000u | (mantissa << 13));
    return half_float_from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

#endif
