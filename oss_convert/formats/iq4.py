"""IQ4_NL (ggml type 20) and IQ4_XS (type 23): 4-bit indices into a non-linear table of 16
int8 levels, per block of 32 values.

- IQ4_NL: blocks of 32: fp16 d, then 16 bytes of indices (x[j] low nibble, x[j+16] high);
  x = d * LEVELS[i].
- IQ4_XS: super-blocks of 256: fp16 d, scales_h (u16: the high 2 bits of each block's 6-bit
  scale), scales_l[4] (their low 4 bits, two blocks a byte), then 128 bytes of indices laid
  out per block as in IQ4_NL; x = d * (scale - 32) * LEVELS[i].

Quantizer: ggml's `quantize_row_iq4_nl_impl` as llama-quantize calls it without an importance
matrix (`quantize_iq4_nl` / `quantize_iq4_xs`, ntry = 7): per block, weights x^2, a first
scale from the value of largest magnitude, then 15 trial scales; the best by weighted least
squares. All in float32 with the C loop's summation order.

iq4_search.c does the same operations block by block, compiled (formats/compiled.py): the same
bytes, 35 times faster; this numpy code runs where no C compiler is at hand.
"""

from __future__ import annotations

import ctypes

import numpy as np
from gguf import GGMLQuantizationType as T

from . import compiled
from .codec import Codec
from .floats import F32, block_fp16, put_block_fp16
from .kquant_search import seq_sum_rows
from .rounding import nearest_int, reciprocal_or_zero, signed_absmax

LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
LEVELS_F = LEVELS.astype(F32)
BLOCK = 32  # the values each level index's block scale covers, in both formats
NTRY = 7
GROUP_MAX_EPS = F32(1e-15)


def best_index(x: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8 over LEVELS: the nearest level, the upper one on a tie or a NaN."""
    mu = np.clip(np.searchsorted(LEVELS_F, x, side="right"), 1, 15)
    lower = mu - 1
    with np.errstate(invalid="ignore"):
        index = np.where(x - LEVELS_F[lower] < LEVELS_F[mu] - x, lower, mu)
        index = np.where(x <= LEVELS_F[0], 0, np.where(x >= LEVELS_F[15], 15, index))
    return index.astype(np.uint8)


def _weighted_fit(x: np.ndarray, weight: np.ndarray, inverse_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum w q x, sum w q^2) over each block [32, G] for the levels nearest to x * inverse_scale."""
    q = LEVELS_F[best_index(x * inverse_scale)]
    wq = weight * q
    return seq_sum_rows(wq * x), seq_sum_rows(wq * q)


@np.errstate(all="ignore")  # inf/NaN from extreme inputs follow the C reference's IEEE semantics
def block_scales(blocks: np.ndarray) -> np.ndarray:
    """The fitted scale of each block of 32 (float32 [G]); 0 where the block is (near) zero."""
    big = signed_absmax(blocks)  # the first value of largest magnitude (+0 for a block of zeros)
    x = np.ascontiguousarray(blocks.T)  # [32, G]: sums run row after row, as the C loop
    weight = x * x
    d = (-big / LEVELS_F[0]).astype(F32)
    sumqx, sumq2 = _weighted_fit(x, weight, (F32(1) / d).astype(F32))
    d = np.where(sumq2 > 0, sumqx / sumq2, F32(0)).astype(F32)
    best = (d * sumqx).astype(F32)
    for itry in range(-NTRY, NTRY + 1):
        inverse = (F32(itry + int(LEVELS[0])) / big).astype(F32)
        sumqx, sumq2 = _weighted_fit(x, weight, inverse)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / sumq2, d).astype(F32)
        best = np.where(better, d * sumqx, best).astype(F32)
    return np.where(np.abs(big) < GROUP_MAX_EPS, F32(0), d).astype(F32)


def compiled_search() -> ctypes.CDLL | None:
    """iq4_search.c, built for this machine; None without a compiler (or OSS_CONVERT_NATIVE=0)."""
    lib = compiled.library("iq4_search")
    if lib is not None:
        for name in ("oss_quantize_iq4_nl", "oss_quantize_iq4_xs"):
            getattr(lib, name).restype = None
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    return lib


def _compiled(name: str, blocks: np.ndarray, block_bytes: int) -> np.ndarray | None:
    """Blocks [N, values] quantized by iq4_search.c's `name`, or None without it."""
    lib = compiled_search()
    if lib is None:
        return None
    flat = np.ascontiguousarray(blocks, F32)
    out = np.empty((flat.shape[0], block_bytes), np.uint8)
    getattr(lib, name)(flat.ctypes.data, out.shape[0], out.ctypes.data)  # ctypes lets the GIL go
    return out


def _pack_indices(indices: np.ndarray) -> np.ndarray:
    """Indices [N, 32k] -> bytes [N, 16k]: per block of 32, x[j] low nibble, x[j+16] high."""
    b = indices.reshape(indices.shape[0], -1, 2, 16)
    return (b[:, :, 0] | (b[:, :, 1] << 4)).reshape(indices.shape[0], -1)


def _unpack_indices(packed: np.ndarray) -> np.ndarray:
    b = packed.reshape(packed.shape[0], -1, 16)
    return np.concatenate([b & 0xF, b >> 4], axis=2).reshape(packed.shape[0], -1)


class IQ4_NLCodec(Codec, ggml_type=T.IQ4_NL):
    @staticmethod
    def quantize_blocks(blocks: np.ndarray) -> np.ndarray:
        fast = _compiled("oss_quantize_iq4_nl", blocks, IQ4_NLCodec.block_bytes)
        return fast if fast is not None else quantize_nl_numpy(blocks)

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        d = block_fp16(blocks, 0)
        return d * LEVELS_F[_unpack_indices(blocks[:, 2:])]


@np.errstate(all="ignore")
def quantize_nl_numpy(blocks: np.ndarray) -> np.ndarray:
    """IQ4_NL blocks [N, 32] in numpy (the path without a compiler)."""
    d = block_scales(blocks)
    indices = best_index(blocks * reciprocal_or_zero(d)[:, None])
    out = np.empty((blocks.shape[0], IQ4_NLCodec.block_bytes), np.uint8)
    put_block_fp16(out, 0, d)
    out[:, 2:] = _pack_indices(indices)
    return out


class IQ4_XSCodec(Codec, ggml_type=T.IQ4_XS):
    @staticmethod
    def quantize_blocks(blocks: np.ndarray) -> np.ndarray:
        fast = _compiled("oss_quantize_iq4_xs", blocks, IQ4_XSCodec.block_bytes)
        return fast if fast is not None else quantize_xs_numpy(blocks)

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        return dequantize_xs_blocks(blocks)


@np.errstate(all="ignore")
def quantize_xs_numpy(supers: np.ndarray) -> np.ndarray:
    """IQ4_XS super-blocks [N, 256] in numpy (the path without a compiler)."""
    SUPER = IQ4_XSCodec.block  # values per super-block
    n = supers.shape[0]
    scales = block_scales(supers.reshape(-1, BLOCK)).reshape(n, SUPER // BLOCK)
    max_scale = signed_absmax(scales)  # the block scale of largest magnitude, the first on a tie
    d = (-max_scale / F32(32)).astype(F32)
    levels = np.clip(nearest_int(reciprocal_or_zero(d)[:, None] * scales), -32, 31)
    dl = (d[:, None] * levels.astype(F32)).astype(F32)
    blocks = supers.reshape(n, SUPER // BLOCK, BLOCK)
    indices = best_index(reciprocal_or_zero(dl)[:, :, None] * blocks).reshape(n, SUPER)
    biased = (levels + 32).astype(np.uint16)
    scales_h = np.zeros(n, np.uint16)
    for ib in range(SUPER // BLOCK):
        scales_h |= (biased[:, ib] >> 4) << (2 * ib)
    low = (biased & 0xF).astype(np.uint8)
    out = np.empty((n, IQ4_XSCodec.block_bytes), np.uint8)
    put_block_fp16(out, 0, d)
    out[:, 2:4] = scales_h.reshape(-1, 1).view(np.uint8)
    out[:, 4:8] = low[:, 0::2] | (low[:, 1::2] << 4)
    out[:, 8:] = _pack_indices(indices)
    return out


def dequantize_xs_blocks(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    d = block_fp16(blocks, 0).reshape(n)
    scales_h = blocks[:, 2:4].copy().view(np.uint16).reshape(n)
    low = np.stack([blocks[:, 4:8] & 0xF, blocks[:, 4:8] >> 4], axis=2).reshape(n, 8)
    high = np.stack([(scales_h >> (2 * ib)) & 3 for ib in range(8)], axis=1)
    dl = d[:, None] * ((low | (high << 4)).astype(F32) - 32)
    q = LEVELS_F[_unpack_indices(blocks[:, 8:])].reshape(n, 8, BLOCK)
    return (dl[:, :, None] * q).reshape(n, -1)
