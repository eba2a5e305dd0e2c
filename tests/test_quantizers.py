"""Every codec against ggml's own quantizer (libggml-base through ctypes), byte for byte,
and our dequantizers against gguf-py's (a second, independent reference)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants
from hypothesis import given, settings
from hypothesis import strategies as st

from oss_convert.formats import mxfp4
from oss_convert.formats.registry import QUANTIZERS, decode
from tests.format_samples import cases as _cases

TYPES = list(QUANTIZERS)


@pytest.mark.reference
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 6), blocks=st.integers(1, 3),
       log_scale=st.floats(-38, 30), qtype=st.sampled_from(TYPES))
def test_identical_to_ggml_random_shapes(ggml, seed, rows, blocks, log_scale, qtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, 256 * blocks)) * 10.0 ** log_scale).astype(np.float32)
    assert (QUANTIZERS[qtype].quantize(x) == ggml.quantize(qtype, x)).all()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantizers_agree_with_gguf_py(qtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    data = QUANTIZERS[qtype].quantize(x)
    ours = QUANTIZERS[qtype].dequantize(data)
    theirs = gguf_quants.dequantize(data, qtype)
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))
    # and the round trip is close: every format keeps the values to its precision (Q2_K and Q3_K
    # have four and eight levels a group)
    assert np.abs(ours - x).max() < (1.2 if qtype in (T.Q2_K, T.Q3_K) else 0.35)


# what llama-quantize writes without an importance matrix besides TYPES, and the IQ and TQ
# types that imatrix ("dynamic") mixes use
DECODED_ONLY = [t for t in (T.Q4_1, T.Q2_K, T.Q3_K, T.IQ4_NL, T.IQ4_XS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS,
                            T.IQ3_S, T.IQ1_S, T.IQ1_M, T.TQ1_0, T.TQ2_0) if t not in QUANTIZERS]
NEEDS_IMATRIX = {T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_S, T.IQ1_M}


@pytest.mark.reference
@pytest.mark.parametrize("qtype", DECODED_ONLY, ids=lambda t: t.name)
def test_every_other_type_decodes_as_libggml_does(ggml, qtype):
    """decode() of the types the table leaves to gguf-py (tests/test_formats.py walks the table's)
    against ggml's own to_float, bit for bit (NaN for NaN): on rows ggml quantized (zeros, a
    spike, extreme scales) and on random bytes, whose scales hit every float16 value class
    (denormal, infinity, NaN)."""
    block, size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(int(qtype))
    data = [rng.integers(0, 256, (16, 1024 // block * size), dtype=np.uint8)]
    if qtype not in NEEDS_IMATRIX:
        x = rng.standard_normal((6, 1024)).astype(np.float32)
        x[1] = 0
        x[2, 100] = 1e4
        x[3] *= 1e-30
        x[4] *= 1e30 if qtype not in (T.IQ3_XXS, T.IQ3_S) else 1e3  # ggml's IQ3 search asserts on 1e30
        data.append(ggml.quantize(qtype, x))
    for raw in data:
        ours, ref = decode(raw, qtype).reshape(raw.shape[0], -1), ggml.dequantize(qtype, raw)
        same = (ours.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(ours) & np.isnan(ref))
        assert same.all(), f"{qtype.name}: {np.count_nonzero(~same)} values differ"


def test_a_type_no_decoder_knows_is_refused():
    with pytest.raises(NotImplementedError):
        decode(np.zeros((1, 292), np.uint8), T.Q8_K)


def test_mxfp4_layouts_are_inverse():
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 256, (3, 5, 4, 16), dtype=np.uint8)
    scales = rng.integers(0, 255, (3, 5, 4), dtype=np.uint8)
    ggml = mxfp4.hf_to_ggml(blocks, scales)
    assert ggml.shape == (3, 5, 4 * 17)
    b, s = mxfp4.ggml_to_hf(ggml)
    assert (b == blocks).all() and (s == scales).all()
    b, s = mxfp4.ollama_to_hf(mxfp4.hf_to_ollama(blocks, scales))
    assert (b == blocks).all() and (s == scales).all()
    columns = np.ascontiguousarray(blocks.reshape(-1, 16).T)  # the column-wise form moves the same nibbles
    assert (mxfp4.hf_to_ggml_columns(columns).T == ggml.reshape(-1, 17)[:, 1:]).all()


def test_mxfp4_ggml_bytes_decode_as_gguf_py_does():
    rng = np.random.default_rng(4)
    blocks = rng.integers(0, 256, (6, 4, 16), dtype=np.uint8)
    scales = rng.integers(100, 140, (6, 4), dtype=np.uint8)
    theirs = gguf_quants.dequantize(mxfp4.hf_to_ggml(blocks, scales), T.MXFP4)
    np.testing.assert_array_equal(theirs.reshape(6, 128), mxfp4.decode_hf(blocks, scales))


def test_roundf_is_c_roundf_on_hard_cases():
    import math

    from oss_convert.formats.rounding import roundf
    halves = np.arange(-300, 300, 0.5, dtype=np.float32)
    rng = np.random.default_rng(5)
    x = np.concatenate([halves, np.nextafter(halves, np.float32(0)), np.nextafter(halves, np.float32(1e9)),
                        np.float32([0.49999997, -0.49999997, 2**22 + 0.5, 2**23 + 1, 1e30, -1e-30]),
                        (rng.standard_normal(200_000) * 50).astype(np.float32)])

    def c_roundf(v: float) -> float:
        a = abs(v)
        return math.copysign(math.floor(a) + (1.0 if a - math.floor(a) >= 0.5 else 0.0), v)
    np.testing.assert_array_equal(roundf(x), np.float32([c_roundf(float(v)) for v in x]))


def _mxfp4_blocks(rng, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """HF MXFP4 blocks with every scale byte, all-zero blocks of either zero sign, ties
    between +max and -max, and blocks of one magnitude."""
    blocks = rng.integers(0, 256, (n_blocks, 16), dtype=np.uint8)
    blocks[0:64] = rng.choice(np.uint8([0x00, 0x08, 0x80, 0x88]), (64, 16))  # +0 / -0 only
    blocks[64:128] = rng.choice(np.uint8([0x77, 0xF7, 0x7F, 0xFF, 0x11]), (64, 16))  # +-6 ties
    blocks[128:192] = rng.choice(np.uint8([0x00, 0x01, 0x10, 0x11, 0x09, 0x90]), (64, 16))  # +-0.5 and zeros
    scales = np.resize(np.arange(256, dtype=np.uint8), n_blocks)
    rng.shuffle(scales)
    return blocks, scales


MXFP4_TABLE_TYPES = [T.Q4_0, T.Q5_0, T.Q8_0]


@pytest.mark.reference
@pytest.mark.parametrize("qtype", MXFP4_TABLE_TYPES, ids=lambda t: t.name)
def test_mxfp4_by_table_is_ggml_on_the_decoded_values(ggml, qtype):
    """The table path (no float math) gives the bytes ggml's quantizer gives the decoded
    MXFP4 values, for every scale byte, NaN (255) and the fp16-subnormal d's included."""
    from oss_convert.formats import mxfp4_requant
    rng = np.random.default_rng(11)
    blocks, scales = _mxfp4_blocks(rng, 256 * 24)
    ours, _ = mxfp4_requant.requantize(blocks, scales, QUANTIZERS[qtype])
    with np.errstate(all="ignore"):
        ref = ggml.quantize(qtype, mxfp4.decode_hf(blocks, scales).reshape(-1, 256))
    bad = np.flatnonzero((ours.reshape(ref.shape[0], -1) != ref).any(axis=1))
    assert bad.size == 0, f"rows {bad[:5]} differ"


@pytest.mark.parametrize("qtype", MXFP4_TABLE_TYPES, ids=lambda t: t.name)
def test_mxfp4_by_table_measures_the_error_of_its_bytes(qtype):
    from oss_convert.formats import mxfp4_requant
    from oss_convert.metrics import ErrorStats
    rng = np.random.default_rng(12)
    blocks, _ = _mxfp4_blocks(rng, 4096)
    scales = rng.integers(100, 130, 4096).astype(np.uint8)
    scales[:8] = [1, 2, 5, 250, 253, 90, 96, 103]  # a few blocks measured the slow way
    codec = QUANTIZERS[qtype]
    data, stats = mxfp4_requant.requantize(blocks, scales, codec)
    values = mxfp4.decode_hf(blocks, scales).reshape(-1, 32)
    direct = ErrorStats()
    direct.add(values, codec.dequantize(data))
    assert stats.n == direct.n
    for key, value in direct.summary().items():
        assert stats.summary()[key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.parametrize("qtype", MXFP4_TABLE_TYPES, ids=lambda t: t.name)
def test_mxfp4_table_in_c_is_the_numpy_table(qtype):
    """mxfp4_requant.c (block by block) against the numpy table path (column by column), the
    fallback without a compiler: the same bytes, the same blocks left to the slow way, and the
    same error sums up to the order of the float64 additions."""
    from oss_convert.formats import mxfp4_requant
    lib = mxfp4_requant.compiled_lookup()
    if lib is None:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(15)
    blocks, scales = _mxfp4_blocks(rng, 4096 + 3)  # not a multiple of the C loop's group of 8
    codec = QUANTIZERS[qtype]
    want_out, want_regular, want = mxfp4_requant.table_requantize_numpy(blocks, scales, codec)
    out, regular, got = mxfp4_requant._table_requantize_compiled(lib, blocks, scales, codec)
    assert 0 < want_regular.sum() < len(blocks)  # both kinds of block are exercised
    np.testing.assert_array_equal(regular, want_regular)
    np.testing.assert_array_equal(out, want_out)
    assert got.n == want.n and got.max_abs_err == want.max_abs_err
    assert got.sum_sq_x == pytest.approx(want.sum_sq_x, rel=1e-12)
    assert got.sum_sq_err == pytest.approx(want.sum_sq_err, rel=1e-12)


def test_row_sums_add_rows_in_order():
    """The K-quant searches rely on numpy reducing a C-ordered [n, G] array along axis 0 one
    row after another (the C loop's float32 order), not pairwise; checked against a plain
    loop on shapes and magnitudes where the two orders would round differently."""
    from oss_convert.formats.kquant_search import seq_sum_rows
    rng = np.random.default_rng(13)
    for n, g in [(32, 1), (32, 2), (32, 3), (16, 8192), (256, 7), (8, 65536)]:
        terms = (rng.standard_normal((n, g)) * 10.0 ** rng.integers(-3, 8, (n, 1))).astype(np.float32)
        expected = terms[0].copy()
        for row in terms[1:]:
            expected = (expected + row).astype(np.float32)
        np.testing.assert_array_equal(seq_sum_rows(terms), expected)
        if g > 1000:  # the data tells the orders apart: numpy's pairwise sum along rows differs
            assert not np.array_equal(np.ascontiguousarray(terms.T).sum(axis=1), expected)


@pytest.mark.reference
@pytest.mark.parametrize("qtype", TYPES + [T.F16, T.BF16, T.F32], ids=lambda t: t.name)
def test_validation_rejects_what_ggml_rejects(ggml, qtype):
    """Block by block (value by value for float types), our check of written data says what
    ggml_validate_row_data says: fp16 scales that are inf or NaN fail, subnormal ones pass."""
    from oss_convert.formats.registry import encode
    from oss_convert.formats.validate import FP16_SCALES, invalid_count
    rng = np.random.default_rng(14)
    data = np.ascontiguousarray(encode(rng.standard_normal((4, 256)).astype(np.float32), qtype)).view(np.uint8)
    if qtype in FP16_SCALES:
        units = data.reshape(-1, gguf_quants.GGML_QUANT_SIZES[qtype][1]).copy()
        offsets = FP16_SCALES[qtype]
    else:
        units = data.reshape(-1, {T.F16: 2, T.BF16: 2, T.F32: 4}[qtype]).copy()
        offsets = (0,)
    # per unit: untouched, or one scale (value) set to +inf, -inf, NaN, a subnormal, zero
    patterns = {T.F32: [None, 0x7F800000, 0xFF800000, 0x7FC00001, 0x00000001, 0],
                T.BF16: [None, 0x7F80, 0xFF80, 0x7FC1, 0x0001, 0]}.get(qtype, [None, 0x7C00, 0xFC00, 0x7E01, 0x0001, 0])
    width = 4 if qtype == T.F32 else 2
    for i, unit in enumerate(units):
        word = patterns[i % len(patterns)]
        if word is not None:
            at = offsets[(i // len(patterns)) % len(offsets)]
            unit[at:at + width] = np.frombuffer(int(word).to_bytes(width, "little"), np.uint8)
    for unit in units:
        assert (invalid_count(unit, qtype) == 0) == ggml.validates(qtype, unit), unit[:4]
    assert 0 < invalid_count(units, qtype) < len(units)


def _built_search(stem: str, flags: tuple[str, ...]):
    """formats/<stem>.c built with `flags` and loaded (skips without a compiler that can)."""
    import ctypes
    from pathlib import Path

    from oss_convert import cbuild
    from oss_convert.formats import compiled
    path = cbuild.compiled(Path(compiled.__file__).with_name(f"{stem}.c"), flags)
    if path is None:
        pytest.skip("no C compiler (or it cannot build without AVX-512)")
    return ctypes.CDLL(str(path))


def _cases_with_nan(rng) -> dict[str, np.ndarray]:
    """_cases and rows with NaN and an infinity (the compiled searches follow numpy's IEEE path)."""
    cases = _cases(rng)
    cases["NaN and inf"] = np.where(rng.random((4, 512)) < 0.05, np.nan, rng.standard_normal((4, 512)))
    cases["NaN and inf"][2, 7] = np.inf
    return cases


@pytest.mark.parametrize("flags", [(), ("-mno-avx512f",)], ids=["native", "portable"])
def test_compiled_iq4_search_is_the_numpy_codec_byte_for_byte(flags):
    """iq4_search.c (16 blocks a vector, or block by block without AVX-512) against iq4.py's
    numpy code, the fallback without a compiler, on the same hard cases as above."""
    import ctypes

    from oss_convert.formats import iq4
    lib = _built_search("iq4_search", flags)
    for name, x in _cases_with_nan(np.random.default_rng(99)).items():
        x = np.ascontiguousarray(x, np.float32)
        for function, block, size, numpy_codec in (("oss_quantize_iq4_nl", 32, 18, iq4.quantize_nl_numpy),
                                                   ("oss_quantize_iq4_xs", 256, 136, iq4.quantize_xs_numpy)):
            out = np.empty((x.size // block, size), np.uint8)
            getattr(lib, function)(ctypes.c_void_p(x.ctypes.data), ctypes.c_int64(out.shape[0]),
                                   ctypes.c_void_p(out.ctypes.data))
            want = numpy_codec(x.reshape(-1, block))
            bad = np.flatnonzero((out != want).any(axis=1))
            assert bad.size == 0, f"{function} {flags} on {name}: blocks {bad[:5]} differ"


@pytest.mark.parametrize("flags", [(), ("-mno-avx512f",)], ids=["native", "portable"])
def test_compiled_kquant_search_is_the_numpy_search(flags):
    """kquant_search.c's make_qkx2_quants (16 groups a vector, or one by one without AVX-512)
    against the numpy search, for Q4_K/Q5_K's groups of 32 and Q2_K's of 16 (absolute error)."""
    import ctypes

    from oss_convert.formats import kquant_search
    lib = _built_search("kquant_search", flags)
    for name, values in _cases_with_nan(np.random.default_rng(98)).items():
        for n, nmax, rmin, rdelta, nstep, mad in ((32, 15, -1.0, 0.1, 20, False), (32, 31, -0.5, 0.1, 15, False),
                                                  (16, 3, -0.5, 0.1, 15, True)):
            x = np.ascontiguousarray(values, np.float32).reshape(-1, n)
            w = (np.abs(x) + np.float32(0.25)).astype(np.float32)
            scale, the_min = np.empty(len(x), np.float32), np.empty(len(x), np.float32)
            codes = np.empty(x.shape, np.uint8)
            lib.oss_make_qkx2_quants(*(ctypes.c_void_p(a.ctypes.data) for a in (x, w)), ctypes.c_int64(len(x)),
                                     ctypes.c_int(n), ctypes.c_int(nmax), ctypes.c_float(rmin),
                                     ctypes.c_float(rdelta), ctypes.c_int(nstep), ctypes.c_int(int(mad)),
                                     *(ctypes.c_void_p(a.ctypes.data) for a in (scale, the_min, codes)))
            want = kquant_search.make_qkx2_quants_numpy(x, w, nmax, rmin, rdelta, nstep, mad)
            for got, expected in zip((scale, the_min, codes), want):
                assert np.array_equal(got.view(np.uint8), expected.view(np.uint8)), (name, flags, n, nmax)


def test_without_a_compiler_the_numpy_codecs_give_the_same_bytes(monkeypatch):
    from oss_convert.formats import compiled, mxfp4_requant
    from oss_convert.formats.iq4 import IQ4_XSCodec
    from oss_convert.formats.q4_k import Q4_KCodec
    from oss_convert.formats.q5_0 import Q5_0Codec
    x = np.random.default_rng(5).standard_normal((3, 512)).astype(np.float32)
    blocks, scales = _mxfp4_blocks(np.random.default_rng(6), 512)
    fast = IQ4_XSCodec.quantize(x), Q4_KCodec.quantize(x), mxfp4_requant.requantize(blocks, scales, Q5_0Codec)[0]
    monkeypatch.setenv("OSS_CONVERT_NATIVE", "0")
    compiled.library.cache_clear()
    try:
        assert compiled.library("iq4_search") is None
        assert np.array_equal(IQ4_XSCodec.quantize(x), fast[0]) and np.array_equal(Q4_KCodec.quantize(x), fast[1])
        assert np.array_equal(mxfp4_requant.requantize(blocks, scales, Q5_0Codec)[0], fast[2])
    finally:
        compiled.library.cache_clear()
