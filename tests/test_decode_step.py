"""A decode step (one token) on the CPU takes the C paths of runtime/execution/decode.py: the MoE
block in two calls and the attention block in one. They must
be torch's within a few units in the last place (their products are the same floats; norms,
softmaxes and the sigmoid round in another order), for every kind of port and both activations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fixtures.checkpoints import PRESETS, write_checkpoint
from oss_convert.checkpoint import open_checkpoint
from oss_convert.runtime.execution import decode
from oss_convert.runtime.execution.forward import load_model
from oss_convert.runtime.kernels import native
from oss_convert.runtime.kernels.native.decode_step import NativeAttention, NativeMoe
from oss_convert.runtime.model.attention import step_inputs
from oss_convert.runtime.model.cache import KVCache
from oss_convert.runtime.model.moe import MoEBlock, expert_product, moe_reference, route
from oss_convert.runtime.model.norm import rms_norm
from oss_convert.runtime.model.rope import yarn_frequencies
from oss_convert.runtime.weights.matrices import StoredRows
from oss_convert.runtime.weights.source import WeightSource

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: the runtime's numpy path runs")

# convert's --type of each GGUF port tested
PORTS = {"lossless": "mxfp4", "q4_k_m": "q4_k_m", "q8_0": "q8_0"}


@pytest.fixture(scope="module")
def ports(bundled, bundled_ports, tmp_path_factory) -> dict:
    out = {"safetensors": bundled, "original": bundled / "original"}
    # intermediate 96: not a whole number of vectors of 64, so the SwiGLU goes row by row
    odd = write_checkpoint(tmp_path_factory.mktemp("odd"), dataclasses.replace(PRESETS["tiny"], intermediate_size=96))
    out["odd intermediate"] = odd
    return out | {name: bundled_ports[qtype] for name, qtype in PORTS.items()}


@pytest.mark.parametrize("activations", native.ACTIVATIONS)
@pytest.mark.parametrize("kind", ["safetensors", "original", "odd intermediate", *PORTS])
def test_one_tokens_moe_block_is_the_references(ports, kind, activations):
    ckpt = open_checkpoint(ports[kind])
    gen = torch.Generator().manual_seed(7)
    clamped = 0
    source = WeightSource(ckpt, torch.device("cpu"), activations)
    for n in range(ckpt.require_config().num_layers):
        layer = MoEBlock.from_weights(source, n)
        for size in (1, 1, 1, 30, 30, 30):  # large tokens: the SwiGLU's clamps bite
            x = size * torch.randn(1, layer.router_w.shape[1], generator=gen)
            assert decode.moe_takes(layer, x) and not decode.moe_takes(layer, x.expand(2, -1))
            want = moe_reference(x, layer.router_w, layer.router_b, layer.gate_up, layer.b1, layer.down, layer.b2,
                                 layer.top_k, layer.swiglu_limit, layer.swiglu_alpha)
            got = decode.moe_one_token(layer, x)
            assert layer.native.ids[:] == sorted(route(x, layer.router_w, layer.router_b, layer.top_k)[0][0].tolist())
            torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))
            h = torch.cat([expert_product(layer.gate_up, e, x) + layer.b1[e] for e in range(layer.b1.shape[0])])
            gate, up = h[:, 0::2], h[:, 1::2]
            clamped += int((gate > layer.swiglu_limit).sum() + (up.abs() > layer.swiglu_limit).sum())
    assert clamped > 0


@pytest.mark.parametrize("activations", native.ACTIVATIONS)
@pytest.mark.parametrize("kind", ["safetensors", "lossless", "q8_0"])  # (the tiny Q4_K_M's o is Q5_K: torch)
def test_one_tokens_attention_block_is_torchs(ports, kind, activations):
    """x + attention(x), the MoE block's RMSNorm of it and the new position's k and v in the
    cache, from the native call and from torch, at the first position, a few in, and past the
    sliding window (even layers see only its last positions)."""
    ckpt = open_checkpoint(ports[kind])
    cfg = ckpt.require_config()
    model = load_model(ckpt, torch.device("cpu"), activations)
    inv_freq, scale = yarn_frequencies(cfg)
    gen = torch.Generator().manual_seed(8)
    for position in (0, 5, cfg.sliding_window + 20):
        step = step_inputs(cfg, inv_freq, scale, torch.tensor([position]), position + 1)
        caches = {way: KVCache() for way in ("native", "torch")}
        for n, block in enumerate(model.blocks):
            w, moe = block.attention, block.moe
            assert decode.attention_takes(w, torch.zeros(1, cfg.hidden_size), caches["native"])
            earlier = torch.randn(position, cfg.num_kv_heads, cfg.head_dim, generator=gen)
            for cache in caches.values():
                cache.extend(n, earlier, 2 * earlier)
            x = 3 * torch.randn(1, cfg.hidden_size, generator=gen)
            want_x = x + w.forward(x, step, caches["torch"])
            got_x = x.clone()
            got_h = decode.attention_one_token(w, moe.norm, got_x, step, caches["native"])
            want_h = rms_norm(want_x, moe.norm, cfg.rms_norm_eps)
            for got, want in ((got_x, want_x), (got_h, want_h), (caches["native"].keys[n], caches["torch"].keys[n]),
                              (caches["native"].values[n], caches["torch"].values[n])):
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))
            assert torch.equal(caches["native"].keys[n][:position], earlier)


def test_the_attention_block_is_torchs_once_the_window_slides(bundled):
    """Past the window, a sliding layer's native call must leave the oldest positions out: with
    keys there that would dominate its softmax, its output is torch's, not theirs."""
    ckpt = open_checkpoint(bundled)
    cfg = ckpt.require_config()
    model = load_model(ckpt, torch.device("cpu"))
    inv_freq, scale = yarn_frequencies(cfg)
    position = cfg.sliding_window + 3
    step = step_inputs(cfg, inv_freq, scale, torch.tensor([position]), position + 1)
    gen = torch.Generator().manual_seed(9)
    w, moe, x = model.blocks[0].attention, model.blocks[0].moe, torch.randn(1, cfg.hidden_size, generator=gen)
    earlier = torch.randn(position, cfg.num_kv_heads, cfg.head_dim, generator=gen)
    earlier[:3] = 1e3 * earlier[:3].sign()  # outside the window: huge scores for some query heads
    caches = {way: KVCache() for way in ("native", "torch")}
    for cache in caches.values():
        cache.extend(0, earlier, earlier.clone())
    want = x + w.forward(x, step, caches["torch"])
    got = x.clone()
    decode.attention_one_token(w, moe.norm, got, step, caches["native"])
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))


def test_one_tokens_experts_refuse_what_does_not_fit_the_layer():
    lib = native.library()
    with pytest.raises(ValueError, match="NativeMoe"):  # b1's rows are not one per expert
        NativeMoe(lib, 2, torch.zeros(4, 64), torch.zeros(4), torch.zeros(3, 16), torch.zeros(4, 64), 7.0, 1.702)
    plan = NativeMoe(lib, 2, torch.zeros(4, 64), torch.zeros(4), torch.zeros(4, 16), torch.zeros(4, 64), 7.0, 1.702)
    up = StoredRows("BF16", np.zeros((16, 64), dtype=np.uint16))
    down = StoredRows("BF16", np.zeros((64, 8), dtype=np.uint16))
    plan.add(1, [up], [down], "float32")
    with pytest.raises(ValueError, match="NativeMoe"):  # GGUF's two first matrices after HF's one
        plan.add(2, [up, up], [down], "float32")
    with pytest.raises(ValueError, match="NativeMoe"):  # no such expert
        plan.add(4, [up], [down], "float32")
    h, out = torch.ones(1, 64), torch.full((1, 64), 2.0)
    assert plan.route(h) == [0, 1]  # equal logits: the lower ids
    with pytest.raises(ValueError, match="NativeMoe"):  # expert 0 chosen, never added
        plan.run(h, out)
    plan.add(0, [up], [down], "float32")
    plan.run(h, out)
    assert torch.equal(out, torch.full((1, 64), 2.0))  # x += 0: all weights and biases zero
    bad = NativeMoe(lib, 1, torch.zeros(2, 16), torch.zeros(2), torch.zeros(2, 16), torch.zeros(2, 16), 7.0, 1.702)
    bad.add(0, [StoredRows("MXFP4_GGML", np.zeros((16, 17), dtype=np.uint8))], [down], "q8")  # 16 values: no block
    assert bad.route(torch.ones(1, 16)) == [0]
    with pytest.raises(ValueError, match="moe_experts: the kernels cannot take it"):
        bad.run(torch.ones(1, 16), torch.empty(1, 16))


def test_one_tokens_attention_refuses_what_does_not_fit_the_layer():
    rows = StoredRows("BF16", np.zeros((128, 64), dtype=np.uint16))
    kv_rows = StoredRows("BF16", np.zeros((64, 64), dtype=np.uint16))
    o_rows = StoredRows("BF16", np.zeros((64, 128), dtype=np.uint16))
    vectors = dict(norm=torch.ones(64), sinks=torch.zeros(2), next_norm=torch.ones(64))
    biases = [torch.zeros(128), torch.zeros(64), torch.zeros(64), torch.zeros(64)]
    lib = native.library()
    layer = NativeAttention(lib, [rows, kv_rows, kv_rows, o_rows], "float32", biases, heads=2, kv_heads=1,
                            head_dim=64, window=0, eps=1e-5, **vectors)
    with pytest.raises(ValueError, match="NativeAttention"):  # a bias of another size
        NativeAttention(lib, [rows, kv_rows, kv_rows, o_rows], "float32", biases[:3] + [torch.zeros(63)], heads=2,
                        kv_heads=1, head_dim=64, window=0, eps=1e-5, **vectors)
    with pytest.raises(ValueError, match="NativeAttention"):  # o with the rows of another size
        NativeAttention(lib, [rows, kv_rows, kv_rows, rows], "float32", biases, heads=2, kv_heads=1, head_dim=64,
                        window=0, eps=1e-5, **vectors)
    keys = torch.zeros(4, 1, 64)
    args = (torch.ones(1, 64), torch.ones(1, 64), torch.zeros(1, 64))
    with pytest.raises(ValueError, match="NativeAttention"):  # no room at the position
        layer.one_token(*args, keys, keys.clone(), 4, torch.empty(1, 64))
    layer.one_token(*args, keys, keys.clone(), 3, torch.empty(1, 64))
