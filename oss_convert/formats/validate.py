"""llama-quantize's check of every row it quantizes (ggml's `ggml_validate_row_data`):
no block's fp16 scale, and no value of a float type, may be infinite or NaN. A source
holding infinities, NaNs or values past fp16's range fails it, and llama-quantize then
writes nothing."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from .table import FORMATS

# Byte offsets of the fp16 scales in each block: d, and m or dmin where the type has one.
FP16_SCALES = {f.ggml_type: f.fp16_scales for f in FORMATS if f.fp16_scales}


def invalid_count(data: np.ndarray, qtype: T) -> int:
    """How many blocks (or, for F32/F16/BF16, values) of `data` the check rejects."""
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if qtype in FP16_SCALES:
        blocks = raw.reshape(-1, GGML_QUANT_SIZES[T(qtype)][1])
        bad = np.zeros(blocks.shape[0], bool)
        for offset in FP16_SCALES[qtype]:
            bad |= (blocks[:, offset + 1] & 0x7C) == 0x7C  # the high byte: exponent all ones
        return int(bad.sum())
    if qtype == T.F16:
        return int(((raw.view(np.uint16) & 0x7C00) == 0x7C00).sum())
    if qtype == T.BF16:
        return int(((raw.view(np.uint16) & 0x7FFF) >= 0x7F80).sum())
    if qtype == T.F32:
        return int((~np.isfinite(raw.view(np.float32))).sum())
    return 0
