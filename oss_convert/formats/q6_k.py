"""Q6_K (ggml type 14): super-blocks of 256 = 16 groups of 16, 6-bit codes, 210 bytes.

Layout: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], fp16 d. Within each
half of 128 values, ql[l] holds values l and l+64 and ql[l+32] values l+32 and l+96
(low, high nibble); qh[l] holds the high bits of values l, l+32, l+64, l+96.
Quantizer: ggml's `quantize_row_q6_K_ref`.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec
from .floats import F32, block_fp16, fp16_bits, fp16_value
from .kquant_search import make_qx_quants_rmse1
from .rounding import first_absmax_index, nearest_int


@np.errstate(all="ignore")
def quantize_super_blocks(blocks: np.ndarray) -> np.ndarray:
    groups = blocks.reshape(-1, 16, 16)
    B = groups.shape[0]
    scales, L = make_qx_quants_rmse1(groups.reshape(-1, 16), 32)
    scales, L = scales.reshape(B, 16), L.reshape(B, 16, 16).astype(np.int32)
    max_scale = scales[np.arange(B), first_absmax_index(scales)]
    zero = ~(np.abs(max_scale) >= F32(1e-15))  # also when every group scale is NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = (F32(-128) / np.where(zero, F32(1), max_scale)).astype(F32)
        d_bits = fp16_bits(F32(1) / iscale)
    q_scales = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
    d = fp16_value(d_bits)[:, None] * q_scales.astype(F32)
    nonzero = d != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int(groups / np.where(nonzero, d, F32(1))[..., None]), -32, 31) + 32
    L = np.where(nonzero[..., None], requant, L).reshape(B, 2, 4, 32).astype(np.uint8)
    out = np.empty((B, Q6_KCodec.block_bytes), np.uint8)
    ql = np.concatenate([L[:, :, 0] & 0xF | ((L[:, :, 2] & 0xF) << 4),
                         L[:, :, 1] & 0xF | ((L[:, :, 3] & 0xF) << 4)], axis=2)  # [B, 2, 64]
    qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)
    out[:, 0:128] = ql.reshape(B, 128)
    out[:, 128:192] = qh.reshape(B, 64)
    out[:, 192:208] = q_scales.view(np.uint8)
    out[:, 208:210] = d_bits.reshape(B, 1).view(np.uint8)
    out[zero] = 0
    return out


def dequantize_super_blocks(blocks: np.ndarray) -> np.ndarray:
    B = blocks.shape[0]
    ql = blocks[:, 0:128].reshape(B, 2, 64)
    qh = blocks[:, 128:192].reshape(B, 2, 32)
    sc = blocks[:, 192:208].view(np.int8).astype(F32).reshape(B, 16)
    d = block_fp16(blocks, 208)
    q = np.stack([(ql[:, :, :32] & 0xF) | ((qh & 3) << 4),
                  (ql[:, :, 32:] & 0xF) | (((qh >> 2) & 3) << 4),
                  (ql[:, :, :32] >> 4) | (((qh >> 4) & 3) << 4),
                  (ql[:, :, 32:] >> 4) | (((qh >> 6) & 3) << 4)], axis=2).astype(F32) - 32
    return ((d * sc).reshape(B, 16, 1) * q.reshape(B, 16, 16)).reshape(B, -1)


class Q6_KCodec(Codec, ggml_type=T.Q6_K):
    quantize_blocks = staticmethod(quantize_super_blocks)
    dequantize_blocks = staticmethod(dequantize_super_blocks)
