"""The CPU kernels (runtime/kernels/native) beyond what tests/test_formats.py checks per format:
extreme block scales, products the same floats however they are computed (one thread or
several, rows past a group, a batch or one by one, with AVX-512 or without, Q8_0 products of
the same values in another layout), and the path of many tokens through torch's GEMM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from oss_convert.checkpoint import open_checkpoint
from oss_convert.formats import mxfp4, table
from oss_convert.formats.registry import decode
from oss_convert.runtime.kernels import native
from oss_convert.runtime.kernels.native.products import Product, batch_matmul, expand, packed_matmul, row_bytes
from oss_convert.runtime.weights.products import FUSED_MAX_TOKENS, matmul
from tests.format_samples import integer_codes, rows_to_test, same_bits, stored

lib = native.library()
pytestmark = pytest.mark.skipif(lib is None, reason="no C compiler: the runtime's numpy path runs")

def stored_forms(n: int, k: int, rng):
    """(format, data, scales, float32 values by the numpy codecs) for every format the kernels
    take whose blocks k fills."""
    for name in native.FORMATS:
        if k % table.BY_NAME[name].block == 0:
            yield name, *stored(name, n, k, rng)


def test_ggml_blocks_with_extreme_scales_expand_as_the_codecs_do():
    """Raw random blocks: any fp16 scale, subnormal, infinite or NaN included."""
    rng = np.random.default_rng(1)
    block_formats = [f for f in table.FORMATS if f.kernel is not None and f.fp16_scales]
    assert {f.name for f in block_formats} == {"Q8_0", "Q5_0", "Q4_0", "Q5_1", "Q4_K"}
    for name in (f.name for f in block_formats):
        k = max(64, table.BY_NAME[name].block)
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
    for fmt in ("Q4_0", "Q5_0"):
        data = table.BY_NAME[fmt].codec.quantize(w)
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
