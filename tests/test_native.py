"""The CPU runtime's C kernels (runtime/native): the values they expand are the numpy codecs'
bit for bit, and each product is the same floats however it is computed (one token or many,
one thread or two, from the stored form or from the values, with AVX-512 or without), and
within float32 rounding of a float64 product."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from oss_convert.checkpoint import open_checkpoint
from oss_convert.formats import mxfp4
from oss_convert.formats.registry import QUANTIZERS as QUANTIZER_OF
from oss_convert.formats.registry import decode
from oss_convert.runtime.kernels import native
from oss_convert.runtime.kernels.native.products import Product, batch_matmul, expand, packed_matmul, row_bytes
from oss_convert.runtime.weights.products import FUSED_MAX_TOKENS, matmul

lib = native.library()
pytestmark = pytest.mark.skipif(lib is None, reason="no C compiler: the runtime's numpy path runs")

def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same float32 values, NaNs and signed zeros included."""
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


QUANTIZERS = {name: QUANTIZER_OF[T[name]].quantize for name in ("Q8_0", "Q5_0", "Q4_0", "Q5_1", "Q4_K")}


def columns(fmt: str, k: int) -> int:
    """k, or the nearest multiple of 256 for a K-quant (super-blocks of 256 values)."""
    return -(-k // 256) * 256 if fmt.endswith("_K") else k


def rows_to_test(n: int, k: int, rng) -> np.ndarray:
    """Random rows, a row of zeros, a row with one outlier, tiny and huge rows."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[1] = 0
    w[2, 5] = 1e4
    w[3] *= 1e-30
    w[4] *= 6e4
    return w


def stored_forms(n: int, k: int, rng):
    """(format, data, scales, float32 values by the numpy codecs) for every native format."""
    w = rows_to_test(n, k, rng)
    yield "F32", w, None, w
    bf16 = (w.view(np.uint32) >> 16).astype(np.uint16)
    yield "BF16", bf16, None, (bf16.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore"):
        f16 = w.astype(np.float16)  # the huge row overflows to infinity
    yield "F16", f16, None, f16.astype(np.float32)
    codes = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
    scales = rng.integers(100, 150, (n, k // 32), dtype=np.uint8)
    scales[:4, 0] = [0, 1, 254, 255]  # E8M0's extremes: 2^-127 (subnormal in float32), 2^127, NaN
    with np.errstate(over="ignore"):  # 6 * 2^127 is infinite, on purpose
        values = mxfp4.decode_hf(codes.reshape(n, -1, 16), scales).reshape(n, k)
    yield "MXFP4", codes, scales, values
    yield "MXFP4_GGML", mxfp4.hf_to_ggml(codes.reshape(n, -1, 16), scales).reshape(n, -1), None, values
    for name, quantize in QUANTIZERS.items():
        if columns(name, k) != k:
            continue
        data = quantize(w)
        yield name, data, None, decode(data, T[name]).reshape(n, k)


@pytest.mark.parametrize("fmt", list(native.FORMATS))
def test_expansion_is_the_numpy_codecs_bit_for_bit(fmt):
    rng = np.random.default_rng(0)
    k = columns(fmt, 96)
    forms = {name: form for name, *form in stored_forms(24, k, rng)}
    data, scales, want = forms[fmt]
    got = expand(lib, fmt, data, scales, (24, k)).numpy()
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_ggml_blocks_with_extreme_scales_expand_as_the_codecs_do():
    """Raw random blocks: any fp16 scale, subnormal, infinite or NaN included."""
    rng = np.random.default_rng(1)
    for name in QUANTIZERS:
        k = columns(name, 64)
        data = rng.integers(0, 256, (16, row_bytes(lib, name, k)), dtype=np.uint8)
        data[0, :2] = [0x01, 0x00]  # the smallest fp16 subnormal
        data[1, :2] = [0x00, 0x7c]  # +inf
        data[2, :2] = [0x01, 0xfe]  # a NaN
        if name == "Q4_K":  # and the minimum's scale
            data[3, 2:4], data[4, 2:4] = [0x00, 0x7c], [0x01, 0x00]
        with np.errstate(invalid="ignore", over="ignore"):  # infinite scales times zero codes
            want = decode(data, T[name]).reshape(16, k)
        got = expand(lib, name, data, None, (16, k)).numpy()
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name


@pytest.mark.parametrize("fmt", list(native.FORMATS))
def test_a_product_is_the_same_floats_however_it_is_computed(fmt):
    rng = np.random.default_rng(2)
    n, k = 37, columns(fmt, 160)  # a partial tile of rows
    x = torch.from_numpy(rng.standard_normal((11, k)).astype(np.float32))
    tested = False
    for name, data, scales, values in stored_forms(n, k, rng):
        if name != fmt:
            continue
        tested = True
        values = torch.from_numpy(values)
        whole = packed_matmul(lib, fmt, data, scales, (n, k), x)
        finite = torch.isfinite(values).all(dim=1)
        want = (x.double() @ values.double().T)[:, finite]
        scale = (x.double().abs() @ values.double().abs().T)[:, finite]
        assert ((whole[:, finite].double() - want).abs() <= 1e-6 * scale + 1e-30).all()
        # each token alone (the few-token path), in other groupings, from the float32 values
        for t in range(11):
            assert same_bits(packed_matmul(lib, fmt, data, scales, (n, k), x[t:t + 1]), whole[t:t + 1])
        for start, stop in ((0, 4), (3, 5), (4, 11)):
            assert same_bits(packed_matmul(lib, fmt, data, scales, (n, k), x[start:stop]), whole[start:stop])
        same_values = packed_matmul(lib, "F32", values.numpy(), None, (n, k), x)
        assert same_bits(same_values, whole)
    assert tested


def test_threads_do_not_change_a_product(monkeypatch):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (200, 48), dtype=np.uint8)
    scales = rng.integers(110, 130, (200, 3), dtype=np.uint8)
    x = torch.randn(6, 96)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        results += [packed_matmul(lib, "MXFP4", codes, scales, (200, 96), x[:1]),
                    packed_matmul(lib, "MXFP4", codes, scales, (200, 96), x)]
    for a, b in zip(results, results[2:]):
        assert same_bits(a, b)


def test_rows_not_a_multiple_of_the_vector_width():
    rng = np.random.default_rng(4)
    for k in (1, 15, 17, 40):
        w = rng.standard_normal((9, k)).astype(np.float32)
        bf16 = (w.view(np.uint32) >> 16).astype(np.uint16)
        values = torch.from_numpy((bf16.astype(np.uint32) << 16).view(np.float32))
        x = torch.randn(7, k)
        for fmt, data in (("F32", values.numpy()), ("BF16", bf16)):
            many = packed_matmul(lib, fmt, data, None, (9, k), x)
            assert torch.allclose(many, x @ values.T, rtol=1e-5, atol=1e-6)
            assert same_bits(packed_matmul(lib, fmt, data, None, (9, k), x[2:3]), many[2:3])


def test_the_portable_build_gives_the_same_floats_as_the_vector_one():
    """Without AVX-512 (and VNNI) the C loops run lane by lane in the same order: the same bits."""
    portable = native.build(("-mno-avx512f",))
    if portable is None:
        pytest.skip("the compiler cannot build without AVX-512")
    plain = native.load(portable)
    rng = np.random.default_rng(5)
    tested = set()
    for k in (288, 512):  # 288: 9 blocks, a group of 8 and one; 512: two K-quant super-blocks
        x = torch.from_numpy(rng.standard_normal((6, k)).astype(np.float32))
        for fmt, data, scales, _ in stored_forms(20, k, rng):
            for activations in ("float32", "q8") if fmt in native.Q8_FORMATS else ("float32",):
                for tokens in (1, 6):
                    a = packed_matmul(lib, fmt, data, scales, (20, k), x[:tokens], activations)
                    b = packed_matmul(plain, fmt, data, scales, (20, k), x[:tokens], activations)
                    assert same_bits(a, b), (fmt, activations, tokens)
            tested.add(fmt)
    assert tested == set(native.FORMATS)


def test_more_tokens_expand_once_and_multiply_in_torch():
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    scales = rng.integers(110, 130, (64, 3), dtype=np.uint8)
    values = torch.from_numpy(mxfp4.decode_hf(codes.reshape(64, -1, 16), scales).reshape(64, 96))
    x = torch.randn(FUSED_MAX_TOKENS + 5, 96)
    assert same_bits(matmul(lib, "MXFP4", codes, scales, (64, 96), x), x @ values.T)


def test_without_the_kernels_the_runtime_gives_the_same_logits_within_rounding(bundled, monkeypatch):
    from oss_convert.runtime.execution.forward import forward, load_model
    from oss_convert.runtime.weights.matrices import FloatMatrix, StoredMatrix
    tokens = torch.tensor([(i * 37 + 11) % 300 for i in range(24)])
    with torch.no_grad():
        model = load_model(open_checkpoint(bundled), torch.device("cpu"))
        assert isinstance(model.unembedding, StoredMatrix) and isinstance(model.blocks[0].attention.q, StoredMatrix)
        fast = forward(model, tokens)
        monkeypatch.setattr(native, "library", lambda: None)
        model = load_model(open_checkpoint(bundled), torch.device("cpu"))
        assert isinstance(model.unembedding, FloatMatrix)
        slow = forward(model, tokens)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ Q8_0 activations (llama.cpp's arithmetic)

def integer_codes(fmt: str, data, scales, values: np.ndarray, k: int):
    """(integer weight values [n, k], their block scales [n, k/32]) such that values = codes * scale:
    MXFP4 as twice the E2M1 value under half the E8M0 scale, ggml types as q under d."""
    n = values.shape[0]
    if fmt.startswith("MXFP4"):
        if scales is None:  # ggml's blocks: the E8M0 byte first
            scales = data.reshape(n, k // 32, 17)[:, :, 0]
        block_scale = np.where(scales == 255, np.nan, np.ldexp(np.float32(1), scales.astype(np.int32) - 128))
        block_scale = block_scale.astype(np.float32)
    else:
        block_size = row_bytes(lib, fmt, 32)
        d = data.reshape(n, k // 32, block_size)[:, :, :2].copy().view(np.float16)[:, :, 0]
        block_scale = d.astype(np.float32)
    per_value = np.repeat(block_scale, 32, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        codes = np.where(per_value != 0, values / per_value, 0)
    return codes, block_scale


def q8_reference(x: np.ndarray, codes: np.ndarray, block_scale: np.ndarray) -> np.ndarray:
    """llama.cpp's Q8_0 product spelled out: per 32 values of a token, d = max|x| / 127 rounded
    to fp16, q = x * (127 / max|x|) rounded half to even; the block's integer sum times both
    scales (float32 product), summed in float64."""
    t, k = x.shape
    xb = x.reshape(t, k // 32, 32)
    amax = np.abs(xb).max(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint((xb * inverse).astype(np.float32))
    d = (amax[..., 0] / np.float32(127)).astype(np.float16).astype(np.float32)
    sums = np.einsum("tbj,nbj->tnb", q.astype(np.float64), codes.reshape(-1, k // 32, 32).astype(np.float64))
    scale = (block_scale[None, :, :] * d[:, None, :]).astype(np.float32).astype(np.float64)
    return (sums * scale).sum(-1), (np.abs(sums) * np.abs(scale)).sum(-1)


Q8_FORMATS = sorted(native.Q8_FORMATS)


@pytest.mark.parametrize("fmt", Q8_FORMATS)
def test_q8_activations_are_llama_cpps_rounding_and_exact_integer_sums(fmt):
    rng = np.random.default_rng(7)
    n, k = 29, 288  # 9 blocks: a whole group of 8 and one more
    x = rng.standard_normal((5, k)).astype(np.float32)
    x[1, :32] = 0  # a block of zeros
    x[2, 40] = 300  # one outlier
    x[3, 64:96] = np.arange(32) - 15.5  # ties: 127 / max|x| is 1 here, so -15.5 ... 15.5 round to even
    x[3, 64] = 127
    for name, data, scales, values in stored_forms(n, k, rng):
        if name != fmt:
            continue
        got = packed_matmul(lib, fmt, data, scales, (n, k), torch.from_numpy(x), "q8").double().numpy()
        codes, block_scale = integer_codes(fmt, data, scales, values, k)
        finite = np.isfinite(values).all(1) & np.isfinite(block_scale).all(1)
        want, magnitude = q8_reference(x, codes, block_scale)
        assert (np.abs(got - want)[:, finite] <= 1e-6 * magnitude[:, finite] + 1e-30).all()
        # and it is not the float32 product: the activations' rounding shows
        exact = (x.astype(np.float64) @ values.astype(np.float64).T)[:, finite]
        assert np.abs(got[:, finite] - exact).max() > 1e-4 * np.abs(exact).max()


def test_q8_products_depend_on_the_values_alone():
    """The same values in another layout or format, one token or many, 1-3 threads: the same bits."""
    rng = np.random.default_rng(8)
    n, k = 40, 800  # 25 blocks: three groups of eight and one
    x = torch.randn(70, k)  # more than a chunk of tokens (Q8_TOKEN_CHUNK) in the eight-row loop
    codes = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
    scales = rng.integers(110, 130, (n, k // 32), dtype=np.uint8)
    scales[:4, 9] = [0, 1, 254, 255]  # outside the vector way of halving E8M0
    hf = packed_matmul(lib, "MXFP4", codes, scales, (n, k), x, "q8")
    ggml = mxfp4.hf_to_ggml(codes.reshape(n, -1, 16), scales).reshape(n, -1)
    assert same_bits(packed_matmul(lib, "MXFP4_GGML", ggml, None, (n, k), x, "q8"), hf)
    for t in range(70):  # one token: the eight-blocks-a-step loop, in both layouts
        assert same_bits(packed_matmul(lib, "MXFP4", codes, scales, (n, k), x[t:t + 1], "q8"), hf[t:t + 1])
        assert same_bits(packed_matmul(lib, "MXFP4_GGML", ggml, None, (n, k), x[t:t + 1], "q8"), hf[t:t + 1])
    # Q4_0's and Q5_0's blocks rewritten as Q8_0 (the same d, q - 8 / q - 16 as bytes)
    w = rows_to_test(n, k, rng)
    for fmt, offset in (("Q4_0", 8), ("Q5_0", 16)):
        data = QUANTIZERS[fmt](w)
        ints, _ = integer_codes(fmt, data, None, decode(data, T[fmt]).reshape(n, k), k)
        blocks = data.reshape(n, k // 32, -1)
        as_q8 = np.concatenate([blocks[:, :, :2], np.rint(ints).astype(np.int8).reshape(n, k // 32, 32).view(np.uint8)],
                               axis=2).reshape(n, -1)
        assert same_bits(packed_matmul(lib, "Q8_0", as_q8, None, (n, k), x, "q8"),
                         packed_matmul(lib, fmt, data, None, (n, k), x, "q8")), fmt
    for threads in (1, 2, 3):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch, "get_num_threads", lambda: threads)
            assert same_bits(packed_matmul(lib, "MXFP4", codes, scales, (n, k), x, "q8"), hf)


@pytest.mark.parametrize("activations", native.ACTIVATIONS)
@pytest.mark.parametrize("tokens", [1, 3])
def test_a_batch_of_products_gives_each_product_alone(activations, tokens):
    """batch_matmul (a decode step's q, k and v, or its experts) shares the rows of several
    products among the threads at once: each product's floats are still its own, in every
    format, with rows left over past the last group of four; F16 (not a one-token format of the
    shared loop) sends a batch the product-by-product way, the same floats again. Each product
    goes twice, so products of one format share their x (and its Q8_0 form, made once)."""
    rng = np.random.default_rng(4)
    forms = [(f, d, s, (37, 256)) for f, d, s, _ in stored_forms(37, 256, rng)]
    forms += [(f, d, s, (9, 64)) for f, d, s, _ in stored_forms(9, 64, rng) if f != "Q4_K"]
    x = {k: torch.from_numpy(rng.standard_normal((tokens, k)).astype(np.float32)) for k in (256, 64)}
    for chosen in (forms, [f for f in forms if f[0] != "F16"]):
        batch = [Product(f, d, s, shape, x[shape[1]], torch.full((tokens, shape[0]), float("nan")))
                 for f, d, s, shape in chosen * 2]
        batch_matmul(lib, batch, activations)
        for p in batch:
            alone = packed_matmul(lib, p.format, p.data, p.scales, p.shape, p.x, activations)
            assert same_bits(p.y, alone), p.format


def test_a_batch_with_a_product_the_kernels_cannot_take_computes_nothing():
    rng = np.random.default_rng(5)
    good = Product("BF16", rng.integers(0, 1 << 15, (8, 64), dtype=np.uint16), None, (8, 64), torch.ones(1, 64),
                          torch.zeros(1, 8))
    bad = Product("MXFP4_GGML", np.zeros((8, 17), dtype=np.uint8), None, (8, 16), torch.ones(1, 16),
                         torch.zeros(1, 8))  # 16 values: not a whole block
    with pytest.raises(ValueError, match="MXFP4_GGML"):
        batch_matmul(lib, [good, bad])
    assert not good.y.any()
