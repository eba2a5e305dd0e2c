"""Q8_0 (ggml type 8): blocks of 32 int8 with one fp16 scale, 34 bytes.

As ggml's `quantize_row_q8_0_ref`: d = max|x| / 127, q = roundf(x / d) with ties away
from zero, all in float32; d stored as fp16 (round to nearest even).
"""

from __future__ import annotations

import numpy as np

from .rounding import block_reduce, roundf

BLOCK = 32
BLOCK_BYTES = 34


def scales_and_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 blocks [N, 32] -> (d float32 [N], codes [N, 32]: the int8 values' bytes)."""
    d = block_reduce(np.maximum, np.abs(blocks)) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = roundf(blocks * inv[:, None]).astype(np.int8)
    return d.astype(np.float32), q.view(np.uint8)


def pack(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], BLOCK_BYTES), np.uint8)
    with np.errstate(over="ignore"):
        out[:, :2] = d.astype(np.float16).reshape(-1, 1).view(np.uint8)
    out[:, 2:] = q
    return out


def quantize(values: np.ndarray) -> np.ndarray:
    """float32 [..., n] (n a multiple of 32) -> Q8_0 bytes [..., n // 32 * 34]."""
    x = np.asarray(values, dtype=np.float32)
    return pack(*scales_and_codes(x.reshape(-1, BLOCK))).reshape(x.shape[:-1] + (-1,))


def dequantize(data: np.ndarray) -> np.ndarray:
    """Q8_0 bytes [..., k * 34] -> float32 [..., k * 32]."""
    blocks = np.asarray(data, np.uint8).reshape(-1, BLOCK_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(data.shape[:-1] + (-1,))
