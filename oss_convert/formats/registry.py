"""ggml type -> codec module (quantize / dequantize of whole rows), registered by type code;
every other type ggml knows is decoded by gguf-py."""

from __future__ import annotations

import functools

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from . import floats, iq4_nl, iq4_xs, mxfp4, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0

OLLAMA_MXFP4 = 4  # Ollama's older gpt-oss GGUFs: MXFP4 blocks with the HF nibble order

QUANTIZERS = {T.Q4_0: q4_0, T.Q4_1: q4_1, T.Q5_0: q5_0, T.Q5_1: q5_1, T.Q8_0: q8_0, T.Q4_K: q4_k, T.Q5_K: q5_k, T.Q6_K: q6_k,
              T.IQ4_NL: iq4_nl, T.IQ4_XS: iq4_xs, T.Q2_K: q2_k,
              T.Q3_K: q3_k}


def encode(values: np.ndarray, qtype: T) -> np.ndarray:
    """float32 rows -> the bytes of ggml type `qtype` (rows keep their leading shape)."""
    values = np.asarray(values, np.float32)
    if qtype == T.F32:
        return values
    if qtype == T.F16:
        return values.astype(np.float16)
    if qtype == T.BF16:
        return floats.float32_to_bf16(values)
    return QUANTIZERS[qtype].quantize(values)


@functools.cache
def decodable(qtype: int) -> bool:
    """Whether `decode` knows ggml type `qtype` (tried on one block of zeros)."""
    try:
        block_bytes = 17 if qtype == OLLAMA_MXFP4 else GGML_QUANT_SIZES[T(qtype)][1]
        decode(np.zeros((1, block_bytes), np.uint8), qtype)
    except (ValueError, KeyError, NotImplementedError):
        return False
    return True


def decode(raw: np.ndarray, qtype: int) -> np.ndarray:
    """Stored bytes of ggml type `qtype`, rows along the last axis -> float32 values."""
    raw = np.asarray(raw)
    if qtype == T.F32:
        return raw.view(np.float32)
    if qtype == T.F16:
        return raw.view(np.float16).astype(np.float32)
    if qtype == T.BF16:
        return floats.bf16_to_float32(raw.view(np.uint16))
    if qtype in QUANTIZERS:
        return QUANTIZERS[qtype].dequantize(raw)
    if qtype == T.MXFP4:
        return mxfp4.decode_hf(*mxfp4.ggml_to_hf(raw))
    if qtype == OLLAMA_MXFP4:
        return mxfp4.decode_hf(*mxfp4.ollama_to_hf(raw))
    # Every other type (Q4_1, Q2_K, Q3_K, the IQ and TQ families, ...): gguf-py's dequantizers,
    # bit for bit what libggml's to_float gives (tests/test_quantizers.py checks each one).
    # It raises NotImplementedError for the few it lacks (Q8_1, Q8_K and the integer types).
    return gguf_quants.dequantize(raw.view(np.uint8), T(qtype)).astype(np.float32, copy=False)
