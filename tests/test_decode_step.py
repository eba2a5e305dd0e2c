"""A decode step (one token) on the CPU takes batched native paths: the MoE block's experts in
two batches (runtime/moe_decode) and q, k and v in one (model.project_qkv). They must be the
per-product paths bit for bit, for every kind of port and both activations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures.checkpoints import PRESETS, write_checkpoint
from oss_convert.checkpoint import open_checkpoint
from oss_convert.cli import cli
from oss_convert.runtime import moe_decode, native
from oss_convert.runtime.model import apply_rope, linear, load_model, project_qkv, step_inputs, yarn_frequencies
from oss_convert.runtime.moe_reference import expert_product, moe_reference
from oss_convert.runtime.weights import StoredRows, load_layer

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: the runtime's numpy path runs")

# (--type, in CLI terms) of each GGUF port tested; None: the lossless conversion
PORTS = {"lossless": None, "q4_k_m": "q4_k_m", "q8_0": "q8_0"}


@pytest.fixture(scope="module")
def ports(bundled, tmp_path_factory) -> dict:
    out = {"safetensors": bundled, "original": bundled / "original"}
    base = tmp_path_factory.mktemp("ports")
    # intermediate 96: not a whole number of vectors of 64, so the SwiGLU goes row by row
    odd = write_checkpoint(base / "odd", dataclasses.replace(PRESETS["tiny"], intermediate_size=96))
    out["odd intermediate"] = odd
    for name, qtype in PORTS.items():
        path = base / f"{name}.gguf"
        result = CliRunner().invoke(cli, ["convert", str(bundled), "-o", str(path), *(["--type", qtype] if qtype else [])])
        assert result.exit_code == 0, result.output
        out[name] = path
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@pytest.mark.parametrize("activations", native.ACTIVATIONS)
@pytest.mark.parametrize("kind", ["safetensors", "original", "odd intermediate", *PORTS])
def test_one_tokens_moe_block_is_the_reference_bit_for_bit(ports, kind, activations):
    ckpt = open_checkpoint(ports[kind])
    gen = torch.Generator().manual_seed(7)
    clamped = 0
    for n in range(ckpt.require_config().num_layers):
        layer = load_layer(ckpt, n, activations)
        for size in (1, 1, 1, 30, 30, 30):  # large tokens: the SwiGLU's clamps bite
            x = size * torch.randn(1, layer.router_w.shape[1], generator=gen)
            assert moe_decode.takes(layer, x) and not moe_decode.takes(layer, x.expand(2, -1))
            want = moe_reference(x, layer.router_w, layer.router_b, layer.gate_up, layer.b1, layer.down, layer.b2,
                                 layer.top_k, layer.swiglu_limit, layer.swiglu_alpha)
            assert same_bits(moe_decode.moe_one_token(layer, x), want)
            h = torch.cat([expert_product(layer.gate_up, e, x) + layer.b1[e] for e in range(layer.b1.shape[0])])
            gate, up = h[:, 0::2], h[:, 1::2]
            clamped += int((gate > layer.swiglu_limit).sum() + (up.abs() > layer.swiglu_limit).sum())
    assert clamped > 0


@pytest.mark.parametrize("activations", native.ACTIVATIONS)
@pytest.mark.parametrize("kind", ["safetensors", *PORTS])
def test_one_tokens_q_k_and_v_are_the_per_product_ones_bit_for_bit(ports, kind, activations):
    ckpt = open_checkpoint(ports[kind])
    cfg = ckpt.require_config()
    model = load_model(ckpt, torch.device("cpu"), activations)
    inv_freq, scale = yarn_frequencies(cfg)
    gen = torch.Generator().manual_seed(8)
    for position in (0, 5, 300):
        step = step_inputs(cfg, inv_freq, scale, torch.tensor([position]), position + 1)
        for w in model.attention:
            h = torch.randn(1, cfg.hidden_size, generator=gen)
            q, k, v = project_qkv(w, h, cfg, step)
            rope = lambda t: apply_rope(t, step.cos, step.sin)  # noqa: E731
            assert same_bits(q, rope(linear(h, w.q_w, w.q_b).view(1, cfg.num_heads, cfg.head_dim)))
            assert same_bits(k, rope(linear(h, w.k_w, w.k_b).view(1, cfg.num_kv_heads, cfg.head_dim)))
            assert same_bits(v, linear(h, w.v_w, w.v_b).view(1, cfg.num_kv_heads, cfg.head_dim))


def test_one_tokens_experts_the_kernels_cannot_take_raise():
    bad = native.matrices([StoredRows("MXFP4_GGML", np.zeros((16, 17), dtype=np.uint8))], "q8")  # 16 values: no block
    with pytest.raises(ValueError, match="moe_gate_up"):
        native.moe_gate_up(native.library(), bad, 1, torch.ones(1, 16), torch.zeros(2, 16), [1], 7.0, 1.702,
                           torch.empty(3, 1, 8))
    good = native.matrices([StoredRows("BF16", np.zeros((16, 64), dtype=np.uint16))], "float32")
    for ids, b1 in (([2], torch.zeros(2, 16)), ([1], torch.zeros(2, 15))):  # no such expert's row; a short row
        with pytest.raises(ValueError, match="moe_gate_up"):
            native.moe_gate_up(native.library(), good, 1, torch.ones(1, 64), b1, ids, 7.0, 1.702, torch.empty(3, 1, 8))


def test_one_tokens_q_k_and_v_refuse_biases_of_other_sizes():
    rows = StoredRows("BF16", np.zeros((8, 64), dtype=np.uint16))
    qkv = native.matrices([rows, rows, rows], "float32")
    with pytest.raises(ValueError, match="qkv_one_token"):
        native.qkv_one_token(native.library(), qkv, (8, 8, 8), torch.ones(1, 64), [torch.zeros(8)] * 2 + [torch.zeros(7)],
                             4, 4, torch.ones(1, 4), torch.zeros(1, 4), torch.empty(1, 24))
