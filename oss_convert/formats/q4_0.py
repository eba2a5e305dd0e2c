"""Q4_0 (ggml type 2): blocks of 32, fp16 d then 16 bytes (x[j] low nibble, x[j+16] high).

Quantizer: ggml's `quantize_row_q4_0_ref`: d = max / -8 with max the signed value of
largest magnitude, q = min(15, trunc(x / d + 8.5)).
"""

from __future__ import annotations

import numpy as np

from .kquant_search import F32, fp16_bits, fp16_value
from .rounding import signed_absmax

BLOCK = 32
BLOCK_BYTES = 18


def inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, F32(0), F32(1) / d).astype(F32)


def truncate_u8(v: np.ndarray) -> np.ndarray:
    """C's float -> (int8_t) conversion: toward zero."""
    return np.trunc(v).astype(np.int32)


def symmetric_scales_and_codes(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's rule for Q4_0 (16 levels) and Q5_0 (32): d = max / -(levels / 2), with max
    the first value of largest magnitude, and q = min(levels - 1, trunc(x / d + levels / 2 + 0.5)).

    float32 blocks [N, 32] -> (d float32 [N], codes uint8 [N, 32] in 0..levels - 1)."""
    half = levels // 2
    d = (signed_absmax(blocks) / F32(-half)).astype(F32)
    q = np.minimum(levels - 1, truncate_u8(blocks * inverse(d)[:, None] + F32(half + 0.5))).astype(np.uint8)
    return d, q


def scales_and_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return symmetric_scales_and_codes(blocks, 16)


def pack(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], BLOCK_BYTES), np.uint8)
    out[:, 0:2] = fp16_bits(d).reshape(-1, 1).view(np.uint8)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out


def quantize(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, F32)
    return pack(*scales_and_codes(x.reshape(-1, BLOCK))).reshape(x.shape[:-1] + (-1,))


def dequantize(data: np.ndarray) -> np.ndarray:
    blocks = np.asarray(data, np.uint8).reshape(-1, BLOCK_BYTES)
    d = fp16_value(blocks[:, 0:2].copy().view(np.uint16)).reshape(-1, 1)
    q = np.concatenate([blocks[:, 2:] & 0xF, blocks[:, 2:] >> 4], axis=1).astype(F32) - 8
    return (d * q).reshape(data.shape[:-1] + (-1,))
