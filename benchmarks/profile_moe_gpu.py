"""Where one MoE layer's time goes on a GPU (20b shape): expert alignment, gate_up and down kernels,
for a few launch configurations.

usage: python benchmarks/profile_moe_gpu.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_moe_gpu import H, I, graph_time, random_experts  # noqa: E402

from oss_convert.runtime import triton_moe as tm  # noqa: E402


def main() -> None:
    E, k = 32, 4
    torch.manual_seed(0)
    w1, w2 = random_experts(E, 2 * I, H), random_experts(E, H, I)
    b1, b2 = torch.zeros(E, 2 * I, device="cuda"), torch.zeros(E, H, device="cuda")
    for tokens in (1, 8, 64):
        x = torch.randn(tokens, H, device="cuda").bfloat16()
        experts = torch.stack([torch.randperm(E, device="cuda")[:k] for _ in range(tokens)])
        weights = torch.softmax(torch.randn(tokens, k, device="cuda"), dim=-1)
        bm = 16
        sorted_ids, tile_expert = tm.align_by_expert(experts, E, bm)
        act = torch.empty((sorted_ids.numel(), I), dtype=torch.bfloat16, device="cuda")
        y = torch.zeros((tokens * k, H), dtype=torch.float32, device="cuda")
        rw = weights.reshape(-1).float().contiguous()
        touched = experts.unique().numel()
        for bn, bk, nw, ns in ((32, 256, 4, 4), (64, 128, 4, 3), (64, 256, 4, 3), (128, 128, 4, 3), (128, 256, 8, 3), (32, 512, 4, 3)):
            def gate_up():
                tm._gate_up_kernel[(tile_expert.numel(), triton.cdiv(2 * I, bn))](
                    x, w1.data, w1.scales, b1, act, tile_expert, sorted_ids, H, 2 * I, k, x.stride(0),
                    w1.data.stride(0), w1.data.stride(1), w1.scales.stride(0), w1.scales.stride(1), b1.stride(0),
                    act.stride(0), 7.0, 1.702, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, ONE_PER_TILE=False,
                    num_warps=nw, num_stages=ns)

            def down():
                tm._down_kernel[(tile_expert.numel(), triton.cdiv(H, bn))](
                    act, w2.data, w2.scales, b2, rw, y, tile_expert, sorted_ids, I, H, act.stride(0),
                    w2.data.stride(0), w2.data.stride(1), w2.scales.stride(0), w2.scales.stride(1), b2.stride(0),
                    y.stride(0), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, ONE_PER_TILE=False, num_warps=nw, num_stages=ns)
            t1, t2 = graph_time(gate_up), graph_time(down)
            gb1 = touched * w1.nbytes / E / t1 / 1e9
            gb2 = touched * w2.nbytes / E / t2 / 1e9
            print(f"T={tokens} bn={bn} bk={bk} warps={nw} stages={ns}: gate_up {t1 * 1e6:.1f} us ({gb1:.0f} GB/s), "
                  f"down {t2 * 1e6:.1f} us ({gb2:.0f} GB/s)", flush=True)
        t_align = graph_time(lambda: tm.align_by_expert(experts, E, bm))
        print(f"T={tokens} align_by_expert {t_align * 1e6:.1f} us", flush=True)


if __name__ == "__main__":
    main()
