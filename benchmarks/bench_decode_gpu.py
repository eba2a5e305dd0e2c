"""Decode speed of the whole model on a CUDA GPU (batch 1), against the memory-bandwidth
ceiling (weight bytes read per token / HBM bandwidth).

usage: python benchmarks/bench_decode_gpu.py [--preset 20b] [--tokens 64]

The checkpoint is written sparse (headers real, data zero): the work per token does not
depend on the values, and nothing needs to be generated or carried to the GPU machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_moe_gpu import peak_bandwidth  # noqa: E402

from fixtures.checkpoints import write_checkpoint  # noqa: E402
from oss_convert.checkpoint import open_checkpoint  # noqa: E402
from oss_convert.runtime.execution.forward import forward, load_model  # noqa: E402
from oss_convert.runtime.model.cache import KVCache  # noqa: E402


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def matrix_bytes(m) -> int:
    """A weight matrix's bytes on the GPU (float32 values there)."""
    return tensor_bytes(m.values)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="20b")
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    name, peak = peak_bandwidth()
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(d, args.preset, shards=3, sparse=True)
        t0 = time.perf_counter()
        model = load_model(open_checkpoint(d), torch.device("cuda"))
        load_s = time.perf_counter() - t0
    cfg = model.config
    first = model.blocks[0].moe
    per_expert = (first.gate_up.nbytes + first.down.nbytes) / cfg.num_experts
    dense = sum(matrix_bytes(m) + tensor_bytes(bias) for b in model.blocks
                for m, bias in ((b.attention.q, b.attention.q_bias), (b.attention.k, b.attention.k_bias),
                                (b.attention.v, b.attention.v_bias), (b.attention.o, b.attention.o_bias)))
    dense += sum(tensor_bytes(t) for b in model.blocks for t in (b.attention.norm, b.attention.sinks))
    dense += sum(tensor_bytes(t) for b in model.blocks for t in (b.moe.router_w, b.moe.router_b, b.moe.b1, b.moe.b2,
                                                                 b.moe.norm))
    lm_head = matrix_bytes(model.unembedding)
    per_token = dense + lm_head + cfg.num_layers * cfg.experts_per_token * per_expert
    with torch.no_grad():
        cache = KVCache()
        logits = forward(model, torch.arange(16, device="cuda"), cache)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.tokens):
            logits = forward(model, logits[-1:].argmax(-1), cache)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.tokens
        with profile(activities=[ProfilerActivity.CUDA]) as prof:  # what one step launches
            forward(model, logits[-1:].argmax(-1), cache)
            torch.cuda.synchronize()
        launches = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"device {name}; {args.preset} shape; model loaded in {load_s:.1f} s")
    experts = cfg.num_layers * cfg.experts_per_token * per_expert
    print(f"weights read per token: {per_token / 1e9:.2f} GB (experts {experts / 1e9:.2f} GB MXFP4, "
          f"dense {dense / 1e9:.2f} GB + lm_head {lm_head / 1e9:.2f} GB as float32)")
    print(f"decode: {1 / dt:.1f} tokens/s ({dt * 1e3:.2f} ms/token); bandwidth ceiling "
          f"{peak / per_token:.0f} tokens/s; {100 * per_token / dt / peak:.1f}% of HBM bandwidth")
    print(f"device work per token: {launches} kernels and copies ({launches / cfg.num_layers:.0f} per layer)")


if __name__ == "__main__":
    main()
