"""The rounding functions ggml's reference quantizers use, in float32."""

from __future__ import annotations

import numpy as np


def roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: nearest integer, ties away from zero."""
    a = np.abs(x)
    floored = np.floor(a)
    return np.copysign(floored + (a - floored >= np.float32(0.5)), x).astype(np.float32)


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even (the float32 magic-number trick)."""
    return np.rint(np.asarray(x, np.float32)).astype(np.int32)
