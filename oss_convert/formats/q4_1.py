"""Q4_1 (ggml type 3): blocks of 32, fp16 d, fp16 m, then 16 bytes (x[j] low nibble, x[j+16]
high); x = d * q + m.

Quantizer: ggml's `quantize_row_q4_1_ref`: d = (max - min) / 15 and
q = MIN(15, (int8_t)((x - min) / d + 0.5)), the int8 conversion and the nibble packing done
as C does them (codes out of range wrap, which only non-finite blocks reach).
"""

from __future__ import annotations

import numpy as np

from .kquant_search import F32, fp16_bits, fp16_value
from .q4_0 import inverse, truncate_u8
from .rounding import first_min_max

BLOCK = 32
BLOCK_BYTES = 20


def _codes(blocks: np.ndarray, mn: np.ndarray, d: np.ndarray) -> np.ndarray:
    as_int8 = ((truncate_u8((blocks - mn[:, None]) * inverse(d)[:, None] + F32(0.5)) & 0xFF) ^ 0x80) - 0x80
    return np.minimum(15, as_int8) & 0xFF


def quantize(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, F32)
    blocks = x.reshape(-1, BLOCK)
    mn, mx = first_min_max(blocks)
    d = ((mx - mn) / F32(15)).astype(F32)
    q = _codes(blocks, mn, d)
    out = np.empty((blocks.shape[0], BLOCK_BYTES), np.uint8)
    out[:, 0:2] = fp16_bits(d).reshape(-1, 1).view(np.uint8)
    out[:, 2:4] = fp16_bits(mn).reshape(-1, 1).view(np.uint8)
    out[:, 4:] = (q[:, :16] | (q[:, 16:] << 4)) & 0xFF
    return out.reshape(x.shape[:-1] + (-1,))


def dequantize(data: np.ndarray) -> np.ndarray:
    blocks = np.asarray(data, np.uint8).reshape(-1, BLOCK_BYTES)
    d = fp16_value(blocks[:, 0:2].copy().view(np.uint16)).reshape(-1, 1)
    m = fp16_value(blocks[:, 2:4].copy().view(np.uint16)).reshape(-1, 1)
    q = np.concatenate([blocks[:, 4:] & 0xF, blocks[:, 4:] >> 4], axis=1).astype(F32)
    return (d * q + m).reshape(data.shape[:-1] + (-1,))
