"""`oss-convert verify` on faithful, requantized, re-laid-out and corrupted ports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import gguf_edit
from tests.cli import run_cli


def verify(*args):
    """(exit code: 0, or 1 for a finding; the JSON document) of verify."""
    result = run_cli("verify", *args, "--json", code=None)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def by_port(doc, name):
    return next(t for t in doc["tensors"] if t["port"] == name)


@pytest.fixture(scope="module")
def lossless(small_gguf):
    return small_gguf


@pytest.fixture
def src(checkpoints):
    return checkpoints["small"]  # hidden = intermediate = 256: a transposed expert keeps its shape


def test_our_lossless_file_preserves_fp4(src, lossless):
    code, doc = verify(src, lossless, "--require-fp4")
    s = doc["summary"]
    assert code == 0 and s["fp4_preserved"] and s["ok"]
    assert s["counts"]["bit-identical"] == len(doc["tensors"])
    assert s["verdict"].startswith("FP4 preserved: 6/6 expert tensors bit-identical")
    assert all(m["ok"] for m in doc["metadata"])


def test_original_layout_source(checkpoints, tmp_path):
    out = tmp_path / "m.gguf"
    run_cli("convert", checkpoints["mid-sharded"], "-o", out)
    code, doc = verify(checkpoints["mid-sharded"] / "original", out)
    assert code == 0 and doc["summary"]["fp4_preserved"]


def test_requantized_file_is_reference_requantized(src, tmp_path):
    out = tmp_path / "q.gguf"
    run_cli("convert", src, "-o", out, "--type", "q4_k_m")
    code, doc = verify(src, out)
    s = doc["summary"]
    assert code == 0 and not s["fp4_preserved"] and s["ok"]
    assert s["counts"]["lossy"] == 0 and s["counts"]["reference-requantized"] > 0
    gate = by_port(doc, "blk.0.ffn_gate_exps.weight")
    assert gate["status"] == "reference-requantized" and gate["port_format"] in ("Q4_K", "Q6_K")
    assert 10 < gate["snr_db"] < 60
    assert s["verdict"].startswith("FP4 not preserved: 6 of 6 expert tensors changed")
    code, _ = verify(src, out, "--require-fp4")
    assert code == 1


def test_ollama_layout_is_recognized_and_preserved(src, lossless, tmp_path):
    port = gguf_edit.ollama_layout(src, lossless, tmp_path / "ollama.gguf")
    code, doc = verify(src, port, "--require-fp4")
    assert doc["layout"] == "Ollama gptoss (older)"
    assert code == 0 and doc["summary"]["fp4_preserved"], doc["summary"]
    fused = by_port(doc, "blk.1.ffn_gate_up_exps.weight")
    assert fused["status"] == "bit-identical" and fused["port_format"] == "MXFP4"
    inspect = json.loads(run_cli("inspect", port, "--json").stdout)
    assert inspect["summary"]["gguf"]["expert_tensors_mxfp4"] == 4


def test_split_gguf(src, lossless, tmp_path):
    parts = gguf_edit.split(lossless, tmp_path, 3)
    code, doc = verify(src, parts[1])
    assert code == 0 and doc["summary"]["fp4_preserved"]


def _flip_nibble(expert, row, block, which):
    def edit(raw):  # raw: [E, rows, blocks * 17]; byte 1 + j of a block holds codes j and j + 16
        raw[expert, row, block * 17 + 1 + which] ^= 0x01
        return raw
    return edit


def test_one_flipped_nibble_is_located(src, lossless, tmp_path):
    flip = {"blk.1.ffn_up_exps.weight": _flip_nibble(2, 17, 5, 3)}
    port = gguf_edit.rewrite(lossless, tmp_path / "p.gguf", edit=flip)
    code, doc = verify(src, port)
    assert code == 1
    t = by_port(doc, "blk.1.ffn_up_exps.weight")
    assert t["status"] == "lossy"
    assert t["first_differing_block"] | {"source_scale": 0, "port_scale": 0} == \
        {"expert": 2, "row": 17, "block": 5, "source_scale": 0, "port_scale": 0}
    assert t["blocks_differ"] == 1 and t["fraction_codes_differ"] == 1 / (t["blocks"] * 32)
    assert t["max_abs_error"] > 0 and np.isfinite(t["snr_db"])
    others = [x for x in doc["tensors"] if x["port"] != "blk.1.ffn_up_exps.weight"]
    assert all(x["status"] == "bit-identical" for x in others)


def test_a_changed_expert_is_named_and_the_tensor_error_counts_every_expert(src, lossless, tmp_path, monkeypatch):
    """One expert per chunk, so the unchanged experts are settled by their bytes alone; their
    signal must still count in the tensor's SNR, which gguf-py's own dequantizer checks."""
    from gguf import GGMLQuantizationType, GGUFReader, quants

    from oss_convert.verify import tensors
    monkeypatch.setattr(tensors, "VERIFY_CHUNK_BYTES", 1)
    name = "blk.1.ffn_up_exps.weight"
    port = gguf_edit.rewrite(lossless, tmp_path / "p.gguf", edit={name: _flip_nibble(2, 17, 5, 3)})
    code, doc = verify(src, port)
    t = by_port(doc, name)
    assert code == 1 and [e["expert"] for e in t["per_expert"]] == list(range(len(t["per_expert"])))
    changed = [e for e in t["per_expert"] if e["snr_db"] != float("inf")]
    assert [e["expert"] for e in changed] == [2] and changed[0]["max_abs_error"] == t["max_abs_error"]
    assert all(e["relative_error"] == 0 for e in t["per_expert"] if e["expert"] != 2)

    def values(path):
        t = next(t for t in GGUFReader(path).tensors if t.name == name)
        return quants.dequantize(np.asarray(t.data), GGMLQuantizationType.MXFP4).astype(np.float64)
    x, y = values(lossless), values(port)
    assert t["snr_db"] == pytest.approx(10 * np.log10((x * x).sum() / ((x - y) ** 2).sum()), rel=1e-6)
    assert changed[0]["snr_db"] == pytest.approx(
        10 * np.log10((x[2] * x[2]).sum() / ((x[2] - y[2]) ** 2).sum()), rel=1e-6)


def test_changed_scale_byte_is_located(src, lossless, tmp_path):
    def edit(raw):
        raw[3, 200, 2 * 17] += 1  # byte 0 of block 2: the E8M0 exponent
        return raw
    port = gguf_edit.rewrite(lossless, tmp_path / "p.gguf", edit={"blk.0.ffn_down_exps.weight": edit})
    code, doc = verify(src, port)
    t = by_port(doc, "blk.0.ffn_down_exps.weight")
    fb = t["first_differing_block"]
    assert code == 1 and t["status"] == "lossy"
    assert (fb["expert"], fb["row"], fb["block"]) == (3, 200, 2)
    assert fb["port_scale"] == fb["source_scale"] + 1
    assert t["fraction_codes_differ"] == 0 and t["blocks_differ"] == 1


def test_swapped_gate_and_up(src, lossless, tmp_path):
    from oss_convert.files.gguf import read_gguf
    g = read_gguf(lossless).tensors
    gate, up = np.array(g["blk.1.ffn_gate_exps.weight"].raw()), np.array(g["blk.1.ffn_up_exps.weight"].raw())
    port = gguf_edit.rewrite(lossless, tmp_path / "p.gguf", edit={
        "blk.1.ffn_gate_exps.weight": lambda raw: up, "blk.1.ffn_up_exps.weight": lambda raw: gate})
    code, doc = verify(src, port)
    assert code == 1
    for name in ("blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight"):
        t = by_port(doc, name)
        assert t["status"] == "lossy" and t["fraction_blocks_differ"] > 0.9
        assert (t["first_differing_block"]["expert"], t["first_differing_block"]["row"]) == (0, 0)


def test_transposed_expert(src, lossless, tmp_path):
    from oss_convert.formats import mxfp4

    def transpose_expert_1(raw):
        blocks, scales = mxfp4.ggml_to_hf(raw)
        E, rows, G, _ = blocks.shape
        values = mxfp4.hf_codes(blocks).reshape(E, rows, G * 32)
        values[1] = values[1].T.copy()  # a square expert, written transposed: shape unchanged
        blocks = mxfp4.hf_blocks_from_codes(values.reshape(E, rows, G, 32))
        return mxfp4.hf_to_ggml(blocks, scales)
    port = gguf_edit.rewrite(lossless, tmp_path / "p.gguf", edit={"blk.0.ffn_down_exps.weight": transpose_expert_1})
    code, doc = verify(src, port)
    t = by_port(doc, "blk.0.ffn_down_exps.weight")
    assert code == 1 and t["status"] == "lossy" and t["first_differing_block"]["expert"] == 1
    assert 0.24 < t["fraction_blocks_differ"] <= 0.25  # one expert of four, nearly every block of it


def test_missing_tensor_and_wrong_hyperparameter(src, lossless, tmp_path):
    port = gguf_edit.rewrite(lossless, tmp_path / "p.gguf", drop={"blk.1.attn_sinks.weight"},
                             meta={"gpt-oss.expert_used_count": 2})
    code, doc = verify(src, port)
    assert code == 1
    missing = [t for t in doc["tensors"] if t["status"] == "missing"]
    assert [(t["source"], t["port"]) for t in missing] == [
        ("model.layers.1.self_attn.sinks", "blk.1.attn_sinks.weight")]
    bad = [m for m in doc["metadata"] if not m["ok"]]
    assert bad == [{"key": "gpt-oss.expert_used_count", "expected": 4, "found": 2, "ok": False}]
    assert doc["summary"]["fp4_preserved"]  # the experts themselves are intact


def test_human_output_and_unreadable_input(src, lossless, tmp_path):
    assert run_cli("verify", src, lossless).output.startswith("FP4 preserved")
    (tmp_path / "bad.gguf").write_bytes(b"nope")
    assert run_cli("verify", src, tmp_path / "bad.gguf", code=2).output.startswith("Error: ")
    result = run_cli("verify", lossless, src, code=2)  # the two the wrong way round
    assert result.output == (f"Error: {lossless}: is a GGUF; verify takes the source checkpoint first, "
                             "then the GGUF port\n")
