"""MXFP4 blocks straight into ggml's 32-value block types (Q4_0, Q5_0, Q8_0), by table.

An MXFP4 block holds 32 E2M1 values c_j and one power of two s; a Q4_0, Q5_0 or Q8_0 block
covers the same 32 values. ggml's reference quantizers find, in float32, the block's first
value of largest magnitude m, then d = m / k, 1/d and each code from x_j * (1/d).
Multiplying every input by a power of two scales each of those float32 results exactly,
as long as they stay normal numbers. So each code is a function of (code of m, c_j) alone,
and d is s times the d of the same block at unit scale.

Tables made once per type, by running our ggml-exact quantizer on a unit-scale block for
every (m, c) pair, give the output for each (m, byte of two codes): one lookup per input
byte. Blocks whose scale is too extreme for the argument (or NaN) are decoded and
quantized the ordinary way.

The lookups run in C where it is built (mxfp4_requant.c, block by block, the same float32
operations), else in numpy (`table_requantize_numpy`, column by column).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..metrics import ErrorStats
from . import compiled, mxfp4
from .codec import Codec, ScaleAndCodes
from .floats import fp16_bits, fp16_value
from .q4_0 import Q4_0Codec
from .q5_0 import Q5_0Codec
from .q8_0 import Q8_0Codec

# Scale bytes for which every float32 step above stays normal and finite: x = s * c with
# |c| >= 0.5, d >= s * 0.5 / 127 and 1/d need about 2^-117 <= s <= 2^123; kept with margin.
SAFE_SCALES = (16, 240)


@dataclass(frozen=True)
class Layout:
    """How a type stores a block's codes: which two codes share an input byte (HF bytes
    hold elements 2j, 2j+1; GGML bytes hold j, j+16) and what the table keeps per byte."""

    ggml_pairs: bool
    word: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (code of the low nibble, of the high one) -> entry
    dtype: type
    assemble: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (fp16 d [N], entries [16, N]) -> bytes [N, size]


def _assemble_q8_0(d16: np.ndarray, words: np.ndarray) -> np.ndarray:
    out = np.empty((d16.shape[0], Q8_0Codec.block_bytes // 2), np.uint16)
    out[:, 0] = d16
    out[:, 1:] = words.T  # each word: the int8 codes of elements 2j and 2j+1
    return out.view(np.uint8)


def _assemble_q4_0(d16: np.ndarray, words: np.ndarray) -> np.ndarray:
    out = np.empty((d16.shape[0], Q4_0Codec.block_bytes), np.uint8)
    out[:, 0:2] = d16.reshape(-1, 1).view(np.uint8)
    out[:, 2:] = words.T
    return out


_ROW_SHIFT = np.arange(16, dtype=np.uint32)[:, None]


def _assemble_q5_0(d16: np.ndarray, words: np.ndarray) -> np.ndarray:
    out = np.empty((d16.shape[0], Q5_0Codec.block_bytes), np.uint8)
    out[:, 0:2] = d16.reshape(-1, 1).view(np.uint8)
    # word >> 8 holds the fifth bit of element j at bit 0 and that of element j + 16 at
    # bit 16: shifted left by j and OR-ed over the 16 rows, they make the block's qh.
    high = words >> 8
    high <<= _ROW_SHIFT
    out[:, 2:6] = np.bitwise_or.reduce(high, axis=0).view(np.uint8).reshape(-1, 4)
    out[:, 6:] = words.astype(np.uint8).T  # the low nibbles of elements j and j + 16
    return out


LAYOUTS: dict[type[ScaleAndCodes], Layout] = {
    Q8_0Codec: Layout(False, lambda lo, hi: lo | (hi << 8), np.uint16, _assemble_q8_0),
    Q4_0Codec: Layout(True, lambda lo, hi: lo | (hi << 4), np.uint8, _assemble_q4_0),
    Q5_0Codec: Layout(True, lambda lo, hi: (lo & 15) | ((hi & 15) << 4) | ((lo >> 4) << 8) | ((hi >> 4) << 24),
                 np.uint32, _assemble_q5_0),
}


@dataclass(frozen=True)
class Tables:
    """Indexed by m << 8 | byte: the type's entry, and the error figures of the two codes."""

    words: np.ndarray
    sums: np.ndarray  # float32 pairs packed in uint64: (sum of squared errors, sum of c^2), unit scale
    max_sq_err: np.ndarray  # float32: the larger squared error of the two
    d_unit: np.ndarray  # float32 [16]: m -> d of a unit-scale block
    d16_unit: np.ndarray  # float32 [16]: that d after fp16 storage


_TABLES: dict[type[ScaleAndCodes], Tables] = {}


def tables(codec: type[ScaleAndCodes]) -> Tables:
    """The codec's tables, made at its first use."""
    if codec not in _TABLES:
        _TABLES[codec] = _make_tables(codec)
    return _TABLES[codec]


def _make_tables(codec: type[ScaleAndCodes]) -> Tables:
    layout = LAYOUTS[codec]
    m, c = np.divmod(np.arange(256), 16)
    reachable = (c & 7) <= (m & 7)  # c can share a block with m only if |c| <= |m|
    unit = np.repeat(mxfp4.E2M1_VALUES[np.where(reachable, c, m)][:, None], 32, axis=1)
    unit[:, 0] = mxfp4.E2M1_VALUES[m]  # m first, so it is the block's first largest value
    d, q = codec.scales_and_codes(unit)
    restored = codec.dequantize(codec.pack(d, q))
    code = np.where(reachable, q[:, 1], 0).astype(np.int64).reshape(16, 16)
    sq_err = np.where(reachable, (restored[:, 1] - unit[:, 1]) ** 2, 0).astype(np.float32).reshape(16, 16)

    lead, byte = np.divmod(np.arange(16 * 256), 256)
    lo, hi = byte & 15, byte >> 4
    sums = np.stack([sq_err[lead, lo] + sq_err[lead, hi],
                     mxfp4.E2M1_VALUES[lo] ** 2 + mxfp4.E2M1_VALUES[hi] ** 2], axis=1).astype(np.float32)
    d_unit = d.reshape(16, 16)[:, 0].astype(np.float32)
    return Tables(words=layout.word(code[lead, lo], code[lead, hi]).astype(layout.dtype),
                  sums=sums.view(np.uint64).ravel(), max_sq_err=np.maximum(sq_err[lead, lo], sq_err[lead, hi]),
                  d_unit=d_unit, d16_unit=fp16_value(fp16_bits(d_unit)))


def _byte_keys(ggml_pairs: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per byte of two E2M1 codes, its bits of the leading-value key (magnitude << 6 |
    position << 1 | sign), and per byte index j the position bits to OR in.

    HF byte j holds elements 2j (low nibble) and 2j+1; GGML byte j holds elements j and j+16.
    Either way the low nibble comes first and wins ties; the key's position is 31 - element,
    so that the first of equal magnitudes ranks highest."""
    byte = np.arange(256)
    lo, hi = byte & 7, (byte >> 4) & 7
    lo_wins = lo >= hi
    sign = np.where(lo_wins, (byte >> 3) & 1, byte >> 7)
    j = np.arange(16)
    if ggml_pairs:  # positions 31 - j (low) and 15 - j (high): the low one adds 16
        keys, order = (lo_wins << 5), (15 - j) << 1
    else:  # positions 31 - 2j (low) and 30 - 2j (high): the low one adds 1
        keys, order = (lo_wins << 1), (30 - 2 * j) << 1
    keys = (np.maximum(lo, hi) << 6) | keys | sign
    return keys.astype(np.uint16), order.astype(np.uint16)[:, None]


_BYTE_KEYS = {paired: _byte_keys(paired) for paired in (False, True)}


def leading_codes(pairs: np.ndarray, ggml_pairs: bool) -> np.ndarray:
    """Bytes [16, N] (byte j of every block, as intp; HF or GGML pairing) -> per block, the
    code of its first value of largest magnitude (0 when all are zero: ggml's max stays +0
    whatever the zeros' signs).

    E2M1 magnitudes order as the codes' low three bits, so the largest key is the block's
    first largest value, and it carries that value's sign along."""
    byte_keys, order = _BYTE_KEYS[ggml_pairs]
    keys = byte_keys.take(pairs, mode="wrap")
    keys |= order
    top = np.maximum.reduce(keys, axis=0)
    lead = ((top >> 6) | ((top & 1) << 3)).astype(np.uint8)
    lead[top < 64] = 0
    return lead


def requantizer(codec: type[Codec] | None) -> type[ScaleAndCodes] | None:
    """`codec` where MXFP4 blocks go into it by table (Q8_0, Q4_0, Q5_0), else None."""
    return next((known for known in LAYOUTS if known is codec), None)


def compiled_lookup() -> ctypes.CDLL | None:
    """mxfp4_requant.c, built for this machine; None without a compiler (or OSS_CONVERT_NATIVE=0)."""
    lib = compiled.library("mxfp4_requant")
    if lib is not None:
        lib.oss_mxfp4_requant.restype = ctypes.c_int64
        lib.oss_mxfp4_requant.argtypes = [ctypes.c_int, *[ctypes.c_void_p] * 2, ctypes.c_int64, *[ctypes.c_void_p] * 5,
                                          ctypes.c_int, ctypes.c_int, *[ctypes.c_void_p] * 3]
    return lib


_KINDS = {Q8_0Codec: 0, Q4_0Codec: 1, Q5_0Codec: 2}  # mxfp4_requant.c's names for the codecs


def requantize(blocks: np.ndarray, scales: np.ndarray, codec: type[ScaleAndCodes]) -> tuple[np.ndarray, ErrorStats]:
    """HF MXFP4 blocks [N, 16] and scales [N] -> (the codec's bytes [N, block_bytes], the
    error of those bytes against the MXFP4 values)."""
    blocks = np.ascontiguousarray(blocks, np.uint8).reshape(-1, 16)
    scales = np.ascontiguousarray(scales, np.uint8).reshape(-1)
    lib = compiled_lookup()
    if lib is None:
        out, regular, stats = table_requantize_numpy(blocks, scales, codec)
    else:
        out, regular, stats = _table_requantize_compiled(lib, blocks, scales, codec)
    irregular = np.flatnonzero(~regular)
    if irregular.size:
        values = mxfp4.decode_hf(blocks[irregular], scales[irregular]).reshape(-1, 32)
        out[irregular] = codec.pack(*codec.scales_and_codes(values))
        measured = ErrorStats()
        measured.add(values, codec.dequantize(out[irregular]))
        stats.merge(measured)
    return out, stats


def _table_requantize_compiled(lib: ctypes.CDLL, blocks: np.ndarray, scales: np.ndarray,
                               codec: type[ScaleAndCodes]) -> tuple[np.ndarray, np.ndarray, ErrorStats]:
    t = tables(codec)
    out = np.empty((blocks.shape[0], codec.block_bytes), np.uint8)
    regular = np.empty(blocks.shape[0], np.bool_)
    sums = np.zeros(3, np.float64)
    count = lib.oss_mxfp4_requant(_KINDS[codec], blocks.ctypes.data, scales.ctypes.data, blocks.shape[0],
                                  t.words.ctypes.data, t.sums.ctypes.data, t.max_sq_err.ctypes.data,
                                  t.d_unit.ctypes.data, t.d16_unit.ctypes.data, *SAFE_SCALES, out.ctypes.data,
                                  regular.ctypes.data, sums.ctypes.data)  # ctypes lets the GIL go
    return out, regular, ErrorStats(n=32 * int(count), sum_sq_x=float(sums[0]), sum_sq_err=float(sums[1]),
                                    max_abs_err=float(np.sqrt(sums[2])))


def table_requantize_numpy(blocks: np.ndarray, scales: np.ndarray,
                           codec: type[ScaleAndCodes]) -> tuple[np.ndarray, np.ndarray, ErrorStats]:
    """The table's bytes for every block, which blocks they are right for (`regular`), and the
    error figures of those. Worked on column-wise ([16, N]: byte j of every block), where
    numpy's element-wise ops and per-block reductions run over contiguous rows."""
    layout, t = LAYOUTS[codec], tables(codec)
    columns = np.ascontiguousarray(blocks.T)
    pairs = mxfp4.hf_to_ggml_columns(columns) if layout.ggml_pairs else columns
    index = pairs.astype(np.intp)  # take() wants intp; any other index is converted per call
    lead = leading_codes(index, layout.ggml_pairs)
    index |= lead.astype(np.intp) << 8
    with np.errstate(over="ignore", invalid="ignore"):
        s = np.ldexp(np.float32(1), scales.astype(np.int32) - 127).astype(np.float32)
        d16 = fp16_bits(t.d_unit[lead] * s)
        out = layout.assemble(d16, t.words.take(index, mode="wrap"))
        # Where the stored fp16 d is the unit d times s (not in fp16's subnormal or overflow
        # range), the error scales by s too; other blocks are measured, and made, directly.
        regular = (scales >= SAFE_SCALES[0]) & (scales <= SAFE_SCALES[1])
        regular &= fp16_value(d16) == t.d16_unit[lead] * s
        s2 = np.where(regular, s.astype(np.float64) ** 2, 0.0)
    sums = np.add.reduce(t.sums.take(index, mode="wrap").view(np.float32).reshape(16, -1), axis=0).reshape(-1, 2)
    worst_sq = np.maximum.reduce(t.max_sq_err.take(index, mode="wrap"), axis=0) * s2
    stats = ErrorStats(n=32 * int(regular.sum()), sum_sq_x=float(sums[:, 1] @ s2),
                       sum_sq_err=float(sums[:, 0] @ s2), max_abs_err=float(np.sqrt(worst_sq.max(initial=0.0))))
    return out, regular, stats
