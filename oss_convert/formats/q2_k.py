"""Q2_K (ggml type 10): super-blocks of 256 = 16 groups of 16, 2-bit codes, 84 bytes.

Layout: 16 bytes of group scales (low nibble) and mins (high nibble), 64 bytes of codes (byte l
of each 32-byte run holds values l, l+32, l+64, l+96 of its 128, two bits each), fp16 d, fp16
dmin; x = d * scale * q - dmin * min.
Quantizer: ggml's `quantize_row_q2_K_ref` (what llama-quantize runs without an importance
matrix): make_qkx2_quants per group with |x| as weights and the absolute error, then 4-bit
group scales and mins against the largest of each, and the codes again from those.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec
from .floats import F32, block_fp16, fp16_bits, fp16_value
from .kquant_search import make_qkx2_quants
from .rounding import max_ignoring_nan, nearest_int

NMAX, RMIN, RDELTA, NSTEP = 3, -0.5, 0.1, 15


@np.errstate(all="ignore")  # inf/NaN from extreme inputs follow the C reference's IEEE semantics
def quantize_super_blocks(blocks: np.ndarray) -> np.ndarray:
    blocks = blocks.reshape(-1, 16, 16)
    B = blocks.shape[0]
    groups = blocks.reshape(-1, 16)
    scales, mins, L = make_qkx2_quants(groups, np.abs(groups), NMAX, RMIN, RDELTA, NSTEP, use_mad=True)
    scales, mins, L = scales.reshape(B, 16), mins.reshape(B, 16), L.reshape(B, 16, 16)
    max_scale = max_ignoring_nan(scales, axis=1)
    max_min = max_ignoring_nan(mins, axis=1)
    q4scale = F32(15)
    with np.errstate(divide="ignore"):
        ls = np.where(max_scale[:, None] > 0, nearest_int((q4scale / max_scale)[:, None] * scales) & 0xFF, 0)
        lm = np.where(max_min[:, None] > 0, nearest_int((q4scale / max_min)[:, None] * mins), 0)
    packed = ((ls | (lm << 4)) & 0xFF).astype(np.uint8)
    d_bits = fp16_bits(np.where(max_scale > 0, max_scale / q4scale, F32(0)))
    dmin_bits = fp16_bits(np.where(max_min > 0, max_min / q4scale, F32(0)))
    d = fp16_value(d_bits)[:, None] * (packed & 0xF).astype(F32)
    dm = fp16_value(dmin_bits)[:, None] * (packed >> 4).astype(F32)
    nonzero = d != 0
    requant = np.clip(nearest_int((blocks + dm[..., None]) / np.where(nonzero, d, F32(1))[..., None]), 0, NMAX)
    L = np.where(nonzero[..., None], requant, L).astype(np.uint8)
    out = np.empty((B, Q2_KCodec.block_bytes), np.uint8)
    out[:, 0:16] = packed
    out[:, 16:80] = pack_2bit(L.reshape(B, 256))
    out[:, 80:82] = d_bits.reshape(B, 1).view(np.uint8)
    out[:, 82:84] = dmin_bits.reshape(B, 1).view(np.uint8)
    return out


def dequantize_super_blocks(blocks: np.ndarray) -> np.ndarray:
    B = blocks.shape[0]
    d = block_fp16(blocks, 80)
    dmin = block_fp16(blocks, 82)
    sc = blocks[:, 0:16]
    L = unpack_2bit(blocks[:, 16:80]).reshape(B, 16, 16).astype(F32)
    return ((d * (sc & 0xF))[..., None] * L - (dmin * (sc >> 4))[..., None]).reshape(B, -1)


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """2-bit codes [B, 256] -> [B, 64]: byte l of run r holds values 128r + l + 32k at bits 2k."""
    runs = L.reshape(L.shape[0], 2, 4, 32)
    return (runs[:, :, 0] | (runs[:, :, 1] << 2) | (runs[:, :, 2] << 4) | (runs[:, :, 3] << 6)).reshape(-1, 64)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    runs = qs.reshape(qs.shape[0], 2, 1, 32)
    return ((runs >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3).reshape(-1, 256)


class Q2_KCodec(Codec, ggml_type=T.Q2_K):
    quantize_blocks = staticmethod(quantize_super_blocks)
    dequantize_blocks = staticmethod(dequantize_super_blocks)
