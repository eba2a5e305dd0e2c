"""The memory estimate of `inspect --ctx` against what libllama itself allocates (the buffer sizes it
logs on load, through llama-cpp-python), and against the tensors our runtime really holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.checkpoints import write_checkpoint, write_sparse_gguf
from oss_convert.checkpoint import open_checkpoint
from oss_convert.convert.to_gguf import convert_lossless
from oss_convert.memory.context import ContextOptions
from oss_convert.memory.estimate import gguf_weight_bytes, memory_estimate, model_shape
from oss_convert.memory.llama import llama_cpp_memory
from oss_convert.memory.runtime import runtime_kv_bytes, runtime_weight_bytes
from tests.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
PRINTED = 0.005  # llama.cpp prints MiB to 2 decimals: each printed buffer is within this of the truth

# (model, n_ctx, sequences, KV type, micro-batch, unified cache, SWA cache over the whole context)
CASES = [
    ("tiny", 2048, 1, "f16", 512, False, False),
    ("tiny", 8192, 4, "q8_0", 512, False, False),
    ("tiny", 4096, 1, "f16", 128, False, True),
    ("small", 512, 1, "f16", 512, False, False),
    ("small", 32768, 1, "q8_0", 512, False, False),
    ("small", 4096, 1, "f16", 128, False, True),  # 2 layers: the window's mask dies after layer 0
    ("mid", 4096, 4, "f16", 512, True, False),
    ("mid", 1000, 1, "f16", 512, False, False),
    ("mid", 16384, 4, "f16", 256, False, False),
    ("mid", 8192, 1, "q8_0", 512, False, True),
    # the full-size shapes: writing and loading their headers takes libllama half a minute
    pytest.param("20b", 8192, 1, "f16", 512, False, False, marks=pytest.mark.slow),
    pytest.param("20b", 32768, 4, "q8_0", 512, False, False, marks=pytest.mark.slow),
    pytest.param("120b", 131072, 1, "f16", 512, False, False, marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def ggufs(checkpoints, tiny_gguf, small_gguf, tmp_path_factory) -> dict[str, Path]:
    """Lossless GGUFs of the fixture shapes; the full-size ones as headers over a hole, which
    libllama maps and sizes its buffers for like the real file (it reads no weight to do so)."""
    base = tmp_path_factory.mktemp("memory")
    out = {"tiny": tiny_gguf, "small": small_gguf, "mid": base / "mid.gguf"}
    convert_lossless(open_checkpoint(checkpoints["mid-sharded"]), out["mid"], show_progress=False)
    for name in ("20b", "120b"):
        sparse = write_checkpoint(base / name, name, sparse=True)
        out[name] = write_sparse_gguf(sparse, base / f"{name}.gguf")
    return out


def libllama_buffers(gguf: Path, n_ctx: int, n_seq: int, kv_type: str, n_ubatch: int, kv_unified: bool,
                     swa_full: bool) -> dict:
    spec = {"path": str(gguf), "n_ctx": n_ctx, "n_seq": n_seq, "kv_type": kv_type, "n_ubatch": n_ubatch,
            "n_batch": 2048, "swa_full": swa_full, "kv_unified": kv_unified, "flash_attn": True,
            # repacking copies weights out of the mapping into anonymous memory: 60 GB for the 120b
            "repack": False}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "reference" / "llama_memory.py"), json.dumps(spec)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


@pytest.mark.reference
@pytest.mark.parametrize("model,n_ctx,n_seq,kv_type,ubatch,unified,swa_full", CASES)
def test_estimate_is_what_libllama_allocates(ggufs, llama_cpp, model, n_ctx, n_seq, kv_type, ubatch, unified, swa_full):
    ref = libllama_buffers(ggufs[model], n_ctx, n_seq, kv_type, ubatch, unified, swa_full)
    ckpt = open_checkpoint(ggufs[model])
    weights, _ = gguf_weight_bytes(ckpt)
    ours = llama_cpp_memory(model_shape(ckpt), weights,
                            ContextOptions(n_ctx, kv_type, n_seq, ubatch, 2048, swa_full, unified))
    buffers = lambda kind: sum(kind in line for line in ref["lines"])  # noqa: E731
    assert abs(ours["weights_bytes"] / MiB - ref["model"]) <= PRINTED * buffers("model buffer") + 1e-9, ref["lines"]
    # two caches (full-attention and sliding-window layers), each printed on its own
    assert abs(ours["kv_cache_bytes"] / MiB - ref["kv"]) <= PRINTED * buffers("KV buffer") + 1e-9, ref["lines"]
    assert abs(ours["output_bytes"] / MiB - ref["output"]) <= PRINTED + 1e-9, ref["lines"]
    assert ours["compute_bytes"] / MiB == pytest.approx(ref["compute"], rel=0.10), ref["lines"]
    total = ref["model"] + ref["kv"] + ref["output"] + ref["compute"]
    assert ours["total_bytes"] / MiB == pytest.approx(total, rel=0.05)


def test_the_kv_cache_follows_llama_cpps_cells():
    """Cells as src/llama-context.cpp and src/llama-kv-cache-iswa.cpp count them, without libllama."""
    from oss_convert.memory.context import ModelShape
    from oss_convert.memory.llama import kv_cache
    shape = ModelShape(layers=24, experts=32, experts_per_token=4, hidden=2880, expert_ffn=2880, heads=64,
                       kv_heads=8, head_dim=64, vocab=201088, sliding_window=128, max_context=131072)
    kv = kv_cache(shape, ContextOptions(8000))
    assert (kv["cells"], kv["swa_cells"], kv["streams"]) == (8192, 768, 1)  # padded to 256; window + ubatch
    assert kv["bytes"] == 12 * 2 * 512 * 2 * (8192 + 768)
    split = kv_cache(shape, ContextOptions(10000, parallel=3))
    assert (split["cells"], split["n_ctx"], split["streams"]) == (3584, 3 * 3584, 3)  # 10240 / 3, padded
    assert kv_cache(shape, ContextOptions(8192, swa_full=True))["swa_cells"] == 8192
    assert kv_cache(shape, ContextOptions(8192, parallel=4, kv_unified=True))["swa_cells"] == 1024  # 4 x 128 + 512
    assert kv_cache(shape, ContextOptions(300))["swa_cells"] == 512  # min(512, 640) cells, padded


def test_runtime_estimate_is_what_the_runtime_holds(bundled, bundled_ports, checkpoints, tmp_path):
    """Weights and KV cache of our runtime, counted from the tensors it holds after a prompt
    longer than a prefill micro-batch, for the original, for a GGUF with ggml-typed experts and
    for a Q4_K_M port whose rows of 256 take K-quants."""
    torch = pytest.importorskip("torch")
    from oss_convert.runtime.execution.forward import forward, load_model, prefill
    from oss_convert.runtime.kernels import native
    from oss_convert.runtime.model.cache import KVCache
    from oss_convert.runtime.weights.experts import MappedExperts, PackedExperts
    from oss_convert.runtime.weights.matrices import FloatMatrix, StoredMatrix

    q8, k_quants = bundled_ports["q8_0"], tmp_path / "q4_k_m.gguf"
    run_cli("convert", checkpoints["small"], "-o", k_quants, "--type", "q4_k_m")
    assert "Q4_K" in {t.format for t in open_checkpoint(k_quants).model_tensors}
    for path in (bundled, q8, k_quants):
        ckpt = open_checkpoint(path)
        model = load_model(ckpt, torch.device("cpu"))
        held = 0
        for obj in [model.embedding, model.norm, model.unembedding, *(b.attention for b in model.blocks),
                    *(b.moe for b in model.blocks)]:
            for value in (vars(obj).values() if not isinstance(obj, (torch.Tensor, StoredMatrix, FloatMatrix))
                          else [obj]):
                if isinstance(value, FloatMatrix):
                    value = value.values
                if isinstance(value, torch.Tensor):
                    held += value.numel() * value.element_size()
                elif isinstance(value, (MappedExperts, PackedExperts)):
                    held += value.nbytes
                elif isinstance(value, StoredMatrix):
                    held += value.data.nbytes
        assert held == runtime_weight_bytes(ckpt, stored_dense=native.library() is not None)
        tokens = [(i * 7) % 300 for i in range(600)]
        cache = KVCache(capacity=len(tokens) + 10)  # as generate reserves: the prompt and what it adds
        with torch.no_grad():
            prefill(model, tokens, cache)
            forward(model, torch.tensor([5]), cache)
        held_storage = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                        for t in cache.keys + cache.values}
        assert len(held_storage) == 2 * model.config.num_layers
        assert sum(held_storage.values()) == runtime_kv_bytes(model_shape(ckpt), len(tokens) + 10)


def test_runtime_peak_on_cuda(bundled):
    """On a GPU: what generate's tensors reach, against the estimate (weights + cache + activations)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from oss_convert.memory.runtime import runtime_memory
    from oss_convert.runtime.execution.forward import load_model, prefill
    from oss_convert.runtime.model.cache import KVCache
    ckpt = open_checkpoint(bundled)
    torch.cuda.reset_peak_memory_stats()
    model = load_model(ckpt, torch.device("cuda"))
    tokens = [(i * 7) % 300 for i in range(2048)]
    with torch.no_grad():
        prefill(model, tokens, KVCache(capacity=len(tokens)))  # as generate reserves its context
    estimate = runtime_memory(model_shape(ckpt), runtime_weight_bytes(ckpt, stored_dense=False), len(tokens))
    assert torch.cuda.max_memory_allocated() == pytest.approx(estimate["total_bytes"], rel=0.10)


def test_inspect_memory_estimate_json_and_fit(bundled):
    run = run_cli("inspect", bundled, "--json")
    memory = json.loads(run.output)["summary"]["memory"]
    assert [c["ctx"] for c in memory["contexts"]] == [8192, 131072]  # default: 8k and the model's maximum

    run = run_cli("inspect", bundled, "--json", "--ctx", "100000", "--kv-type", "q8_0", "--parallel", "2",
                  "--gpu-memory", "64MiB")
    memory = json.loads(run.output)["summary"]["memory"]
    (row,) = memory["contexts"]
    assert row["ctx"] == 100000 and memory["options"]["kv_type"] == "q8_0" and memory["options"]["parallel"] == 2
    assert row["llama_cpp"]["kv_cache"]["streams"] == 2
    assert memory["gpu_memory_bytes"] == 64 * MiB
    ll = row["llama_cpp"]
    assert ll["total_bytes"] == ll["weights_bytes"] + ll["kv_cache_bytes"] + ll["output_bytes"] + ll["compute_bytes"]
    # the largest context that fits does fit, and 256 more does not
    largest = memory["largest_context"]["llama_cpp"]
    ckpt = open_checkpoint(bundled)
    at = lambda ctx: memory_estimate(ckpt, ContextOptions(ctx, "q8_0", 2), gpu_memory=64 * MiB)  # noqa: E731
    assert at(largest)["contexts"][0]["fits_llama_cpp"]
    assert not at(largest + 256)["contexts"][0]["fits_llama_cpp"]
    assert row["fits_llama_cpp"] == (100000 <= largest)


def test_inspect_memory_estimate_human(bundled):
    run = run_cli("inspect", bundled, "--ctx", "4096", "--gpu-memory", "24GB")
    assert "Memory estimate (KV cache f16, 1 sequence" in run.output
    assert "Largest context on 24.00 GiB of GPU memory: llama.cpp 131072 tokens (the model's maximum)" in run.output


@pytest.mark.parametrize("args,message", [
    (["--gpu-memory", "lots"], "'lots' is not a size"),
    (["--ctx", "0"], "--ctx"),
    (["--kv-type", "q3_k"], "--kv-type"),
])
def test_bad_memory_options_are_one_error_line(bundled, args, message):
    run = run_cli("inspect", bundled, *args, code=2)
    assert message in run.output and "Traceback" not in run.output
