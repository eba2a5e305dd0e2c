"""The MoE runtime: Triton kernels (under TRITON_INTERPRET on a CPU) against the torch
reference, loaders of every format against the numpy dequantizers, and compare."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from oss_convert.checkpoint import open_checkpoint
from oss_convert.files.gguf import read_gguf
from oss_convert.formats import mxfp4
from oss_convert.formats.registry import decode, encode
from oss_convert.runtime.model.moe import MoEBlock, mix_experts
from oss_convert.runtime.weights.experts import PackedExperts
from oss_convert.runtime.weights.source import WeightSource
from tests import gguf_edit
from tests.cli import run_cli
from tests.hopper import check_compiled_for_hopper

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Kernels run on a GPU when there is one, else on the CPU under Triton's interpreter.
KERNEL_DEVICE = "cpu" if INTERPRET else "cuda"
kernels_runnable = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                      reason="needs a CUDA GPU or TRITON_INTERPRET=1 (set by .ci/run)")


def load_layer(path, layer: int) -> MoEBlock:
    """Layer `layer`'s MoE block of the artifact at `path`, as the runtime loads it on the CPU."""
    return MoEBlock.from_weights(WeightSource(open_checkpoint(path), torch.device("cpu")), layer)


def random_mxfp4(E: int, N: int, K: int, gen: torch.Generator) -> PackedExperts:
    codes = torch.randint(0, 256, (E, N, K // 2), dtype=torch.uint8, generator=gen)
    scales = torch.randint(120, 126, (E, N, K // 32), dtype=torch.uint8, generator=gen)
    return PackedExperts("MXFP4", (E, N, K), codes, scales)


def ragged_layer(tokens: int, hidden: int, inter: int):
    """A layer's worth of random MXFP4 experts and routing, ragged on purpose: expert 5 gets
    nobody, expert 4 one token, expert 0 everybody. Returns (args of the kernels' launchers,
    the torch reference's output)."""
    gen = torch.Generator().manual_seed(tokens)
    E, k = 6, 2
    w1, w2 = random_mxfp4(E, 2 * inter, hidden, gen), random_mxfp4(E, hidden, inter, gen)
    b1, b2 = torch.randn(E, 2 * inter, generator=gen) * 0.1, torch.randn(E, hidden, generator=gen) * 0.1
    x = torch.randn(tokens, hidden, generator=gen)
    experts = torch.zeros(tokens, k, dtype=torch.long)
    experts[:, 1] = torch.randint(1, 4, (tokens,), generator=gen)
    experts[0, 1] = 4
    weights = torch.softmax(torch.randn(tokens, k, generator=gen), dim=-1)
    # the kernels round activations to bf16 (the inputs of the MMA); so does this reference
    want = mix_experts(x.bfloat16().float(), experts, weights, w1, b1, w2, b2)
    dev = KERNEL_DEVICE
    return (x.to(dev), experts.to(dev), weights.to(dev), w1.to(dev), b1.to(dev), w2.to(dev), b2.to(dev)), want


RAGGED_SHAPES = [(1, 64, 32), (8, 64, 64), (23, 96, 64), pytest.param(70, 64, 96, marks=pytest.mark.slow)]
# both tile layouts, whichever the size would pick; K in whole blocks, a part of one, or both
# (hidden 96 in blocks of 64)
LAYOUTS = (dict(one_per_tile=True), dict(one_per_tile=False), dict(one_per_tile=True, block_k=64))


@kernels_runnable
@pytest.mark.parametrize("tokens,hidden,inter", RAGGED_SHAPES)
def test_triton_kernels_match_the_reference_on_ragged_routing(tokens, hidden, inter):
    from oss_convert.runtime.kernels.triton_moe import moe_mxfp4_triton
    args, want = ragged_layer(tokens, hidden, inter)
    for cfg in LAYOUTS:
        got = moe_mxfp4_triton(*args, **cfg).cpu()
        rel = ((got - want).norm() / want.norm()).item()
        assert rel < 1e-2, (cfg, rel)
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0).item()
        assert cos > 0.9999, cfg


@kernels_runnable
def test_the_kernels_take_the_swiglu_settings():
    """limit and alpha reach the kernels' epilogue: a fine-tune's values against the reference."""
    from oss_convert.runtime.kernels.triton_moe import moe_mxfp4_triton
    args, _ = ragged_layer(8, 64, 64)
    x, experts, weights, w1, b1, w2, b2 = (a.to("cpu") for a in args)
    for limit, alpha in ((0.5, 1.702), (7.0, 0.8)):
        want = mix_experts(x.bfloat16().float(), experts, weights, w1, b1, w2, b2, limit, alpha)
        default = mix_experts(x.bfloat16().float(), experts, weights, w1, b1, w2, b2)
        got = moe_mxfp4_triton(*args, limit=limit, alpha=alpha).cpu()
        assert ((got - want).norm() / want.norm()).item() < 1e-2
        assert ((default - want).norm() / want.norm()).item() > 5e-2  # the settings matter here


@kernels_runnable
@pytest.mark.parametrize("source", ["safetensors", "gguf"])
def test_a_layer_loaded_from_an_artifact_runs_through_the_kernels(bundled, small_gguf, checkpoints, source):
    """From the file to the kernels: the layer as the runtime loads it (left in the file on the
    CPU, read in for the kernels), routed by its own router, against the torch path."""
    from oss_convert.runtime.execution.moe import run_moe
    path = checkpoints["small"] if source == "safetensors" else small_gguf
    layer = load_layer(path, 1)
    # bf16-exact inputs: the kernels round activations to bf16, the router sees the same x
    x = torch.randn(12, layer.router_w.shape[1], generator=torch.Generator().manual_seed(3)).bfloat16().float()
    want = run_moe(layer, x, backend="torch")
    on_device = layer.to(KERNEL_DEVICE)
    got = run_moe(on_device, x.to(KERNEL_DEVICE), backend="triton").cpu()
    assert ((got - want).norm() / want.norm()).item() < 1e-2


def expected_alignment(experts: torch.Tensor, n_experts: int, block_m: int):
    """align_by_expert spelled out: each expert's assignments in order, padded to whole tiles."""
    flat = experts.flatten().tolist()
    sorted_ids, tile_expert = [], []
    for expert in range(n_experts):
        run = [i for i, e in enumerate(flat) if e == expert]
        tiles = -(-len(run) // block_m)
        sorted_ids += run + [-1] * (tiles * block_m - len(run))
        tile_expert += [expert] * tiles
    n = len(flat)
    capacity = -(-min(n * block_m, n + n_experts * (block_m - 1)) // block_m) * block_m
    sorted_ids += [-1] * (capacity - len(sorted_ids))
    tile_expert += [-1] * (capacity // block_m - len(tile_expert))
    return sorted_ids, tile_expert


@kernels_runnable
@pytest.mark.parametrize("tokens,k,n_experts,block_m", [(1, 4, 32, 16), (23, 2, 6, 16), (200, 4, 128, 64),
                                                        (700, 4, 32, 16)])
def test_expert_alignment_is_a_stable_padded_sort(tokens, k, n_experts, block_m):
    from oss_convert.runtime.kernels.triton_moe import align_by_expert
    gen = torch.Generator().manual_seed(tokens)
    # skewed, so that some experts get nobody and runs cross the kernel's chunks of assignments
    experts = torch.stack([torch.randperm(n_experts, generator=gen)[:k] for _ in range(tokens)]) % (n_experts - 1)
    sorted_ids, tile_expert = align_by_expert(experts.to(KERNEL_DEVICE), n_experts, block_m)
    want_sorted, want_tiles = expected_alignment(experts, n_experts, block_m)
    assert sorted_ids.cpu().tolist() == want_sorted
    assert tile_expert.cpu().tolist() == want_tiles


@pytest.mark.parametrize("tokens,launches", [(1, ["gate_up", "down"]), (8, ["align", "gate_up", "down"])])
def test_a_moe_layer_is_its_kernels_and_one_sum(monkeypatch, tokens, launches):
    """What a layer costs in launches: the Triton kernels, then the sum over slots. Every other
    torch call is an allocation or a view (no device work, nothing for a CUDA graph to replay)."""
    from oss_convert.runtime.kernels import triton_moe
    launched, device_work = launches_of(triton_moe, triton_moe.moe_mxfp4_triton, monkeypatch, tokens)
    assert launched == launches
    assert device_work == ["sum"]


def launches_of(module, launcher, monkeypatch, tokens: int, **launch) -> tuple[list[str], list[str]]:
    """(the kernels `launcher` launches, in order; the torch calls that do device work) for one
    layer of `tokens` tokens, the kernels of `module` replaced by recorders."""
    from torch.utils._python_dispatch import TorchDispatchMode

    launched = []

    class Launch:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(self.name)

    for name in ("gate_up", "swiglu", "down", "align"):
        for owner in {module, sys.modules["oss_convert.runtime.kernels.triton_moe"]}:
            if hasattr(owner, f"_{name}_kernel"):
                monkeypatch.setattr(owner, f"_{name}_kernel", Launch(name))

    class TorchCalls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(0)
    w1, w2 = random_mxfp4(6, 64, 64, gen), random_mxfp4(6, 64, 32, gen)  # hidden 64, intermediate 32
    x = torch.randn(tokens, 64, generator=gen)
    b1, b2 = torch.zeros(6, 64), torch.zeros(6, 64)
    experts, weights = torch.randint(0, 6, (tokens, 4), generator=gen), torch.rand(tokens, 4, generator=gen)
    with TorchCalls() as calls:
        launcher(x, experts, weights, w1, b1, w2, b2, block_k=32, **launch)
    return launched, [c for c in calls.calls if c not in ("empty", "view", "_unsafe_view")]


def test_packed_mxfp4_expands_exactly():
    gen = torch.Generator().manual_seed(0)
    p = random_mxfp4(3, 8, 64, gen)
    blocks = p.data.numpy().reshape(3, 8, 2, 16)
    np.testing.assert_array_equal(p[1].numpy(), mxfp4.decode_hf(blocks, p.scales.numpy())[1])


GGUF_TYPES = [T.Q4_0, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.F16, T.BF16, T.F32]


@pytest.mark.parametrize("qtype", GGUF_TYPES, ids=lambda t: t.name)
def test_gguf_expert_loaders_agree_with_the_dequantizers(small_gguf, tmp_path, qtype):
    names = ["blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight"]

    def requant(raw):
        values = decode(raw, T.MXFP4)
        return np.ascontiguousarray(encode(values, qtype)).view(np.uint8).reshape(raw.shape[0], raw.shape[1], -1)
    edits = {n: requant for n in names}
    port = tmp_path / f"{qtype.name}.gguf"
    from oss_convert.files.gguf import GGUFWriteTensor, write_gguf
    src = read_gguf(small_gguf)
    def data(name, t):
        return (lambda: requant(np.array(t.raw()))) if name in edits else t.raw

    with open(port, "wb") as f:
        write_gguf(f, src.metadata, [GGUFWriteTensor(n, int(qtype) if n in edits else t.type, t.shape, data(n, t))
                                     for n, t in src.tensors.items()])
    layer = load_layer(port, 0)
    stored = read_gguf(port).tensors
    gate, up, down = (decode(np.array(stored[n].raw()), qtype).reshape(tuple(reversed(stored[n].shape)))
                      for n in names)
    for e in range(layer.gate_up.shape[0]):
        np.testing.assert_array_equal(layer.gate_up[e].numpy()[0::2], gate[e])
        np.testing.assert_array_equal(layer.gate_up[e].numpy()[1::2], up[e])
        np.testing.assert_array_equal(layer.down[e].numpy(), down[e])
    # and the values are the source's, to the format's precision
    original = load_layer(small_gguf, 0)
    err = (layer.gate_up[0] - original.gate_up[0]).abs().max().item()
    assert err < 0.05
    # what `to(device)` copies onto a GPU, expanded there by torch ops, is the same again
    from oss_convert.runtime.weights.expand import expand_in_torch
    for mapped in (layer.gate_up, layer.down, original.gate_up, original.down):
        resident = mapped.resident(torch.device("cpu"))
        assert resident.nbytes == mapped.nbytes or mapped.format == "F32"
        for e in range(mapped.shape[0]):
            want = mapped[e].numpy()
            np.testing.assert_array_equal(resident[e].numpy(), want)
            if mapped.format != "F32":
                np.testing.assert_array_equal(expand_in_torch(resident, e).numpy(), want)


def test_experts_in_a_type_the_runtime_cannot_run_are_refused_in_one_line(small_gguf, tmp_path):
    """Q8_K (ggml's intermediate type for K-quant dot products, never a weight type) has no
    dequantizer anywhere; every type a port can hold runs (tests/test_port_kinds.py)."""
    from oss_convert.files.gguf import GGUFWriteTensor, write_gguf
    src = read_gguf(small_gguf)
    q8_k = "blk.0.ffn_down_exps.weight"
    port = tmp_path / "q8_k.gguf"

    def zeros_q8_k(t):  # 292 bytes per 256 values
        return lambda: np.zeros((t.shape[2], t.shape[1], t.shape[0] // 256 * 292), np.uint8)
    with open(port, "wb") as f:
        write_gguf(f, src.metadata, [GGUFWriteTensor(n, int(T.Q8_K), t.shape, zeros_q8_k(t)) if n == q8_k else
                                     GGUFWriteTensor(n, t.type, t.shape, lambda t=t: t.raw())
                                     for n, t in src.tensors.items()])
    result = run_cli("compare", small_gguf, port, "--layers", "0", code=1)
    assert result.output.strip().splitlines() == [f"Error: {port}: {q8_k} is Q8_K, which has no dequantizer here"]


def test_ollama_layout_loads_the_same_layer(checkpoints, small_gguf, tmp_path):
    """The same packed experts from the safetensors, llama.cpp's GGUF layout and Ollama's."""
    port = gguf_edit.ollama_layout(checkpoints["small"], small_gguf, tmp_path / "o.gguf")
    a = load_layer(checkpoints["small"], 1)
    for other in (small_gguf, port):
        b = load_layer(other, 1)
        for experts_a, experts_b in ((a.gate_up, b.gate_up), (a.down, b.down)):
            for e in range(experts_a.shape[0]):
                (codes_a, scales_a), (codes_b, scales_b) = experts_a.packed(e), experts_b.packed(e)
                np.testing.assert_array_equal(codes_a, codes_b)
                np.testing.assert_array_equal(scales_a, scales_b)
        assert torch.equal(a.b1, b.b1) and torch.equal(a.router_w, b.router_w)


def compare_json(*args) -> dict:
    result = run_cli("compare", *args, "--json")
    return json.loads(result.stdout)


def test_safetensors_and_lossless_gguf_give_identical_outputs(bundled, tiny_gguf):
    gguf = tiny_gguf
    doc = compare_json(bundled, gguf, "--tokens", "40", "--device", "cpu")
    assert doc["summary"]["identical"]
    assert [r["layer"] for r in doc["layers"]] == [0, 1, 2, 3]
    for r in doc["layers"]:
        assert r["max_abs_diff"] == 0 and r["cosine"] == pytest.approx(1.0) and r["same_experts"]
    doc = compare_json(bundled / "original", gguf, "--layers", "1,3")
    assert doc["summary"]["identical"] and [r["layer"] for r in doc["layers"]] == [1, 3]


def test_requantized_port_shows_a_nonzero_difference(bundled, bundled_ports):
    q = bundled_ports["q4_k_m"]
    doc = compare_json(bundled, q, "--tokens", "32")
    assert not doc["summary"]["identical"]
    for r in doc["layers"]:
        assert 0 < r["rel_error"] < 0.2 and 0.98 < r["cosine"] < 1.0
        assert r["format_a"] == "MXFP4" and r["format_b"] == "Q5_0"


def test_a_triton_older_than_the_kernels_need_is_left_alone(bundled, monkeypatch):
    """Triton before 3.3 cannot compile the MXFP4 kernels (3.2's tl.dot_scaled refuses a bf16
    operand): CUDA layers then run through torch."""
    triton_moe = pytest.importorskip("oss_convert.runtime.kernels.triton_moe")
    from oss_convert.runtime.execution.moe import choose_backend
    layer = load_layer(bundled, 0)
    cuda = torch.device("cuda")  # only a name here: choosing runs nothing on it
    assert choose_backend(layer, cuda) == "triton"
    monkeypatch.setattr(triton_moe, "TRITON_VERSION", (3, 3))
    assert choose_backend(layer, cuda) == "triton"
    monkeypatch.setattr(triton_moe, "TRITON_VERSION", (3, 2))
    assert choose_backend(layer, cuda) == "torch"


def test_compare_rejects_bad_layers(bundled):
    assert "layers 0..3" in run_cli("compare", bundled, bundled, "--layers", "7", code=1).output


@pytest.mark.slow
def test_kernels_compile_for_hopper_without_spills():
    """The interpreter runs code that the compiler rejects (globals that are not constexpr, for
    one), so the kernels are also compiled for sm_90, as a launch on an H100 would. In both tile
    layouts the main loop must use the tensor cores (wgmma) and keep everything in registers; so
    must the two-warp decode tiles the GPU benchmark sweeps (mma.sync there); the helper kernels
    must compile unspilled."""
    check_compiled_for_hopper([([1, 64], {}, "HGMMA"), ([1, 8], {"num_warps": 2}, "HMMA"),
                               ([1, 8], {"num_warps": 2, "block_n": 32, "block_k": 256}, "HMMA")])


def _mapped_kb(path) -> int:
    """Kilobytes of `path`'s mappings resident in this process (/proc/self/smaps)."""
    total, ours = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's first line
            ours = len(fields) >= 6 and fields[5] == str(path)
        elif ours and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(sys.platform != "linux", reason="smaps and MADV_POPULATE_READ are Linux's")
def test_an_experts_pages_are_mapped_in_at_first_use_in_one_call(tmp_path):
    from oss_convert.files.stream import map_in
    path = tmp_path / "expert.bin"
    path.write_bytes(np.arange(64 * 4096, dtype=np.uint8).tobytes())
    mapped = np.memmap(path, dtype=np.uint8, mode="r", offset=4096, shape=(32 * 4096,))
    before = _mapped_kb(path)
    map_in([mapped[100:], None])
    release = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    if _mapped_kb(path) == before and release < (5, 14):
        pytest.skip("the kernel has no MADV_POPULATE_READ (Linux 5.14)")
    assert before == 0 and _mapped_kb(path) == 32 * 4  # every page of the array, its first one too
    assert np.array_equal(mapped, np.arange(64 * 4096, dtype=np.uint8)[4096:33 * 4096])


def _anonymous_kb() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:"))


@pytest.mark.skipif(sys.platform != "linux" or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc's allocator on Linux")
def test_freed_heap_blocks_go_back_to_the_kernel_between_layers():
    """Under the CLI's allocator setting, freed blocks below 128 MB stay in the heap behind any
    block still in use; the runtime gives their pages back after each layer."""
    from oss_convert.files.stream import release_freed_memory, reuse_freed_chunks
    reuse_freed_chunks()
    blocks, pins = [], []
    for _ in range(24):
        blocks.append(np.ones(1 << 20))  # 8 MB each, from the heap
        pins.append(np.ones(1 << 13))  # 64 KB after each (no free block that size before it), still in use
    start = _anonymous_kb()
    del blocks
    retained = _anonymous_kb()
    release_freed_memory()
    assert start - retained < 16 * 1024  # freed, but still resident
    assert retained - _anonymous_kb() > 160 * 1024  # most of the 192 MB given back
