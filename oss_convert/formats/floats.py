"""Plain float formats: BF16 (kept as raw uint16 words, numpy has no bfloat16), F16, F32."""

from __future__ import annotations

import numpy as np


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
