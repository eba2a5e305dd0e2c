"""Q5_1 (ggml type 7): blocks of 32, fp16 d, fp16 m, qh[4], qs[16]; x = d * q + m.

Quantizer: ggml's `quantize_row_q5_1_ref`: d = (max - min) / 31, q = trunc((x - min) / d + 0.5).
"""

from __future__ import annotations

import numpy as np

from .kquant_search import F32, fp16_bits, fp16_value
from .q4_0 import inverse, truncate_u8
from .q5_0 import pack_5bit, unpack_5bit
from .rounding import first_min_max

BLOCK = 32
BLOCK_BYTES = 24


def quantize(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, F32)
    blocks = x.reshape(-1, BLOCK)
    mn, mx = first_min_max(blocks)
    d = ((mx - mn) / F32(31)).astype(F32)
    q = (truncate_u8((blocks - mn[:, None]) * inverse(d)[:, None] + F32(0.5)) & 0xFF).astype(np.uint8)
    qh, qs = pack_5bit(q)
    out = np.empty((blocks.shape[0], BLOCK_BYTES), np.uint8)
    out[:, 0:2] = fp16_bits(d).reshape(-1, 1).view(np.uint8)
    out[:, 2:4] = fp16_bits(mn).reshape(-1, 1).view(np.uint8)
    out[:, 4:8] = qh
    out[:, 8:] = qs
    return out.reshape(x.shape[:-1] + (-1,))


def dequantize(data: np.ndarray) -> np.ndarray:
    blocks = np.asarray(data, np.uint8).reshape(-1, BLOCK_BYTES)
    d = fp16_value(blocks[:, 0:2].copy().view(np.uint16)).reshape(-1, 1)
    m = fp16_value(blocks[:, 2:4].copy().view(np.uint16)).reshape(-1, 1)
    q = unpack_5bit(blocks[:, 4:8], blocks[:, 8:]).astype(F32)
    return (d * q + m).reshape(data.shape[:-1] + (-1,))
