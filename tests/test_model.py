"""The whole-model runtime against transformers' GptOssForCausalLM and llama.cpp, and
`compare --full` / `generate` through the CLI."""

from __future__ import annotations

import json
import sys
import weakref

import numpy as np
import pytest
import torch

from oss_convert.checkpoint import open_checkpoint
from oss_convert.runtime.execution.forward import forward, load_model, streamed_logits
from oss_convert.runtime.model import cache as cache_module
from oss_convert.runtime.model.cache import KVCache
from oss_convert.runtime.model.moe import MoEBlock
from oss_convert.runtime.weights import products, source
from tests.cli import run_cli

# longer than the 128-token sliding window, so even layers really slide
TOKENS = [(i * 37 + 11) % 350 for i in range(200)]


def ours(path, tokens=TOKENS) -> np.ndarray:
    model = load_model(open_checkpoint(path), torch.device("cpu"))
    with torch.no_grad():
        return forward(model, torch.tensor(tokens)).numpy()


def hf_logits(path, tokens=TOKENS) -> np.ndarray:
    transformers = pytest.importorskip("transformers")
    model = transformers.GptOssForCausalLM.from_pretrained(
        path, quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


@pytest.mark.reference
@pytest.mark.parametrize("name", ["tiny", "mid-sharded"])
def test_logits_match_transformers(checkpoints, name):
    """Same math in float32: agreement to float rounding (stated tolerance: 1e-4 relative)."""
    a, b = ours(checkpoints[name]), hf_logits(checkpoints[name])
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4
    assert (a.argmax(-1) == b.argmax(-1)).all()


@pytest.mark.reference
def test_logits_match_llama_cpp(bundled, tiny_gguf, llama_cpp):
    """llama.cpp's CPU backend rounds activations (bf16/q8_0 dot products), so parity is
    statistical: within 5% relative, 95% top-1, and as close to it as transformers is."""
    gguf = tiny_gguf
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_batch=512, verbose=False, logits_all=True, n_threads=2)
    llm.eval(TOKENS)
    ref = np.array(llm.scores[: len(TOKENS)])
    mine = ours(gguf)
    rel = np.linalg.norm(mine - ref) / np.linalg.norm(ref)
    assert rel < 0.05 and (mine.argmax(-1) == ref.argmax(-1)).mean() > 0.95
    hf = hf_logits(bundled)
    assert rel < 1.1 * np.linalg.norm(hf - ref) / np.linalg.norm(ref)


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    p = torch.log_softmax(torch.from_numpy(p_logits).double(), -1)
    q = torch.log_softmax(torch.from_numpy(q_logits).double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.reference
@pytest.mark.parametrize("field,value", [("swiglu_limit", 3.0), ("swiglu_alpha", 1.2)])
def test_the_configs_swiglu_settings_reach_the_runtime(checkpoints, tmp_path, field, value):
    """A fine-tune's SwiGLU clamp (or slope) gives transformers' logits, and differs enough from
    the default that a runtime ignoring the config would fail here."""
    import shutil
    src = tmp_path / "model"
    shutil.copytree(checkpoints["tiny"], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg[field] = value
    (src / "config.json").write_text(json.dumps(cfg))
    mine, reference = ours(src), hf_logits(src)
    assert mean_kl(reference, mine) < 1e-3
    assert mean_kl(reference, ours(checkpoints["tiny"])) > 1e-2


@pytest.mark.parametrize("activations", ["float32", "q8"])
def test_kv_cache_gives_the_same_logits(bundled, checkpoints, activations, monkeypatch):
    """A prompt, then one token at a time: the logits of one forward call over all of them, from a
    cache reserved for the whole context and from one that grows (blocks of 32 positions here:
    128 positions for the first 100, then 160 and 192) alike.

    Every product runs in the C kernels here, the 170-token call's too: past FUSED_MAX_TOKENS a
    BF16 matrix goes to torch's GEMM, whose summation order is not the kernels' and differs from
    CPU to CPU, and with Q8_0 activations a last-bit difference now and then moves a value across
    a rounding step (on a Xeon, 0.02 in the logits of the 100-token prompt; with the kernels
    throughout, 3e-6). With Q8_0 activations the model is the random tiny preset: on the trained
    bundled model a decode step's attention (its own C path) and the prompt's differ in the last
    bits, and its activations sit where that moves a Q8_0 rounding step (0.03 in a logit)."""
    monkeypatch.setattr(cache_module, "KV_BLOCK", 32)
    monkeypatch.setattr(products, "FUSED_MAX_TOKENS", len(TOKENS))
    source = bundled if activations == "float32" else checkpoints["tiny"]
    model = load_model(open_checkpoint(source), torch.device("cpu"), activations)
    with torch.no_grad():
        full = forward(model, torch.tensor(TOKENS[:170]))
        by_cache = {}
        for capacity in (170, 0):
            cache = KVCache(capacity)
            parts = [forward(model, torch.tensor(TOKENS[:100]), cache)]
            parts += [forward(model, torch.tensor([t]), cache) for t in TOKENS[100:170]]
            assert cache.length == 170 and cache.keys[0].shape[0] == 170
            by_cache[capacity] = torch.cat(parts)
            held = cache.keys[-1].untyped_storage().nbytes() // (cache.keys[-1][0].numel() * 4)
            assert held == (170 if capacity else 192)
    torch.testing.assert_close(by_cache[170], full, rtol=1e-4, atol=1e-4)
    assert torch.equal(by_cache[0], by_cache[170])


@pytest.mark.reference
def test_q8_activations_cost_about_what_llama_cpps_rounding_costs(bundled, tiny_gguf, llama_cpp):
    """--activations q8 rounds the expert products' activations as llama.cpp's CPU backend does:
    the same logits from the safetensors and the lossless GGUF (the values decide, not the
    layout); a bounded distance from transformers, of the order of llama.cpp's own."""
    gguf = tiny_gguf
    with torch.no_grad():
        q8_logits = lambda path: forward(load_model(open_checkpoint(path), torch.device("cpu"), "q8"),  # noqa: E731
                                         torch.tensor(TOKENS))
        from_safetensors, from_gguf = q8_logits(bundled), q8_logits(gguf)
    assert torch.equal(from_safetensors, from_gguf)
    hf, exact = hf_logits(bundled), ours(bundled)
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_batch=512, verbose=False, logits_all=True, n_threads=2)
    llm.eval(TOKENS)
    llama = np.array(llm.scores[: len(TOKENS)])
    rounded = from_safetensors.numpy()
    assert 1e-5 < mean_kl(hf, rounded) < 5 * max(mean_kl(hf, llama), 1e-3)
    assert mean_kl(hf, exact) < 1e-6  # the default stays transformers' arithmetic
    assert (rounded.argmax(-1) == hf.argmax(-1)).mean() > 0.95


@pytest.mark.parametrize("kind", ["safetensors", "q4_k_m"])
def test_streaming_layers_gives_the_resident_models_logits(bundled, bundled_ports, monkeypatch, kind):
    """compare --full reads one layer at a time; its logits are the resident forward's, bit for
    bit, window by window, and no layer's experts outlive the next layer's loading. The dense
    weights are widened a few rows at a time there (as the 201088-row embedding is)."""
    path = bundled if kind == "safetensors" else bundled_ports[kind]
    ckpt = open_checkpoint(path)
    windows = [torch.tensor(TOKENS[:130]), torch.tensor(TOKENS[130:])]
    with torch.no_grad():
        resident = load_model(ckpt, torch.device("cpu"))
        expected = [forward(resident, w) for w in windows]
        del resident
        alive, real_load = [], MoEBlock.from_weights.__func__

        def load_one_at_a_time(cls, weights, n):
            assert not [ref for ref in alive if ref() is not None], f"layer {n} loaded while an earlier one is held"
            layer = real_load(cls, weights, n)
            alive.append(weakref.ref(layer.gate_up))
            return layer
        monkeypatch.setattr(MoEBlock, "from_weights", classmethod(load_one_at_a_time))
        monkeypatch.setattr(source, "VALUES_PER_READ", 1000)
        done = []
        streamed = streamed_logits(ckpt, windows, torch.device("cpu"), progress=done.append)
    assert len(alive) == len(done) == ckpt.config.num_layers and done == sorted(done)
    for got, want in zip(streamed, expected):
        assert torch.equal(got, want)


def compare_full(*args) -> dict:
    return json.loads(run_cli("compare", *args, "--full", "--json").stdout)


def test_compare_full_original_vs_lossless_and_q4_k_m(bundled, bundled_ports, tmp_path):
    lossless, q = bundled_ports["mxfp4"], bundled_ports["q4_k_m"]
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(map(str, TOKENS)))
    doc = compare_full(bundled, lossless, "--tokens-file", ids, "--save-logits", tmp_path / "logits")
    s = doc["summary"]
    assert s["kl_mean"] == 0 and s["kl_max"] == 0 and s["top1_agreement"] == 1.0 and s["max_logit_diff"] == 0
    assert s["perplexity_a"] == s["perplexity_b"] > 1
    saved = np.load(tmp_path / "logits" / "logits_a.npy")
    assert saved.shape == (200, 576) and saved.dtype == np.float32
    assert (tmp_path / "logits" / "tokens.txt").read_text().split() == [str(t) for t in TOKENS]
    doc = compare_full(bundled, q, "--tokens-file", ids, "--ctx", "128")
    s = doc["summary"]
    assert 0 < s["kl_mean"] < 0.5 and s["kl_max"] >= s["kl_p99"] >= 0 and 0.5 < s["top1_agreement"] < 1.0
    assert len(doc["per_position"]) == 200


def test_compare_full_with_a_prompt_and_generate(bundled, tiny_gguf):
    pytest.importorskip("tokenizers")
    lossless = tiny_gguf
    doc = compare_full(bundled, lossless, "--prompt", "The quick brown fox jumps over the lazy dog.")
    assert doc["summary"]["max_logit_diff"] == 0 and len(doc["tokens"]) > 5
    # the same greedy continuation from the checkpoint and from its GGUF, through the chat template
    outs = []
    for model in (bundled, lossless):
        result = run_cli("generate", model, "--prompt", "Hello, world!", "--max-tokens", "12", "--json")
        outs.append(json.loads(result.stdout))
    assert outs[0]["tokens"] == outs[1]["tokens"] and outs[0]["prompt"].startswith("<|start|>user<|message|>")
    assert 0 < len(outs[0]["tokens"]) <= 12


def test_compare_full_evaluates_a_text_file_in_windows(bundled, bundled_ports, tmp_path):
    """--text-file is the whole file as --prompt would tokenize it, in windows of --ctx, each
    position labelled with its window; a file that is not UTF-8 text is one error line."""
    pytest.importorskip("tokenizers")
    q = bundled_ports["q8_0"]
    text = "The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs.\n" * 3
    (tmp_path / "t.txt").write_text(text)
    from_file = compare_full(bundled, q, "--text-file", tmp_path / "t.txt", "--ctx", "32")
    from_prompt = compare_full(bundled, q, "--prompt", text, "--ctx", "32")
    assert from_file["tokens"] == from_prompt["tokens"] and len(from_file["tokens"]) > 64
    assert from_file["summary"] == from_prompt["summary"] and from_file["summary"]["kl_mean"] > 0
    assert [p["window"] for p in from_file["per_position"]] == [i // 32 for i in range(len(from_file["tokens"]))]
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    result = run_cli("compare", bundled, q, "--full", "--text-file", tmp_path / "bin.txt", code=1)
    assert result.output.startswith(f"Error: {tmp_path / 'bin.txt'}: not a readable UTF-8")
    assert len(result.output.strip().splitlines()) == 1


def test_text_without_its_packages_is_one_error_line(bundled, monkeypatch):
    """Without the 'text' extra each command says which package it lacks, and offers only what it
    has: compare --full takes token ids instead, generate has no such option."""
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    result = run_cli("compare", bundled, bundled, "--full", "--prompt", "hi", code=1)
    assert result.output == ("Error: tokenizing text needs the 'tokenizers' package (pip install tokenizers, or the "
                             "'text' extra); or pass token ids with --tokens-file\n")
    result = run_cli("generate", bundled, "--prompt", "hi", code=1)
    assert "--tokens-file" not in result.output
    assert result.output.startswith("Error: tokenizing text needs the 'tokenizers' package")
    monkeypatch.setitem(sys.modules, "jinja2", None)
    result = run_cli("generate", bundled, "--prompt", "hi", code=1)
    assert result.output == ("Error: the chat template needs the 'jinja2' package (pip install jinja2, or the "
                             "'text' extra)\n")
