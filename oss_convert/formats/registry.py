"""Values to and from the stored bytes of any ggml type: by our codecs (formats/table.py), and
every other type ggml knows by gguf-py's dequantizers."""

from __future__ import annotations

import functools

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from . import table

QUANTIZERS = table.quantizers()


def encode(values: np.ndarray, qtype: int) -> np.ndarray:
    """float32 rows -> the stored form of ggml type `qtype` (rows keep their leading shape)."""
    row = table.by_type(qtype)
    if row is None or row.codec is None or not row.quantizes:
        raise NotImplementedError(f"no quantizer for ggml type {qtype}")
    return row.codec.quantize(values)


@functools.cache
def decodable(qtype: int) -> bool:
    """Whether `decode` knows ggml type `qtype` (tried on one block of zeros)."""
    row = table.by_type(qtype)
    try:
        block_bytes = row.block_bytes if row is not None else gguf_quants.GGML_QUANT_SIZES[T(qtype)][1]
        decode(np.zeros((1, block_bytes), np.uint8), qtype)
    except (ValueError, KeyError, NotImplementedError):
        return False
    return True


def decode(raw: np.ndarray, qtype: int) -> np.ndarray:
    """Stored bytes of ggml type `qtype`, rows along the last axis -> float32 values."""
    row = table.by_type(qtype)
    if row is not None and row.codec is not None:  # (every row with a ggml type has its codec)
        return row.codec.dequantize(np.asarray(raw))
    # Every other type (the IQ and TQ families, ...): gguf-py's dequantizers, bit for bit what
    # libggml's to_float gives (tests/test_formats.py checks each one). It raises
    # NotImplementedError for the few it lacks (Q8_1, Q8_K and the integer types).
    return gguf_quants.dequantize(np.asarray(raw).view(np.uint8), T(qtype)).astype(np.float32, copy=False)
