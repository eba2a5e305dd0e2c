"""The rounding functions ggml's reference quantizers use, in float32."""

from __future__ import annotations

import numpy as np

_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23


def roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: nearest integer, ties away from zero."""
    a = np.abs(x)
    floored = np.floor(a)
    return np.copysign(floored + (a - floored >= np.float32(0.5)), x).astype(np.float32)


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit: add 1.5 * 2^23 in float32 and read the mantissa.

    Rounds half to even for |x| < 2^22; for NaN, infinities and huge values it returns
    what the C trick returns (e.g. 0 for NaN), which the reference then uses."""
    with np.errstate(invalid="ignore", over="ignore"):
        bits = (np.asarray(x, np.float32) + _MAGIC).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def max_ignoring_nan(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """max(0, values...) as a C loop `if (v > m) m = v` from 0 computes it: NaN never wins."""
    return np.fmax(np.fmax.reduce(values, axis=axis), np.float32(0))


def first_absmax_index(values: np.ndarray) -> np.ndarray:
    """Index of the first largest |v| per row (strict >, NaN never wins), as ggml's loops."""
    a = np.abs(values)
    return np.where(np.isnan(a), -np.inf, a).argmax(axis=1)
