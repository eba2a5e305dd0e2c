"""formats/table.py is the one table of formats: every list of formats is derived from it, and each
format is checked against every implementation the table claims for it, one cell each:

- numpy: our codec's values against libggml's to_float (MXFP4's other layouts through ggml's),
  and where it quantizes, its bytes against ggml's reference quantizer;
- torch: the runtime's expansion on a device against the numpy codec;
- C expansion, C product: the CPU kernels against the numpy codec (bit for bit) and a float64
  product; C Q8: their products against Q8_0-rounded activations, against llama.cpp's arithmetic.

A format that lacks an implementation it claims shows as one failing cell.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from oss_convert.formats import mxfp4, table
from oss_convert.formats.registry import decode
from oss_convert.runtime.kernels import native
from oss_convert.runtime.kernels.native.products import expand, packed_matmul, row_bytes
from oss_convert.runtime.weights.expand import IN_TORCH, expand_in_torch
from oss_convert.runtime.weights.experts import PackedExperts
from tests.format_samples import cases, columns, integer_codes, random_blocks, rows_to_test, same_bits, stored

ROOT = Path(__file__).resolve().parent.parent


def claims(fmt: table.Format) -> list[str]:
    """The implementations the table says `fmt` has."""
    out = ["numpy decode"]
    if fmt.quantizes:
        out.append("numpy quantize")
    if fmt.torch:
        out.append("torch")
    if fmt.kernel is not None:
        out += ["C expansion", "C product"]
    if fmt.q8:
        out.append("C Q8 product")
    return out


CELLS = [(f.name, claim) for f in table.FORMATS for claim in claims(f)]


def as_ggml_mxfp4(name: str, data: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """MXFP4 in any layout as ggml's blocks, which libggml knows."""
    n = data.shape[0]
    if name == "MXFP4":
        return mxfp4.hf_to_ggml(data.reshape(n, -1, 16), scales).reshape(n, -1)
    if name == "MXFP4_OLLAMA":
        return mxfp4.hf_to_ggml(*mxfp4.ollama_to_hf(data)).reshape(n, -1)
    return data


def numpy_values(name: str, data: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    fmt = table.BY_NAME[name]
    if name == "MXFP4":
        return mxfp4.decode_hf(data.reshape(data.shape[0], -1, 16), scales).reshape(data.shape[0], -1)
    return fmt.codec.dequantize(data).reshape(data.shape[0], -1)


def without_nan_scales(name: str, data: np.ndarray, scales: np.ndarray | None):
    """MXFP4 with E8M0 255 made 254: the format's NaN (OCP MX), which ggml reads as 2^128."""
    if name == "MXFP4":
        return data, np.minimum(scales, 254)
    if name.startswith("MXFP4"):
        blocks = data.reshape(data.shape[0], -1, 17).copy()
        blocks[:, :, 0] = np.minimum(blocks[:, :, 0], 254)
        return blocks.reshape(data.shape), scales
    return data, scales


def check_numpy_decode(name, ggml, rng):
    fmt = table.BY_NAME[name]
    k = columns(fmt, 512)
    samples = [stored(name, 12, k, rng)[:2]]
    if fmt.block_bytes > fmt.block:  # a block format: random bytes too (floats' are NaN-laden noise)
        samples.append((random_blocks(name, 12, k, rng), None) if not fmt.scales_apart else
                       (rng.integers(0, 256, (12, k // 2), dtype=np.uint8), rng.integers(0, 256, (12, k // 32),
                                                                                      dtype=np.uint8)))
    for data, scales in (without_nan_scales(name, *sample) for sample in samples):
        with np.errstate(all="ignore"):
            ours = numpy_values(name, data, scales)
        if name.startswith("MXFP4"):
            theirs = ggml.dequantize(T.MXFP4, as_ggml_mxfp4(name, data, scales))
        elif fmt.ggml_type == T.F32:  # ggml has no conversion to do
            theirs = np.ascontiguousarray(data).view(np.float32)
        else:
            theirs = ggml.dequantize(T(fmt.ggml_type), np.ascontiguousarray(data).view(np.uint8))
        # (MXFP4's code 8 is -0, which ggml's table of doubled values has as +0: equal values)
        equal = ours == theirs if name.startswith("MXFP4") else ours.view(np.uint32) == theirs.view(np.uint32)
        same = equal | (np.isnan(ours) & np.isnan(theirs))
        assert same.all(), f"{np.count_nonzero(~same)} values differ"
        if fmt.ggml_type is not None and fmt.codec is not None:  # and through the registry
            with np.errstate(all="ignore"):
                by_type = decode(data, fmt.ggml_type).reshape(ours.shape)
            assert np.array_equal(by_type.view(np.uint32), ours.view(np.uint32))


def check_numpy_quantize(name, ggml, rng):
    fmt = table.BY_NAME[name]
    for case, x in {**cases(rng, 512), "varied rows": rows_to_test(16, 512, rng)}.items():
        x = x.astype(np.float32)
        with np.errstate(over="ignore"):  # F16: huge values overflow to infinity, in ggml too
            ours = np.ascontiguousarray(fmt.codec.quantize(x)).view(np.uint8).reshape(x.shape[0], -1)
        theirs = ggml.quantize(T(fmt.ggml_type), x)
        bad = np.flatnonzero((ours != theirs).any(axis=1))
        assert bad.size == 0, f"{case}: rows {bad[:5]} differ"


def check_torch(name, rng):
    fmt = table.BY_NAME[name]
    assert name == "MXFP4" or T(fmt.ggml_type) in IN_TORCH, "the table claims a torch expansion that does not exist"
    k = columns(fmt, 512)
    if fmt.scales_apart:  # every E8M0 byte, against every code
        data = np.tile(np.arange(256, dtype=np.uint8), (16, k // 512))
        scales_np = np.arange(16 * k // 32, dtype=np.uint8).reshape(16, -1)
        packed = PackedExperts(name, (1, 16, k), torch.from_numpy(data)[None], torch.from_numpy(scales_np)[None])
    else:
        data, scales_np = random_blocks(name, 6, k, rng), None
        packed = PackedExperts(name, (1, 6, k), torch.from_numpy(data)[None])
    with np.errstate(all="ignore"):
        want = numpy_values(name, data, scales_np)
    got = expand_in_torch(packed, 0).numpy()
    np.testing.assert_array_equal(got, want)  # NaNs compare equal here


def check_c_expansion(name, lib, rng):
    fmt = table.BY_NAME[name]
    k = columns(fmt, 96)
    assert row_bytes(lib, name, fmt.block) + fmt.scales_apart == fmt.block_bytes, "the C side's row size differs"
    samples = [stored(name, 24, k, rng)[:2]]
    if fmt.block_bytes > fmt.block and not fmt.scales_apart:
        samples.append((random_blocks(name, 16, k, rng), None))
    for data, scales in samples:
        with np.errstate(all="ignore"):
            want = numpy_values(name, data, scales)
        got = expand(lib, name, data, scales, (data.shape[0], k)).numpy()
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def check_c_product(name, lib, rng):
    fmt = table.BY_NAME[name]
    n, k = 37, columns(fmt, 160)  # a partial tile of rows
    x = torch.from_numpy(rng.standard_normal((11, k)).astype(np.float32))
    data, scales, values = stored(name, n, k, rng)
    values = torch.from_numpy(values)
    whole = packed_matmul(lib, name, data, scales, (n, k), x)
    finite = torch.isfinite(values).all(dim=1)
    want = (x.double() @ values.double().T)[:, finite]
    scale = (x.double().abs() @ values.double().abs().T)[:, finite]
    assert ((whole[:, finite].double() - want).abs() <= 1e-6 * scale + 1e-30).all()
    # each token alone (the few-token path), in other groupings, from the float32 values
    for t in range(11):
        assert same_bits(packed_matmul(lib, name, data, scales, (n, k), x[t:t + 1]), whole[t:t + 1])
    for start, stop in ((0, 4), (3, 5), (4, 11)):
        assert same_bits(packed_matmul(lib, name, data, scales, (n, k), x[start:stop]), whole[start:stop])
    assert same_bits(packed_matmul(lib, "F32", values.numpy(), None, (n, k), x), whole)


def q8_reference(x: np.ndarray, codes: np.ndarray, block_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's Q8_0 product spelled out: per 32 values of a token, d = max|x| / 127 rounded
    to fp16, q = x * (127 / max|x|) rounded half to even; the block's integer sum times both
    scales (float32 product), summed in float64. Returns (the products, their magnitudes)."""
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


def check_c_q8_product(name, lib, rng):
    n, k = 29, 288  # 9 blocks: a whole group of 8 and one more
    x = rng.standard_normal((5, k)).astype(np.float32)
    x[1, :32] = 0  # a block of zeros
    x[2, 40] = 300  # one outlier
    x[3, 64:96] = np.arange(32) - 15.5  # ties: 127 / max|x| is 1 here, so -15.5 ... 15.5 round to even
    x[3, 64] = 127
    data, scales, values = stored(name, n, k, rng)
    got = packed_matmul(lib, name, data, scales, (n, k), torch.from_numpy(x), "q8").double().numpy()
    codes, block_scale = integer_codes(name, data, scales, values, k)
    finite = np.isfinite(values).all(1) & np.isfinite(block_scale).all(1)
    want, magnitude = q8_reference(x, codes, block_scale)
    assert (np.abs(got - want)[:, finite] <= 1e-6 * magnitude[:, finite] + 1e-30).all()
    # and it is not the float32 product: the activations' rounding shows
    exact = (x.astype(np.float64) @ values.astype(np.float64).T)[:, finite]
    assert np.abs(got[:, finite] - exact).max() > 1e-4 * np.abs(exact).max()


@pytest.mark.parametrize("name,implementation", CELLS, ids=[f"{n}-{i}" for n, i in CELLS])
def test_every_format_against_every_implementation_it_claims(name, implementation, request):
    rng = np.random.default_rng(sum(map(ord, name + implementation)))
    if implementation.startswith("numpy"):
        ggml = request.getfixturevalue("ggml")
        (check_numpy_decode if implementation == "numpy decode" else check_numpy_quantize)(name, ggml, rng)
    elif implementation == "torch":
        check_torch(name, rng)
    else:
        lib = native.library()
        if lib is None:
            pytest.skip("no C compiler: the runtime's numpy path runs")
        {"C expansion": check_c_expansion, "C product": check_c_product,
         "C Q8 product": check_c_q8_product}[implementation](name, lib, rng)


def test_the_claims_cover_the_implementations():
    """Every implementation that exists is claimed by the table, so each has its cell."""
    assert {T(t) for t in IN_TORCH} | {"MXFP4"} == {T(f.ggml_type) if f.ggml_type is not None else f.name
                                                     for f in table.FORMATS if f.torch}
    assert set(native.FORMATS) == {f.name for f in table.FORMATS if f.kernel is not None}
    assert sorted(native.FORMATS.values()) == list(range(len(native.FORMATS)))  # kernels.h numbers them 0..n-1


FAKE_ROW = textwrap.dedent("""
    import json
    import oss_convert.formats.table as table
    from oss_convert.formats.q8_0 import Q8_0Codec

    class FakeCodec(Q8_0Codec, ggml_type=99, block=(32, 34)):
        pass

    fake = table.Format("FAKE", 99, FakeCodec, kernel=10, q8=True, torch=True, fp16_scales=(0,))
    table.FORMATS += (fake,)
    table.BY_NAME["FAKE"], table.BY_TYPE[99] = fake, fake
    from oss_convert.formats import registry, validate
    from oss_convert.memory import runtime
    from oss_convert.runtime.kernels.native import abi
    import numpy as np
    x = np.arange(32, dtype=np.float32)[None]
    print(json.dumps({
        "quantizers": 99 in registry.QUANTIZERS,
        "decode": bool((registry.decode(registry.encode(x, 99), 99)
                        == Q8_0Codec.dequantize(Q8_0Codec.quantize(x))).all()),
        "row check": validate.FP16_SCALES.get(99) == (0,),
        "kernel numbers": abi.FORMATS.get("FAKE") == 10,
        "Q8 formats": "FAKE" in abi.Q8_FORMATS,
        "torch": "FAKE" in table.torch_expanded(),
        "kept stored by the runtime and its estimate": table.in_place(99, "FAKE") is fake,
    }))
""")


def test_a_new_row_reaches_every_derived_list():
    done = subprocess.run([sys.executable, "-c", FAKE_ROW], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    reached = json.loads(done.stdout)
    assert all(reached.values()), reached
