"""The rounding functions ggml's reference quantizers use, in float32."""

from __future__ import annotations

import numpy as np

_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23


def roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: nearest integer, ties away from zero, exactly.

    trunc(x + copysign(0.5, x)) is exact except where the float32 addition itself rounds
    across an integer: only for |x| < 0.5 (the answer is 0) and for |x| >= 2^23 (x is
    already an integer)."""
    x = np.asarray(x, np.float32)
    with np.errstate(invalid="ignore"):
        r = np.trunc(x + np.copysign(np.float32(0.5), x))
        a = np.abs(x)
        r[a < np.float32(0.5)] = 0
        big = a >= np.float32(2**23)
        r[big] = x[big]
        return r


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


def block_reduce(op, blocks: np.ndarray) -> np.ndarray:
    """op.reduce over rows of a power-of-two width by halving: numpy reduces short rows slowly.

    Only for order-independent ops (max, min): the result equals op.reduce(blocks, axis=1)."""
    while blocks.shape[1] > 1:
        half = blocks.shape[1] // 2
        blocks = op(blocks[:, :half], blocks[:, half:])
    return blocks[:, 0]


def signed_absmax(blocks: np.ndarray) -> np.ndarray:
    """Per row, the first value of largest magnitude (C: `if (amax < fabsf(v))`, NaN never wins).

    From the row max and min: the larger magnitude wins; only rows where both have the same
    magnitude (or that hold a NaN) need the position of the first one."""
    mx, mn = block_reduce(np.maximum, blocks), block_reduce(np.minimum, blocks)
    out = np.where(-mn > mx, mn, mx)
    with np.errstate(invalid="ignore"):
        unsure = (-mn == mx) & (mn != mx) | np.isnan(mx)
    if unsure.any():
        rows = np.flatnonzero(unsure)
        out[rows] = blocks[rows, first_absmax_index(blocks[rows])]
    return out


def first_absmax_index(values: np.ndarray) -> np.ndarray:
    """Index of the first largest |v| per row (strict >, NaN never wins), as ggml's loops."""
    a = np.abs(values)
    return np.where(np.isnan(a), -np.inf, a).argmax(axis=1)
