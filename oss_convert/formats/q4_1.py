"""Q4_1 (ggml type 3): blocks of 32, fp16 d, fp16 m, then 16 bytes (x[j] low nibble, x[j+16]
high); x = d * q + m.

Quantizer: ggml's `quantize_row_q4_1_ref`: d = (max - min) / 15 and
q = MIN(15, (int8_t)((x - min) / d + 0.5)), the int8 conversion and the nibble packing done
as C does them (codes out of range wrap, which only non-finite blocks reach).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec
from .floats import F32, block_fp16, put_block_fp16
from .rounding import first_min_max, reciprocal_or_zero, toward_zero


class Q4_1Codec(Codec, ggml_type=T.Q4_1):
    @staticmethod
    def quantize_blocks(blocks: np.ndarray) -> np.ndarray:
        mn, mx = first_min_max(blocks)
        d = ((mx - mn) / F32(15)).astype(F32)
        codes = toward_zero((blocks - mn[:, None]) * reciprocal_or_zero(d)[:, None] + F32(0.5))
        as_int8 = ((codes & 0xFF) ^ 0x80) - 0x80
        q = np.minimum(15, as_int8) & 0xFF
        out = np.empty((blocks.shape[0], Q4_1Codec.block_bytes), np.uint8)
        put_block_fp16(out, 0, d)
        put_block_fp16(out, 2, mn)
        out[:, 4:] = (q[:, :16] | (q[:, 16:] << 4)) & 0xFF
        return out

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        d = block_fp16(blocks, 0)
        m = block_fp16(blocks, 2)
        return d * np.concatenate([blocks[:, 4:] & 0xF, blocks[:, 4:] >> 4], axis=1).astype(F32) + m
