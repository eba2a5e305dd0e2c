"""Q4_0 (ggml type 2): blocks of 32, fp16 d then 16 bytes (x[j] low nibble, x[j+16] high).

Quantizer: ggml's `quantize_row_q4_0_ref`: d = max / -8 with max the signed value of
largest magnitude, q = min(15, trunc(x / d + 8.5)).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import ScaleAndCodes
from .floats import F32, block_fp16, put_block_fp16
from .rounding import reciprocal_or_zero, signed_absmax, toward_zero


def symmetric_scales_and_codes(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's rule for Q4_0 (16 levels) and Q5_0 (32): d = max / -(levels / 2), with max
    the first value of largest magnitude, and q = min(levels - 1, trunc(x / d + levels / 2 + 0.5)).

    float32 blocks [N, 32] -> (d float32 [N], codes uint8 [N, 32] in 0..levels - 1)."""
    half = levels // 2
    d = (signed_absmax(blocks) / F32(-half)).astype(F32)
    q = np.minimum(levels - 1, toward_zero(blocks * reciprocal_or_zero(d)[:, None] + F32(half + 0.5)))
    return d, q.astype(np.uint8)


def scales_and_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return symmetric_scales_and_codes(blocks, 16)


def pack(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], Q4_0Codec.block_bytes), np.uint8)
    put_block_fp16(out, 0, d)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out


class Q4_0Codec(ScaleAndCodes, ggml_type=T.Q4_0):
    scales_and_codes = staticmethod(scales_and_codes)
    pack = staticmethod(pack)

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        d = block_fp16(blocks, 0)
        return d * (np.concatenate([blocks[:, 2:] & 0xF, blocks[:, 2:] >> 4], axis=1).astype(F32) - 8)
