"""Q5_1 (ggml type 7): blocks of 32, fp16 d, fp16 m, qh[4], qs[16]; x = d * q + m.

Quantizer: ggml's `quantize_row_q5_1_ref`: d = (max - min) / 31, q = trunc((x - min) / d + 0.5).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec
from .floats import F32, block_fp16, put_block_fp16
from .q5_0 import pack_5bit, unpack_5bit
from .rounding import first_min_max, reciprocal_or_zero, toward_zero


class Q5_1Codec(Codec, ggml_type=T.Q5_1):
    @staticmethod
    def quantize_blocks(blocks: np.ndarray) -> np.ndarray:
        mn, mx = first_min_max(blocks)
        d = ((mx - mn) / F32(31)).astype(F32)
        q = (toward_zero((blocks - mn[:, None]) * reciprocal_or_zero(d)[:, None] + F32(0.5)) & 0xFF).astype(np.uint8)
        qh, qs = pack_5bit(q)
        out = np.empty((blocks.shape[0], Q5_1Codec.block_bytes), np.uint8)
        put_block_fp16(out, 0, d)
        put_block_fp16(out, 2, mn)
        out[:, 4:8] = qh
        out[:, 8:] = qs
        return out

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        d = block_fp16(blocks, 0)
        m = block_fp16(blocks, 2)
        return d * unpack_5bit(blocks[:, 4:8], blocks[:, 8:]).astype(F32) + m
