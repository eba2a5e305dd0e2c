"""Q5_K (ggml type 13): super-blocks of 256, 5-bit codes, 176 bytes.

Layout: fp16 d, fp16 dmin, 12 bytes of packed scales/mins, qh[32] (the fifth bits: bit 2k
of qh[l] for group 2k, bit 2k+1 for group 2k+1), qs[128] (low nibbles as in Q4_K).
Quantizer: ggml's `quantize_row_q5_K_ref`.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec
from .floats import F32
from .kquant_search import new_super_blocks, super_block_header
from .q4_k import kquant_groups

NMAX, RMIN, RDELTA, NSTEP = 31, -0.5, 0.1, 15


class Q5_KCodec(Codec, ggml_type=T.Q5_K):
    @staticmethod
    def quantize_blocks(blocks: np.ndarray) -> np.ndarray:
        d, dmin, scales, L = kquant_groups(blocks, NMAX, RMIN, RDELTA, NSTEP)
        B = L.shape[0]
        groups = L.reshape(B, 8, 32)
        out = new_super_blocks(d, dmin, scales, Q5_KCodec.block_bytes)
        high = (groups >> 4).astype(np.uint8)  # [B, 8, 32]: fifth bit of each code
        qh = np.zeros((B, 32), np.uint8)
        for g in range(8):
            qh |= high[:, g] << g
        out[:, 16:48] = qh
        low = (groups & 0xF).reshape(B, 4, 2, 32)
        out[:, 48:] = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(B, 128)
        return out

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        B = blocks.shape[0]
        d, dmin, sc, m = super_block_header(blocks)
        qh = blocks[:, 16:48]
        qs = blocks[:, 48:].reshape(B, 4, 32)
        low = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(B, 8, 32)
        high = np.stack([(qh >> g) & 1 for g in range(8)], axis=1)
        L = (low | (high << 4)).astype(F32)
        return ((d * sc)[..., None] * L - (dmin * m)[..., None]).reshape(B, -1)
