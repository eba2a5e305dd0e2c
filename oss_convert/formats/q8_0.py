"""Q8_0 (ggml type 8): blocks of 32 int8 with one fp16 scale, 34 bytes.

As ggml's `quantize_row_q8_0_ref`: d = max|x| / 127, q = roundf(x / d) with ties away
from zero, all in float32; d stored as fp16 (round to nearest even).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import ScaleAndCodes
from .floats import F32, block_fp16, put_block_fp16
from .rounding import block_reduce, reciprocal_or_zero, roundf


def scales_and_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 blocks [N, 32] -> (d float32 [N], codes [N, 32]: the int8 values' bytes)."""
    d = (block_reduce(np.maximum, np.abs(blocks)) / F32(127)).astype(F32)
    q = roundf(blocks * reciprocal_or_zero(d)[:, None]).astype(np.int8)
    return d, q.view(np.uint8)


def pack(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], Q8_0Codec.block_bytes), np.uint8)
    put_block_fp16(out, 0, d)
    out[:, 2:] = q
    return out


class Q8_0Codec(ScaleAndCodes, ggml_type=T.Q8_0):
    scales_and_codes = staticmethod(scales_and_codes)
    pack = staticmethod(pack)

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        d = block_fp16(blocks, 0)
        return d * blocks[:, 2:].view(np.int8).astype(F32)
