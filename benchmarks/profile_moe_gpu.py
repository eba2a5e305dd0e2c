"""Where one MoE layer's time goes on a GPU (20b shape): each kernel's own time, from the CUDA
profiler, for a few launch configurations (tile layout, split-K, tile sizes).

usage: python benchmarks/profile_moe_gpu.py [--tokens 1 8 64]

The layer runs through moe_mxfp4_triton as the model runs it; torch.profiler attributes the
device time to the kernels (the expert sort, gate_up, split-K's SwiGLU pass, down, the final
sum). GB/s is the kernel's share of the expert bytes the layer touches over its time.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_moe_gpu import TOP_K, H, I, both_layouts, random_experts, run_layer  # noqa: E402

CONFIGS = [dict(), dict(split_k=2), dict(split_k=4), dict(one_per_tile=False), dict(block_n=32, block_k=256),
           dict(block_n=128, block_k=128, num_stages=3), dict(num_warps=2),
           dict(words=True), dict(words=True, num_warps=2), dict(words=True, num_warps=2, num_stages=3),
           dict(words=True, num_warps=2, num_stages=3, one_per_tile=True, fuse_sum=True)]
REPEATS = 20


def kernel_times(fn) -> dict[str, float]:
    """Mean device seconds per call of each kernel `fn` launches."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPEATS):
            fn()
        torch.cuda.synchronize()
    totals = collections.defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name] += event.device_time_total * 1e-6 / REPEATS
    return dict(totals)


def short_name(kernel: str) -> str:
    for name in ("align", "gate_up", "swiglu", "down"):
        if f"_{name}_kernel" in kernel:
            return name
    return "sum" if "reduce" in kernel.lower() else kernel[:24]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 8, 64])
    args = p.parse_args()
    E = 32
    torch.manual_seed(0)
    w1, w2 = random_experts(E, 2 * I, H), random_experts(E, H, I)
    layouts = both_layouts(w1, w2)
    b1, b2 = torch.zeros(E, 2 * I, device="cuda"), torch.zeros(E, H, device="cuda")
    shares = {"gate_up": w1.nbytes / E, "down": w2.nbytes / E}
    for tokens in args.tokens:
        x = torch.randn(tokens, H, device="cuda").bfloat16()
        experts = torch.stack([torch.randperm(E, device="cuda")[:TOP_K] for _ in range(tokens)])
        weights = torch.softmax(torch.randn(tokens, TOP_K, device="cuda"), dim=-1)
        touched = experts.unique().numel()
        for cfg in CONFIGS:
            times = kernel_times(lambda: run_layer(x, experts, weights, layouts, b1, b2, cfg))
            parts = []
            for kernel, t in sorted(times.items(), key=lambda kv: -kv[1]):
                name = short_name(kernel)
                rate = f" {touched * shares[name] / t / 1e9:.0f} GB/s" if name in shares else ""
                parts.append(f"{name} {t * 1e6:.1f} us{rate}")
            print(f"T={tokens} {cfg or 'default'}: total {sum(times.values()) * 1e6:.1f} us = " + ", ".join(parts),
                  flush=True)


if __name__ == "__main__":
    main()
