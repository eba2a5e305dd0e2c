"""Sample data for every row of formats/table.py: values to quantize, and each format's stored
bytes with the float32 values its numpy codec gives them."""

from __future__ import annotations

import numpy as np
import torch

from oss_convert.formats import mxfp4
from oss_convert.formats.table import BY_NAME, Format


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same float32 values, NaNs and signed zeros included."""
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def columns(fmt: Format, k: int) -> int:
    """k rounded up to whole blocks of the format (K-quants: super-blocks of 256 values)."""
    return -(-k // fmt.block) * fmt.block


def rows_to_test(n: int, k: int, rng) -> np.ndarray:
    """Random rows, a row of zeros, a row with one outlier, tiny and huge rows."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[1] = 0
    w[2, 5] = 1e4
    w[3] *= 1e-30
    w[4] *= 6e4
    return w


def mxfp4_codes(n: int, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """HF MXFP4 codes [n, k/2] and scales [n, k/32], E8M0's extremes among them: 2^-127
    (subnormal in float32), 2^127 and NaN."""
    codes = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
    scales = rng.integers(100, 150, (n, k // 32), dtype=np.uint8)
    scales[:4, 0] = [0, 1, 254, 255]
    return codes, scales


def stored(name: str, n: int, k: int, rng) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(stored rows [n, bytes], MXFP4's scales or None, the float32 values [n, k] the numpy codec
    gives them) for table row `name`; k must be whole blocks of it."""
    fmt = BY_NAME[name]
    if name.startswith("MXFP4"):
        codes, scales = mxfp4_codes(n, k, rng)
        with np.errstate(over="ignore"):  # 6 * 2^127 is infinite, on purpose
            values = mxfp4.decode_hf(codes.reshape(n, -1, 16), scales).reshape(n, k)
        if name == "MXFP4":
            return codes, scales, values
        blocks = codes.reshape(n, -1, 16)
        packed = mxfp4.hf_to_ggml(blocks, scales) if name == "MXFP4_GGML" else mxfp4.hf_to_ollama(blocks, scales)
        return packed.reshape(n, -1), None, values
    w = rows_to_test(n, k, rng)
    with np.errstate(over="ignore"):  # F16: the huge row overflows to infinity
        data = fmt.codec.quantize(w)
    return data, None, fmt.codec.dequantize(data).reshape(n, k)


def random_blocks(name: str, n: int, k: int, rng) -> np.ndarray:
    """Random bytes in the format's rows: every code, scale and min pattern, and fp16 scales of
    all kinds (NaN, infinite, subnormal)."""
    fmt = BY_NAME[name]
    return rng.integers(0, 256, (n, k // fmt.block * fmt.block_bytes), dtype=np.uint8)


def signed_zeros(rng, n: int) -> np.ndarray:
    """Blocks of +0 and -0 in varied orders, and blocks whose min or max is a zero: the
    sign ggml keeps is the first zero's, which a plain min/max does not give."""
    rows = np.where(rng.random((8, n)) < 0.5, -0.0, 0.0)
    rows[4:6] = np.abs(rng.standard_normal((2, n))) * np.where(rng.random((2, n)) < 0.3, 0.0, 1.0)
    rows[4:6] *= np.where(rng.random((2, n)) < 0.5, -1.0, 1.0) * (rows[4:6] == 0) + (rows[4:6] != 0)
    rows[6:8] = -rows[4:6]
    return rows


def cases(rng, n: int = 512) -> dict[str, np.ndarray]:
    normal = rng.standard_normal((32, n))
    return {
        "normal": normal,
        "heavy tails (cauchy)": rng.standard_cauchy((32, n)),
        "all zero": np.zeros((4, n)),
        "constant": np.full((4, n), -2.75),
        "one spike": np.where(np.arange(n) == 37, 50.0, 0.001 * normal[:1]).repeat(4, 0),
        "tiny (1e-30)": normal * 1e-30,
        "denormals": normal * 1e-41,
        "huge (1e30)": normal * 1e30,
        "positive only": rng.random((8, n)),
        "negative only": -rng.random((8, n)),
        "signed zeros": signed_zeros(rng, n),
        "expert-like (decoded MXFP4)": mxfp4.decode_hf(rng.integers(0, 256, (8, n // 32, 16), dtype=np.uint8),
                                                       rng.integers(118, 124, (8, n // 32), dtype=np.uint8)),
    }


def integer_codes(name: str, data, scales, values: np.ndarray, k: int):
    """(integer weight values [n, k], their block scales [n, k/32]) such that values = codes * scale:
    MXFP4 as twice the E2M1 value under half the E8M0 scale, ggml types as q under d."""
    n = values.shape[0]
    if name.startswith("MXFP4"):
        if scales is None:  # ggml's blocks: the E8M0 byte first
            scales = data.reshape(n, k // 32, 17)[:, :, 0]
        block_scale = np.where(scales == 255, np.nan, np.ldexp(np.float32(1), scales.astype(np.int32) - 128))
        block_scale = block_scale.astype(np.float32)
    else:
        d = data.reshape(n, k // 32, BY_NAME[name].block_bytes)[:, :, :2].copy().view(np.float16)[:, :, 0]
        block_scale = d.astype(np.float32)
    per_value = np.repeat(block_scale, 32, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        codes = np.where(per_value != 0, values / per_value, 0)
    return codes, block_scale
