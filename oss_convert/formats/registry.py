"""ggml type -> codec module (quantize / dequantize of whole rows), registered by type code."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from . import floats, q4_0, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0

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
