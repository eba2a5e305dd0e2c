"""Q5_K (ggml type 13): super-blocks of 256, 5-bit codes, 176 bytes.

Layout: fp16 d, fp16 dmin, 12 bytes of packed scales/mins, qh[32] (the fifth bits: bit 2k
of qh[l] for group 2k, bit 2k+1 for group 2k+1), qs[128] (low nibbles as in Q4_K).
Quantizer: ggml's `quantize_row_q5_K_ref`.
"""

from __future__ import annotations

import numpy as np

from .kquant_search import F32, new_super_blocks, super_block_header
from .q4_k import kquant_groups

BLOCK = 256
BLOCK_BYTES = 176
NMAX, RMIN, RDELTA, NSTEP = 31, -0.5, 0.1, 15


def quantize(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, F32)
    d, dmin, scales, L = kquant_groups(x, NMAX, RMIN, RDELTA, NSTEP)
    B = L.shape[0]
    groups = L.reshape(B, 8, 32)
    out = new_super_blocks(d, dmin, scales, BLOCK_BYTES)
    high = (groups >> 4).astype(np.uint8)  # [B, 8, 32]: fifth bit of each code
    qh = np.zeros((B, 32), np.uint8)
    for g in range(8):
        qh |= high[:, g] << g
    out[:, 16:48] = qh
    low = (groups & 0xF).reshape(B, 4, 2, 32)
    out[:, 48:] = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(B, 128)
    return out.reshape(x.shape[:-1] + (-1,))


def dequantize(data: np.ndarray) -> np.ndarray:
    blocks = np.asarray(data, np.uint8).reshape(-1, BLOCK_BYTES)
    B = blocks.shape[0]
    d, dmin, sc, m = super_block_header(blocks)
    qh = blocks[:, 16:48]
    qs = blocks[:, 48:].reshape(B, 4, 32)
    low = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(B, 8, 32)
    high = np.stack([(qh >> g) & 1 for g in range(8)], axis=1)
    L = (low | (high << 4)).astype(F32)
    out = (d * sc)[..., None] * L - (dmin * m)[..., None]
    return out.reshape(data.shape[:-1] + (-1,))
