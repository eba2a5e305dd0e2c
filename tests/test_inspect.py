"""`oss-convert inspect` against the generator's ground truth, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures.checkpoints import PRESETS, ground_truth, write_checkpoint
from tests.cli import run_cli


def run_json(*args) -> dict:
    return json.loads(run_cli("inspect", *args, "--json").stdout)  # the whole of stdout is one JSON document


def assert_matches_ground_truth(doc: dict, preset: str) -> None:
    truth = ground_truth(preset)
    got = {t["name"]: {"format": t["format"], "shape": t["shape"]} for t in doc["tensors"]}
    assert got == truth
    s = PRESETS[preset]
    mxfp4 = [t for t in doc["tensors"] if t["format"] == "MXFP4"]
    assert len(mxfp4) == 2 * s.num_layers
    assert {t["role"] for t in mxfp4} == {"expert_gate_up", "expert_down"}
    assert all(t["layer"] is not None for t in mxfp4)


def test_bundled_model_reports_exactly_its_mxfp4_and_bf16_tensors(bundled):
    doc = run_json(bundled)
    assert_matches_ground_truth(doc, "tiny")
    s = doc["summary"]
    assert set(s["formats"]) == {"MXFP4", "BF16"}
    assert s["formats"]["MXFP4"]["tensors"] == 8
    assert 0 < s["mxfp4_param_share"] < 1
    assert s["hyperparameters"]["num_experts"] == 8


def test_sharded_checkpoint_reads_through_the_index(checkpoints):
    assert_matches_ground_truth(run_json(checkpoints["tiny-sharded"]), "tiny")


def test_original_layout_pairs_blocks_and_scales(bundled):
    doc = run_json(bundled / "original")
    assert doc["source"]["layout"] == "OpenAI original/"
    mx = {t["name"]: t for t in doc["tensors"] if t["format"] == "MXFP4"}
    assert set(mx) == {f"block.{i}.mlp.mlp{k}_weight" for i in range(4) for k in (1, 2)}
    assert mx["block.0.mlp.mlp1_weight"]["shape"] == [8, 128, 96]
    assert mx["block.0.mlp.mlp1_weight"]["role"] == "expert_gate_up"
    qkv = next(t for t in doc["tensors"] if t["name"] == "block.0.attn.qkv.weight")
    assert qkv["format"] == "BF16" and qkv["shape"] == [(4 + 2 * 2) * 64, 96]


@pytest.mark.parametrize("preset,layers,experts", [("20b", 24, 32), ("120b", 36, 128)])
def test_full_size_headers(tmp_path, preset, layers, experts):
    # Sparse files: real headers, data that is a hole; inspect must not need the data.
    write_checkpoint(tmp_path, preset, shards=3, sparse=True)
    doc = run_json(tmp_path)
    assert_matches_ground_truth(doc, preset)
    s = doc["summary"]
    assert s["tensors"] == 3 + 17 * layers
    assert s["formats"]["MXFP4"]["tensors"] == 2 * layers
    # One expert of the real model is 13.2 MB in MXFP4 (gate_up + down, scales included).
    per_expert = s["formats"]["MXFP4"]["bytes"] / (layers * experts)
    assert abs(per_expert - 13.2e6) < 0.1e6
    # K-quants: only attn_output (ne0 = 4096) fits; every other matrix has ne0 = 2880.
    assert s["kquant"]["compatible"] == layers
    assert s["kquant"]["compatible_tensors"] == ["model.layers.N.self_attn.o_proj.weight"]
    assert s["kquant"]["fallback_row_lengths"] == {"2880": 2 + 5 * layers}
    if preset == "20b":
        assert round(s["total_params"] / 1e9, 1) == 20.9
        assert round(s["active_params"] / 1e9, 2) == 3.61
        # The counts llama-quantize produced for Q4_K_M on the 20b shape.
        assert s["estimated_sizes"]["q4_k_m_tensor_types"] == {"F32": 289, "Q5_0": 121, "Q8_0": 25, "Q4_K": 24}
    else:
        assert round(s["total_params"] / 1e9, 1) == 116.8


def test_inspect_reads_headers_only(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, "20b", shards=3, sparse=True)

    def no_data(*a, **k):
        raise AssertionError("inspect touched tensor data")
    monkeypatch.setattr(np, "memmap", no_data)
    monkeypatch.setattr("oss_convert.files.stream.pread_array", no_data)
    assert run_json(tmp_path)["summary"]["tensors"] == 411


def test_gguf_reports_ggml_types_and_layout(tiny_gguf):
    doc = run_json(tiny_gguf)
    types = {t["name"]: t["format"] for t in doc["tensors"]}
    assert types["blk.0.ffn_gate_exps.weight"] == "MXFP4"
    assert types["token_embd.weight"] == "BF16"
    assert types["blk.0.attn_norm.weight"] == "F32"
    gate = next(t for t in doc["tensors"] if t["name"] == "blk.0.ffn_gate_exps.weight")
    assert gate["shape"] == [8, 64, 96]  # row-major, as for every source (ggml lists it reversed)
    g = doc["summary"]["gguf"]
    assert g["layout"] == "gpt-oss" and g["architecture"] == "gpt-oss"
    assert g["expert_tensors"] == g["expert_tensors_mxfp4"] == 12
    assert g["tokenizer_model"] == "gpt2" and g["tokenizer_pre"] == "gpt-4o" and g["chat_template"]


def test_human_output_is_per_layer_by_default(bundled):
    result = run_cli("inspect", bundled)
    assert "Per layer" in result.output and "MXFP4" in result.output
    assert "model.layers.0.self_attn.q_proj.weight" not in result.output
    result = run_cli("inspect", bundled, "--tensors")
    assert "model.layers.3.mlp.experts.gate_up_proj" in result.output
