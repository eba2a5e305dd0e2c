"""ggml type -> codec module (quantize / dequantize of whole rows), registered by type code."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from . import floats, mxfp4, q4_0, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0

OLLAMA_MXFP4 = 4  # Ollama's older gpt-oss GGUFs: MXFP4 blocks with the HF nibble order

QUANTIZERS = {T.Q4_0: q4_0, T.Q5_0: q5_0, T.Q5_1: q5_1, T.Q8_0: q8_0, T.Q4_K: q4_k, T.Q5_K: q5_k, T.Q6_K: q6_k}


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
    raise ValueError(f"no decoder for ggml type {qtype}")
