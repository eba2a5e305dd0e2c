"""Lossless conversion: identical to llama.cpp's converter, round-trips bit for bit, safe output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fixtures.checkpoints import PRESETS, hf_tensors, tensor_array
from oss_convert.files.gguf import read_gguf
from oss_convert.files.safetensors import read_header
from oss_convert.formats import mxfp4
from tests.cli import run_cli
from tests.gguf_compare import gguf_differences


def convert(*args) -> None:
    run_cli("convert", *args)


@pytest.mark.reference
@pytest.mark.slow  # llama.cpp's converter: 4 s a run, most of it importing transformers
@pytest.mark.parametrize("name,outtype", [
    ("tiny", "bf16"), ("tiny-sharded", "bf16"), ("small", "bf16"), ("mid-sharded", "bf16"),
    ("tiny", "f16"), ("tiny", "f32"), ("mid-sharded", "q8_0"),
])
def test_identical_to_llama_cpp_converter(checkpoints, llama_convert, tmp_path, name, outtype):
    src = checkpoints[name]
    reference = llama_convert(src, outtype)
    ours = tmp_path / "ours.gguf"
    convert(src, "-o", ours, "--outtype", outtype)
    assert gguf_differences(ours, reference) == []


@pytest.mark.reference
def test_whole_file_identical_apart_from_the_name(checkpoints, llama_convert, tmp_path):
    # Same keys in the same order, same alignment: the tensor data region is byte-identical,
    # and the headers differ only by general.name's text.
    reference = llama_convert(checkpoints["tiny-sharded"])
    ours = tmp_path / "ours.gguf"
    convert(checkpoints["tiny-sharded"], "-o", ours)
    a, b = ours.read_bytes(), reference.read_bytes()
    ga, gb = read_gguf(ours), read_gguf(reference)
    start_a = min(t.offset for t in ga.tensors.values())
    start_b = min(t.offset for t in gb.tensors.values())
    assert a[start_a:] == b[start_b:]
    name_a, name_b = ga.get("general.name").encode(), gb.get("general.name").encode()
    assert a[:start_a].replace(name_a, b"").rstrip(b"\0") == b[:start_b].replace(name_b, b"").rstrip(b"\0")


def test_original_layout_converts_to_the_same_tensors(checkpoints, tmp_path):
    hf, orig = tmp_path / "hf.gguf", tmp_path / "orig.gguf"
    convert(checkpoints["mid-sharded"], "-o", hf)
    convert(checkpoints["mid-sharded"] / "original", "-o", orig)
    assert gguf_differences(orig, hf) == []


def test_expert_bytes_are_the_source_fp4_codes(checkpoints, tmp_path):
    """Decode both sides independently: the GGUF's FP4 codes and scales are the source's (the
    random tiny preset, whose codes the generator redraws here from its seed)."""
    gguf = tmp_path / "tiny.gguf"
    convert(checkpoints["tiny"], "-o", gguf)
    g = read_gguf(gguf).tensors
    src = {t.name: t for t in hf_tensors(PRESETS["tiny"])}
    blocks = tensor_array(src["model.layers.2.mlp.experts.gate_up_proj_blocks"], 0)
    scales = tensor_array(src["model.layers.2.mlp.experts.gate_up_proj_scales"], 0)
    want = mxfp4.decode_hf(blocks, scales)
    for name, rows in (("blk.2.ffn_gate_exps.weight", slice(0, None, 2)),
                       ("blk.2.ffn_up_exps.weight", slice(1, None, 2))):
        raw = g[name].raw().reshape(8, 64, 3, 17)
        # ggml's own reading of a block: byte 0 the exponent, qs[j] low = x[j], high = x[j + 16]
        codes = np.concatenate([raw[..., 1:] & 0x0F, raw[..., 1:] >> 4], axis=-1)
        values = mxfp4.E2M1_VALUES[codes] * np.ldexp(1.0, raw[..., :1].astype(int) - 127)
        np.testing.assert_array_equal(values.reshape(8, 64, 96), want[:, rows])


def test_round_trip_is_bit_identical(checkpoints, tmp_path):
    src = checkpoints["mid-sharded"]
    gguf, back = tmp_path / "m.gguf", tmp_path / "back"
    convert(src, "-o", gguf)
    convert(gguf, "-o", back, "--to", "safetensors")
    original = {}
    for f in sorted(src.glob("*.safetensors")):
        original.update(read_header(f).tensors)
    rebuilt = read_header(back / "model.safetensors").tensors
    assert set(rebuilt) == set(original)
    for name, t in original.items():
        r = rebuilt[name]
        assert (r.dtype, r.shape) == (t.dtype, t.shape), name
        assert r.array().tobytes() == t.array().tobytes(), name
    # and the rebuilt folder converts to the same GGUF again
    again = tmp_path / "again.gguf"
    convert(back, "-o", again)
    assert gguf_differences(again, gguf) == []
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["num_local_experts"] == 16 and cfg["quantization_config"]["quant_method"] == "mxfp4"


def test_output_is_deterministic(bundled, tiny_gguf, tmp_path):
    convert(bundled, "-o", tmp_path / "b.gguf")
    assert tiny_gguf.read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_refuses_to_overwrite_without_force(bundled, tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"precious")
    result = run_cli("convert", bundled, "-o", out, code=1)
    assert "already exists" in result.output and "--force" in result.output
    assert out.read_bytes() == b"precious"
    convert(bundled, "-o", out, "--force")
    assert out.read_bytes()[:4] == b"GGUF"


def test_failure_mid_write_leaves_nothing(bundled, tmp_path, monkeypatch):
    import oss_convert.convert.lossless as lossless

    calls = {"n": 0}
    real = lossless.mxfp4.hf_to_ggml

    def failing(*a):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(lossless.mxfp4, "hf_to_ggml", failing)
    run_cli("convert", bundled, "-o", tmp_path / "x.gguf", code=130)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_leaves_nothing(bundled, tmp_path, monkeypatch):
    import oss_convert.files.gguf as gguf_file

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(gguf_file, "write_produced", full)
    result = run_cli("convert", bundled, "-o", tmp_path / "x.gguf", code=1)
    assert "No space left on device" in result.output
    assert list(tmp_path.iterdir()) == []


def test_unwritable_target(bundled, tmp_path):
    result = run_cli("convert", bundled, "-o", tmp_path / "missing" / "x.gguf", code=1)
    assert "does not exist" in result.output


def test_not_gpt_oss_source(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}")
    result = run_cli("convert", tmp_path, "-o", tmp_path / "x.gguf", code=1)
    assert "not a GPT-OSS checkpoint" in result.output
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.reference
def test_llama_cpp_loads_and_evaluates(bundled, tiny_gguf, llama_cpp):
    llm = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=256, verbose=False, n_threads=2, logits_all=True)
    text = "The quick brown fox jumps over the lazy dog. What is 12345?"
    tokens = llm.tokenize(text.encode(), add_bos=False)
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)])
    assert logits.shape == (len(tokens), 576) and np.isfinite(logits).all()
    assert (logits.std(axis=1) > 0.5).all()  # well-scaled fixture: non-degenerate predictions
    # llama.cpp's gpt-4o pre-tokenizer on our tokenizer data gives the Hugging Face tokenization
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(bundled)
    assert tokens == hf.encode(text)
    special = llm.tokenize(b"<|start|>user<|message|>hi<|end|>", add_bos=False, special=True)
    assert special == hf.encode("<|start|>user<|message|>hi<|end|>")


def test_any_lossless_source_goes_back_to_the_same_hf_checkpoint(checkpoints, tmp_path):
    """One checkpoint model under --to safetensors: OpenAI's original/ layout and Ollama's older
    GGUF give the HF tensors bit for bit, as llama.cpp's layout does."""
    from tests.gguf_edit import ollama_layout
    root = checkpoints["tiny"]
    lossless = tmp_path / "tiny.gguf"
    convert(root, "-o", lossless)
    sources = {"original": root / "original", "gguf": lossless,
               "ollama": ollama_layout(root, lossless, tmp_path / "ollama.gguf")}
    want = {}
    for f in sorted(root.glob("*.safetensors")):
        for name, t in read_header(f).tensors.items():
            want[name] = t.array()
    for kind, src in sources.items():
        back = tmp_path / f"back-{kind}"
        convert(src, "-o", back, "--to", "safetensors")
        got = read_header(back / "model.safetensors").tensors
        assert set(got) == set(want), kind
        for name, t in got.items():
            np.testing.assert_array_equal(t.array(), want[name], err_msg=f"{kind}: {name}")


def test_a_swiglu_setting_gguf_cannot_carry_is_said_in_the_plan(bundled, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(bundled, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["swiglu_limit"] = 3.0
    (src / "config.json").write_text(json.dumps(cfg))
    result = run_cli("convert", src, "-o", tmp_path / "m.gguf")
    assert ("warning: the config's SwiGLU limit 3 and alpha 1.702 have no GGUF key: llama.cpp runs every gpt-oss "
            "GGUF with 7 and 1.702") in result.output
    back = tmp_path / "back"
    convert(tmp_path / "m.gguf", "-o", back, "--to", "safetensors")
    assert json.loads((back / "config.json").read_text())["swiglu_limit"] == 7.0  # what llama.cpp runs it with
