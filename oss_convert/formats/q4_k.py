"""Q4_K (ggml type 12): super-blocks of 256 = 8 groups of 32, 4-bit codes, 144 bytes.

Layout: fp16 d, fp16 dmin, 12 bytes of packed 6-bit group scales and mins, 128 bytes of
codes (byte l of each 32-byte run holds group 2k in the low nibble, 2k+1 in the high).
Quantizer: ggml's `quantize_row_q4_K_ref` (no importance matrix).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec
from .floats import F32, fp16_bits, fp16_value
from .kquant_search import make_qkx2_quants, new_super_blocks, pack_scales_mins_k4, seq_sum, super_block_header
from .rounding import max_ignoring_nan, nearest_int

NMAX, RMIN, RDELTA, NSTEP = 15, -1.0, 0.1, 20


@np.errstate(all="ignore")
def kquant_groups(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared by Q4_K and Q5_K: per super-block d, dmin, packed scales, and codes L [B, 256]."""
    blocks = np.asarray(x, F32).reshape(-1, 8, 32)
    B = blocks.shape[0]
    groups = blocks.reshape(-1, 32)
    av_x = np.sqrt(seq_sum(groups * groups) / F32(32)).astype(F32)
    weights = av_x[:, None] + np.abs(groups)
    scales, mins, L = make_qkx2_quants(groups, weights, nmax, rmin, rdelta, nstep)
    scales, mins, L = scales.reshape(B, 8), mins.reshape(B, 8), L.reshape(B, 8, 32)
    max_scale = max_ignoring_nan(scales, axis=1)
    max_min = max_ignoring_nan(mins, axis=1)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d_bits = fp16_bits(max_scale / F32(63))
    dmin_bits = fp16_bits(max_min / F32(63))
    d = fp16_value(d_bits)[:, None] * ls.astype(F32)
    dm = fp16_value(dmin_bits)[:, None] * lm.astype(F32)
    nonzero = d != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int((blocks + dm[..., None]) / np.where(nonzero, d, F32(1))[..., None]), 0, nmax)
    L = np.where(nonzero[..., None], requant, L).astype(np.uint8)
    return d_bits, dmin_bits, pack_scales_mins_k4(ls, lm), L.reshape(B, 256)


class Q4_KCodec(Codec, ggml_type=T.Q4_K):
    @staticmethod
    @np.errstate(all="ignore")
    def quantize_blocks(blocks: np.ndarray) -> np.ndarray:
        d, dmin, scales, L = kquant_groups(blocks, NMAX, RMIN, RDELTA, NSTEP)
        B = L.shape[0]
        out = new_super_blocks(d, dmin, scales, Q4_KCodec.block_bytes)
        runs = L.reshape(B, 4, 2, 32)  # 4 runs of 64 values: low nibbles first 32, high next 32
        out[:, 16:] = (runs[:, :, 0] | (runs[:, :, 1] << 4)).reshape(B, 128)
        return out

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        B = blocks.shape[0]
        d, dmin, sc, m = super_block_header(blocks)
        qs = blocks[:, 16:].reshape(B, 4, 32)
        L = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(B, 8, 32).astype(F32)
        return ((d * sc)[..., None] * L - (dmin * m)[..., None]).reshape(B, -1)
