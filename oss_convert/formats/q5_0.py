"""Q5_0 (ggml type 6): blocks of 32, fp16 d, qh (32 fifth bits, bit j for x[j]), qs[16].

Quantizer: ggml's `quantize_row_q5_0_ref`: d = max / -16, q = min(31, trunc(x / d + 16.5)).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import ScaleAndCodes
from .floats import F32, block_fp16, put_block_fp16
from .q4_0 import symmetric_scales_and_codes


def pack_5bit(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes [N, 32] in 0..31 -> (qh as 4 little-endian bytes [N, 4], qs [N, 16])."""
    qh = np.packbits((q >> 4) & 1, axis=1, bitorder="little")  # bit j of the u32 = element j
    qs = (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)
    return qh, qs.astype(np.uint8)


def unpack_5bit(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    high = np.unpackbits(np.ascontiguousarray(qh), axis=1, bitorder="little")  # bit j -> element j
    low = np.concatenate([qs & 0xF, qs >> 4], axis=1)
    return low | (high << 4)


def scales_and_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return symmetric_scales_and_codes(blocks, 32)


def pack(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    qh, qs = pack_5bit(q)
    out = np.empty((q.shape[0], Q5_0Codec.block_bytes), np.uint8)
    put_block_fp16(out, 0, d)
    out[:, 2:6] = qh
    out[:, 6:] = qs
    return out


class Q5_0Codec(ScaleAndCodes, ggml_type=T.Q5_0):
    scales_and_codes = staticmethod(scales_and_codes)
    pack = staticmethod(pack)

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        d = block_fp16(blocks, 0)
        return d * (unpack_5bit(blocks[:, 2:6], blocks[:, 6:]).astype(F32) - 16)
