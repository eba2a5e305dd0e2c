"""Q5_1 (ggml type 7): blocks of 32, fp16 d, fp16 m, qh[4], qs[16]; x = d * q + m.

Quantizer: ggml's `quantize_row_q5_1_ref`: d = (max - min) / 31, q = trunc((x - min) / d + 0.5).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec
from .floats import F32, fp16_bits, fp16_value
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
        out[:, 0:2] = fp16_bits(d).reshape(-1, 1).view(np.uint8)
        out[:, 2:4] = fp16_bits(mn).reshape(-1, 1).view(np.uint8)
        out[:, 4:8] = qh
        out[:, 8:] = qs
        return out

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        d = fp16_value(blocks[:, 0:2].copy().view(np.uint16)).reshape(-1, 1)
        m = fp16_value(blocks[:, 2:4].copy().view(np.uint16)).reshape(-1, 1)
        return d * unpack_5bit(blocks[:, 4:8], blocks[:, 8:]).astype(F32) + m
