"""The kernel variants no default path uses (runtime/kernels/variants): the words layout, split-K and the
fused sum over slots, each against the runtime's own kernels, under the interpreter in CI and
on CUDA in benchmarks/gpu_check.sh. They stay here until a GPU run promotes or deletes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oss_convert.formats import mxfp4
from tests.hopper import check_compiled_for_hopper
from tests.test_runtime import INTERPRET, KERNEL_DEVICE, LAYOUTS, kernels_runnable, launches_of, ragged_layer

# (tokens, hidden, intermediate); under the interpreter all but the smallest take 14 s to minutes
RAGGED_SHAPES = [(1, 64, 32), *(pytest.param(*shape, marks=pytest.mark.slow)
                                for shape in ((8, 64, 64), (23, 96, 64), (70, 64, 96)))]


@kernels_runnable
@pytest.mark.parametrize("tokens,hidden,inter", RAGGED_SHAPES)
def test_the_variants_give_the_default_kernels_results(tokens, hidden, inter):
    from oss_convert.runtime.kernels.triton_moe import moe_mxfp4_triton
    from oss_convert.runtime.kernels.variants.mxfp4_words import to_words
    from oss_convert.runtime.kernels.variants.triton_moe_variants import moe_mxfp4_variants
    args, want = ragged_layer(tokens, hidden, inter)
    x, experts, weights, w1, b1, w2, b2 = args
    words1, words2 = to_words(w1.data, w1.scales), to_words(w2.data, w2.scales)
    # K split in uneven shares, in both tile layouts
    splits = (dict(one_per_tile=True, split_k=2, block_k=32), dict(one_per_tile=False, split_k=3, block_k=32))
    for cfg in LAYOUTS + splits:
        default = moe_mxfp4_triton(*args, **{k: v for k, v in cfg.items() if k != "split_k"}).cpu()
        got = moe_mxfp4_variants(*args, **cfg).cpu()
        if "split_k" not in cfg:  # no switch on: the very same kernels' arithmetic
            assert torch.equal(got, default), cfg
        assert ((got - want).norm() / want.norm()).item() < 1e-2, cfg
        assert ((got - default).norm() / default.norm()).item() < 1e-5, cfg
        # the words layout: the same bf16 weights and activations, so all but the same sums
        from_words = moe_mxfp4_variants(x, experts, weights, words1, b1, words2, b2, **cfg).cpu()
        assert ((from_words - got).norm() / got.norm()).item() < 1e-5, cfg
        if cfg["one_per_tile"]:  # the sum over slots (and splits) in the down kernel, in its own order
            for w_1, w_2, unfused in ((w1, w2, got), (words1, words2, from_words)):
                fused = [moe_mxfp4_variants(x, experts, weights, w_1, b1, w_2, b2, fuse_sum=True, **cfg).cpu()
                         for _ in range(2)]
                assert ((fused[0] - unfused).norm() / unfused.norm()).item() < 1e-6, cfg
                assert torch.equal(fused[0], fused[1]), cfg  # whichever program finishes last


@pytest.mark.parametrize("tokens,split_k,fuse_sum,launches", [(1, 2, False, ["gate_up", "swiglu", "down"]),
                                                              (2, 2, True, ["gate_up", "swiglu", "down"]),
                                                              (1, 1, True, ["gate_up", "down"])])
def test_the_variants_launches(monkeypatch, tokens, split_k, fuse_sum, launches):
    """Split-K adds the SwiGLU pass; the fused sum takes the sum over slots off the device."""
    from oss_convert.runtime.kernels.variants import triton_moe_variants
    launched, device_work = launches_of(triton_moe_variants, triton_moe_variants.moe_mxfp4_variants, monkeypatch,
                                        tokens, split_k=split_k, fuse_sum=fuse_sum)
    assert launched == launches
    assert device_work == ([] if fuse_sum else ["sum"])


def test_words_decode_tiles_need_triton_3_5_for_eight_rows(monkeypatch):
    """Before 3.5 tl.dot takes no 8-wide operand: the words layout's decode tile then has 16 rows
    (found compiling for sm_90 under 3.3-3.5)."""
    variants = pytest.importorskip("oss_convert.runtime.kernels.variants.triton_moe_variants")
    monkeypatch.setattr(variants, "TRITON_VERSION", (3, 5))
    assert variants._block_m(4, 32, True, True) == 8
    monkeypatch.setattr(variants, "TRITON_VERSION", (3, 4))
    assert variants._block_m(4, 32, True, True) == 16


@pytest.mark.slow
def test_variant_kernels_compile_for_hopper_without_spills():
    """Split-K keeps the tensor cores and the registers; the words layout's decode must multiply
    two weights an instruction (HMUL2), as mxfp4_words intends, also with the sum over slots
    fused into down (its atomics and cache modifiers are the compiler's to check)."""
    check_compiled_for_hopper([([1, 64], {"split_k": 2}, "HGMMA"), ([1, 64], {"words": True}, "HGMMA"),
                               ([1, 8], {"words": True, "num_warps": 2, "num_stages": 3}, "HMMA"),
                               ([1, 2], {"words": True, "fuse_sum": True, "split_k": 2}, "HGMMA")])


def test_words_layout_places_every_value_bit_once():
    from oss_convert.runtime.kernels.variants.mxfp4_words import source_bit
    word_bits = sorted(source_bit(v, b) for v in range(8) for b in range(4))
    assert word_bits == list(range(32))


@kernels_runnable
@pytest.mark.parametrize("scale_bytes", [(127, 0, 1, 128), (129, 0, 120, 200)], ids=["one-multiply", "wide"])
def test_words_decode_to_the_mxfp4_values(scale_bytes):
    """Every code at every place in a word, against the HF-layout decoder, exactly. Scales up
    to 128 take one multiply, a wider one two; 0 (2^-127) is a subnormal either way."""
    from oss_convert.runtime.kernels.variants.mxfp4_words import to_words
    from tests.words_kernel import decode_kernel

    # 64 words of 8 values: value v of word w is code (w + 3 v) mod 16, so each of the 16 codes
    # sits at each of the 8 places of a word, 4 times
    values = (torch.arange(64)[:, None] + 3 * torch.arange(8)[None, :]) % 16
    codes = (values[:, 0::2] | values[:, 1::2] << 4).to(torch.uint8).reshape(1, 1, 256)
    scales = torch.tensor(scale_bytes, dtype=torch.uint8).repeat_interleave(4).reshape(1, 1, 16)
    words = to_words(codes.to(KERNEL_DEVICE), scales.to(KERNEL_DEVICE))
    assert words.wide_scales == (max(scale_bytes) > 128)
    out = torch.empty(512, dtype=torch.float32, device=KERNEL_DEVICE)
    decode_kernel[(1,)](words.data.reshape(-1), scales.reshape(-1).to(KERNEL_DEVICE), out, WORDS=64,
                        WIDE_SCALES=words.wide_scales, INTERPRETED=INTERPRET)
    want = mxfp4.decode_hf(codes.numpy().reshape(1, 1, 16, 16), scales.numpy())[0, 0]
    np.testing.assert_array_equal(out.cpu().numpy(), want)
