"""Q3_K (ggml type 11): super-blocks of 256 = 16 groups of 16, 3-bit codes, 110 bytes.

Layout: hmask[32] (the codes' third bits: bit b of byte m for value 32b + m), qs[64] (their low
two bits, laid out as Q2_K's), 12 bytes of 6-bit signed group scales (low nibbles in bytes
0-7, high two bits in bytes 8-11), fp16 d; x = d * (scale - 32) * (q - 4).
Quantizer: ggml's `quantize_row_q3_K_ref` (what llama-quantize runs without an importance
matrix): make_q3_quants per group (a least-squares scale refined by up to 5 passes of
coordinate descent over the codes, weights x^2), 6-bit scales against the largest, and the
codes again from those.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec
from .floats import F32, block_fp16, fp16_bits, fp16_value
from .q2_k import pack_2bit, unpack_2bit
from .rounding import nearest_int, signed_absmax

NMAX = 4
GROUP_MAX_EPS = F32(1e-15)


@np.errstate(all="ignore")
def make_q3_quants(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_q3_quants(16, 4, x, L, do_rmse=true) for every group at once: x [G, 16] ->
    (scale [G], codes L [G, 16] in 0..7). The passes run element by element as the C loop does
    (each update changes the sums the next element sees), vectorized across groups; a group
    whose pass changes nothing would change nothing in later passes either."""
    G, n = x.shape
    big = signed_absmax(x)
    zero = np.abs(big) < GROUP_MAX_EPS
    iscale = (F32(-NMAX) / np.where(zero, F32(1), big)).astype(F32)
    L = np.clip(nearest_int(iscale[:, None] * x), -NMAX, NMAX - 1).astype(F32)
    w = x * x
    wx = w * x
    sumlx = np.zeros(G, F32)
    suml2 = np.zeros(G, F32)
    for i in range(n):
        sumlx += wx[:, i] * L[:, i]
        suml2 += w[:, i] * L[:, i] * L[:, i]
    for _ in range(5):
        for i in range(n):
            li = L[:, i]
            slx = sumlx - wx[:, i] * li
            sl2 = suml2 - w[:, i] * li * li
            new_l = np.clip(nearest_int(x[:, i] * sl2 / slx), -NMAX, NMAX - 1).astype(F32)
            slx2 = slx + wx[:, i] * new_l
            sl22 = sl2 + w[:, i] * new_l * new_l
            take = (slx > 0) & (new_l != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[:, i] = np.where(take, new_l, li)
            sumlx = np.where(take, slx2, sumlx).astype(F32)
            suml2 = np.where(take, sl22, suml2).astype(F32)
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    codes = (L + NMAX).astype(np.uint8)
    codes[zero] = 0
    return np.where(zero, F32(0), scale).astype(F32), codes


@np.errstate(all="ignore")  # inf/NaN from extreme inputs follow the C reference's IEEE semantics
def quantize_super_blocks(blocks: np.ndarray) -> np.ndarray:
    blocks = blocks.reshape(-1, 16, 16)
    B = blocks.shape[0]
    scales, L = make_q3_quants(blocks.reshape(-1, 16))
    scales, L = scales.reshape(B, 16), L.reshape(B, 16, 16)
    max_scale = signed_absmax(scales)
    has_scale = max_scale != 0
    iscale = np.where(has_scale, F32(-32) / np.where(has_scale, max_scale, F32(1)), F32(0)).astype(F32)
    as_int8 = ((nearest_int(iscale[:, None] * scales) & 0xFF) ^ 0x80) - 0x80  # int8_t l = nearest_int(...)
    biased = np.where(has_scale[:, None], np.clip(as_int8, -32, 31) + 32, 0).astype(np.uint8)
    packed = np.zeros((B, 12), np.uint8)
    packed[:, 0:8] = (biased[:, 0:8] & 0xF) | ((biased[:, 8:16] & 0xF) << 4)
    for j in range(16):
        packed[:, 8 + j % 4] |= (biased[:, j] >> 4) << (2 * (j // 4))
    d_bits = fp16_bits(np.where(has_scale, F32(1) / iscale, F32(0)))
    d = fp16_value(d_bits)[:, None] * (biased.astype(F32) - 32)
    nonzero = d != 0
    requant = np.clip(nearest_int(blocks / np.where(nonzero, d, F32(1))[..., None]), -4, 3) + 4
    L = np.where(nonzero[..., None], requant, L).astype(np.uint8).reshape(B, 256)
    high = L > 3
    bits = high.reshape(B, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    out = np.empty((B, Q3_KCodec.block_bytes), np.uint8)
    out[:, 0:32] = np.bitwise_or.reduce(bits, axis=1)
    out[:, 32:96] = pack_2bit(np.where(high, L - 4, L))
    out[:, 96:108] = packed
    out[:, 108:110] = d_bits.reshape(B, 1).view(np.uint8)
    return out


def dequantize_super_blocks(blocks: np.ndarray) -> np.ndarray:
    B = blocks.shape[0]
    d = block_fp16(blocks, 108)
    packed = blocks[:, 96:108]
    low4 = np.concatenate([packed[:, 0:8] & 0xF, packed[:, 0:8] >> 4], axis=1)
    high2 = np.stack([(packed[:, 8 + j % 4] >> (2 * (j // 4))) & 3 for j in range(16)], axis=1)
    sc = (low4 | (high2 << 4)).astype(F32) - 32
    low = unpack_2bit(blocks[:, 32:96])
    high = (blocks[:, 0:32].reshape(B, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    q = (low | (high.reshape(B, 256) << 2)).astype(F32) - 4
    return ((d * sc)[..., None] * q.reshape(B, 16, 16)).reshape(B, -1)


class Q3_KCodec(Codec, ggml_type=T.Q3_K):
    quantize_blocks = staticmethod(quantize_super_blocks)
    dequantize_blocks = staticmethod(dequantize_super_blocks)
