"""The rounding functions ggml's reference quantizers use, in float32."""

from __future__ import annotations

import numpy as np

MAGIC = np.float32(12582912.0)  # 1.5 * 2**23


_BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0))  # 0.49999997


def roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf (nearest integer, ties away from zero), exactly, for every float32.

    trunc(x + copysign(0.49999997, x)): the sum lands on the next integer exactly when x's
    fraction is at least one half, and the float32 rounding of the sum never crosses an
    integer the exact sum did not reach (checked against roundf's definition in the tests)."""
    x = np.asarray(x, np.float32)
    return np.trunc(x + np.copysign(_BELOW_HALF, x))


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit: add 1.5 * 2^23 in float32 and read the mantissa.

    Rounds half to even for |x| < 2^22; for NaN, infinities and huge values it returns
    what the C trick returns (e.g. 0 for NaN), which the reference then uses."""
    with np.errstate(invalid="ignore", over="ignore"):
        bits = (np.asarray(x, np.float32) + MAGIC).view(np.int32)
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

    The row's largest |v| by halving, then the first position holding it; rows with a NaN
    take the slower path that skips NaNs. A row of zeros (or NaNs) gives +0, the loop's
    initial value, even when it holds -0."""
    a = np.abs(blocks)
    amax = block_reduce(np.maximum, a)
    index = (a == amax[:, None]).argmax(axis=1)
    nan_rows = np.isnan(amax)
    if nan_rows.any():
        index[nan_rows] = first_absmax_index(blocks[nan_rows])
    found = blocks[np.arange(blocks.shape[0]), index]
    found[(found == 0) | np.isnan(found)] = 0
    return found


def first_min_max(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, (min, max) as C's `if (v < min) min = v; if (v > max) max = v;` from
    (FLT_MAX, -FLT_MAX) finds them: NaN never wins, and an extreme of zero keeps the sign
    of the row's first zero, since a later zero of the other sign compares equal."""
    big = np.finfo(np.float32).max
    with np.errstate(invalid="ignore"):
        mn = np.fmin.reduce(blocks, axis=1)
        mx = np.fmax.reduce(blocks, axis=1)
    mn[np.isnan(mn)], mx[np.isnan(mx)] = big, -big
    zero_rows = (mn == 0) | (mx == 0)
    if zero_rows.any():
        first_zero = blocks[np.arange(blocks.shape[0]), (blocks == 0).argmax(axis=1)]
        mn = np.where(mn == 0, first_zero, mn)
        mx = np.where(mx == 0, first_zero, mx)
    return mn, mx


def first_absmax_index(values: np.ndarray) -> np.ndarray:
    """Index of the first largest |v| per row (strict >, NaN never wins), as ggml's loops."""
    a = np.abs(values)
    return np.where(np.isnan(a), -np.inf, a).argmax(axis=1)


def reciprocal_or_zero(d: np.ndarray) -> np.ndarray:
    """1 / d in float32, and 0 where d is 0 (ggml's `id = d ? 1.0f/d : 0.0f`)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def toward_zero(v: np.ndarray) -> np.ndarray:
    """C's float -> integer conversion (as `(int8_t)x` before it wraps): toward zero, as int32."""
    return np.trunc(v).astype(np.int32)
