"""Plain float formats (BF16 kept as raw uint16 words, numpy has no bfloat16; F16; F32) as codecs,
and the float helpers every codec shares (fp16 scales in and out of their bits)."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec

F32 = np.float32  # the codecs' arithmetic: ggml's reference quantizers compute in float32


def fp16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> fp16 (round to nearest even, overflow to inf) as uint16 words."""
    with np.errstate(over="ignore"):
        return np.asarray(x, F32).astype(np.float16).view(np.uint16)


def fp16_value(bits: np.ndarray) -> np.ndarray:
    """fp16 words (uint16) -> float32."""
    return np.asarray(bits, np.uint16).view(np.float16).astype(F32)


def block_fp16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 at bytes start:start+2 of each block (bytes [N, block_bytes]), as float32 [N, 1]."""
    return fp16_value(blocks[:, start:start + 2].copy().view(np.uint16))


def put_block_fp16(out: np.ndarray, start: int, values: np.ndarray) -> None:
    """Each block's fp16 at bytes start:start+2 of `out` (bytes [N, block_bytes]), from float32 [N]."""
    out[:, start:start + 2] = fp16_bits(values).reshape(-1, 1).view(np.uint8)


def bf16_to_float32(words: np.ndarray) -> np.ndarray:
    """BF16 bit patterns -> float32, exactly (BF16 is the top half of a float32)."""
    return (np.asarray(words, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> BF16 bit patterns, round to nearest even; NaN stays a quiet NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = ((bits.astype(np.uint64) + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)


def to_float32(data: np.ndarray, dtype: str) -> np.ndarray:
    """A safetensors or ggml float tensor's stored values as float32."""
    if dtype == "BF16":
        return bf16_to_float32(data)
    if dtype in ("F16", "F32", "F64"):
        return np.asarray(data).astype(np.float32)
    raise ValueError(f"{dtype} is not a float format")


# Stored forms of the float types are arrays of their own dtype (BF16: uint16 words), not bytes.

class F32Codec(Codec, ggml_type=T.F32):
    @classmethod
    def quantize(cls, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, np.float32)

    @classmethod
    def dequantize(cls, data: np.ndarray) -> np.ndarray:
        return np.asarray(data).view(np.float32)


class F16Codec(Codec, ggml_type=T.F16):
    @classmethod
    def quantize(cls, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, np.float32).astype(np.float16)

    @classmethod
    def dequantize(cls, data: np.ndarray) -> np.ndarray:
        return np.asarray(data).view(np.float16).astype(np.float32)


class BF16Codec(Codec, ggml_type=T.BF16):
    @classmethod
    def quantize(cls, values: np.ndarray) -> np.ndarray:
        return float32_to_bf16(values)

    @classmethod
    def dequantize(cls, data: np.ndarray) -> np.ndarray:
        return bf16_to_float32(np.asarray(data).view(np.uint16))
