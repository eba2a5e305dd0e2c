"""Grouped MoE GEMMs over MXFP4 experts in Triton: the kernels the runtime uses on CUDA.

Assignments (token, slot) are sorted by expert and each expert's run padded to BLOCK_M,
so every tile of BLOCK_M rows belongs to one expert; the sort is one small kernel of its
own (a stable counting sort in a single program). Then two kernels:

1. gate_up: act = SwiGLU(x W1[e]^T + b1[e]), W1's MXFP4 codes and scales fed to
   tl.dot_scaled (upcast to bf16 in registers on Hopper), fp32 accumulation, the bias and
   the clamped SwiGLU fused into the epilogue (gate and up are adjacent output columns).
2. down: y = weight * (act W2[e]^T + b2[e]), the routing weight fused into the epilogue,
   each assignment writing its own row, summed over the k slots afterwards (deterministic,
   no atomics).

For decode (few assignments) each assignment gets a tile of its own instead of a sort by
expert, found from the router's expert ids inside the kernels, so a decode step launches the
two kernels and the sum over slots, nothing else.

Packed codes hold element 2j in the low nibble and 2j+1 in the high one: the HF layout, and
the one tl.dot_scaled reads. Variants that no default path uses (other expert layouts,
split-K, a fused sum) live in kernels/variants/ until a GPU measurement promotes them.
"""

from __future__ import annotations

import re

import torch
import triton
import triton.language as tl

from ...checkpoint.config import DEFAULT_SWIGLU_ALPHA as SWIGLU_ALPHA
from ...checkpoint.config import DEFAULT_SWIGLU_LIMIT as SWIGLU_LIMIT

TRITON_VERSION = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
ALIGN_WARPS = 8  # the sort is one program: two warps per scheduler hide some latency
DECODE_ASSIGNMENTS = 16  # up to this many (token, slot) pairs, skip the sort by expert


@triton.jit
def _mxfp4_matmul_tile(a_ptr, a_rows, a_mask, stride_a, k_start, k_end,
                       w_ptr, s_ptr, e, offs_n, n_mask, stride_we, stride_wn, stride_se, stride_sn,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc[BLOCK_M, BLOCK_N] = A[a_rows, k_start:k_end] . W[e, offs_n, k_start:k_end]^T, W packed MXFP4.

    tl.dot_scaled takes the packed E2M1 codes (K-major, two per byte, low nibble first: the
    HF layout) and the E8M0 scales as they are; on Hopper Triton upcasts them to bf16 in
    registers, on Blackwell it can use FP4 tensor cores."""
    HALF: tl.constexpr = BLOCK_K // 2
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    offs_j = tl.arange(0, HALF)
    offs_g = tl.arange(0, BLOCK_K // 32)
    for k0 in range(k_start, k_end, BLOCK_K):  # k_start and k_end are multiples of 32
        kk = k0 + offs_k
        a = tl.load(a_ptr + a_rows[:, None] * stride_a + kk[None, :], mask=a_mask[:, None] & (kk < k_end)[None, :],
                    other=0.0).to(tl.bfloat16)
        kj = k0 // 2 + offs_j
        packed = tl.load(w_ptr + e * stride_we + offs_n[None, :] * stride_wn + kj[:, None],
                         mask=n_mask[None, :] & (kj < k_end // 2)[:, None], other=0)  # [HALF, BLOCK_N]
        kg = k0 // 32 + offs_g
        scale = tl.load(s_ptr + e * stride_se + offs_n[:, None] * stride_sn + kg[None, :],
                        mask=n_mask[:, None] & (kg < k_end // 32)[None, :], other=127)  # [BLOCK_N, BLOCK_K // 32]
        acc = tl.dot_scaled(a, None, "bf16", packed, scale, "e2m1", acc)
    return acc


@triton.jit
def _tile(pid_m, tile_expert_ptr, sorted_ptr, ONE_PER_TILE: tl.constexpr, BLOCK_M: tl.constexpr):
    """(expert, rows of act, assignment per row, valid rows) of tile pid_m.

    Sorted layout: tile_expert and the padded sorted order say it all; act rows are positions in
    that order. ONE_PER_TILE (decode): tile_expert_ptr is the router's expert ids themselves,
    tile t holds assignment t in its first row, and act row t belongs to assignment t."""
    r = tl.arange(0, BLOCK_M)
    if ONE_PER_TILE:
        e = tl.load(tile_expert_ptr + pid_m).to(tl.int32)
        assignment = tl.where(r == 0, pid_m, -1)
        rows = tl.where(r == 0, pid_m, 0)
    else:
        e = tl.load(tile_expert_ptr + pid_m)
        rows = pid_m * BLOCK_M + r
        assignment = tl.load(sorted_ptr + rows)
    return e, rows, assignment, assignment >= 0


@triton.jit
def _bias_swiglu_store(acc, b_ptr, e, stride_be, offs_n, n_mask, act_ptr, rows, valid, stride_act, N, limit, alpha,
                       pid_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """act[rows, this block's half of the columns] = SwiGLU(acc + b1[e]), gate and up interleaved in acc."""
    acc += tl.load(b_ptr + e * stride_be + offs_n, mask=n_mask, other=0.0)[None, :]
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
    gate = tl.minimum(gate, limit)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    act = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
    offs_i = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    tl.store(act_ptr + rows[:, None] * stride_act + offs_i[None, :], act.to(tl.bfloat16),
             mask=valid[:, None] & (offs_i < N // 2)[None, :])


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, s_ptr, b_ptr, act_ptr, tile_expert_ptr, sorted_ptr,
                    K, N, top_k, stride_x, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_act,
                    limit, alpha,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ONE_PER_TILE: tl.constexpr):
    """act = SwiGLU(x W1^T + b1) for one tile of assignments and one block of columns."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    e, rows, assignment, valid = _tile(pid_m, tile_expert_ptr, sorted_ptr, ONE_PER_TILE, BLOCK_M)
    if e < 0:  # a spare tile of the fixed-size grid
        return
    tokens = tl.where(valid, assignment // top_k, 0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = _mxfp4_matmul_tile(x_ptr, tokens, valid, stride_x, 0, K, w_ptr, s_ptr, e, offs_n, n_mask,
                             stride_we, stride_wn, stride_se, stride_sn, BLOCK_M, BLOCK_N, BLOCK_K)
    _bias_swiglu_store(acc, b_ptr, e, stride_be, offs_n, n_mask, act_ptr, rows, valid, stride_act, N,
                       limit, alpha, pid_n, BLOCK_M, BLOCK_N)


@triton.jit
def _down_kernel(act_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr, tile_expert_ptr, sorted_ptr,
                 K, N, stride_act, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_y,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ONE_PER_TILE: tl.constexpr):
    """y[assignment] = weight * (act W2^T + b2) for one tile of assignments and one block of columns."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    e, rows, assignment, valid = _tile(pid_m, tile_expert_ptr, sorted_ptr, ONE_PER_TILE, BLOCK_M)
    if e < 0:
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = _mxfp4_matmul_tile(act_ptr, rows, valid, stride_act, 0, K, w_ptr, s_ptr, e, offs_n, n_mask,
                             stride_we, stride_wn, stride_se, stride_sn, BLOCK_M, BLOCK_N, BLOCK_K)
    acc += tl.load(b_ptr + e * stride_be + offs_n, mask=n_mask, other=0.0)[None, :]
    safe = tl.where(valid, assignment, 0)
    acc = acc * tl.load(route_w_ptr + safe, mask=valid, other=0.0)[:, None]
    tl.store(y_ptr + safe[:, None] * stride_y + offs_n[None, :], acc, mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _align_kernel(experts_ptr, sorted_ptr, tile_expert_ptr, n, n_experts, capacity,
                  BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, CHUNK: tl.constexpr):
    """align_by_expert in one program: a stable counting sort over one-hot [CHUNK, E] blocks."""
    offs_e = tl.arange(0, E_POW2)
    offs_c = tl.arange(0, CHUNK)
    counts = tl.zeros((E_POW2,), dtype=tl.int32)
    for c0 in range(0, n, CHUNK):
        i = c0 + offs_c
        e = tl.load(experts_ptr + i, mask=i < n, other=-1)
        counts += tl.sum((e[:, None] == offs_e[None, :]).to(tl.int32), axis=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    # each assignment to its expert's run, in assignment order within the run
    seen = tl.zeros((E_POW2,), dtype=tl.int32)
    for c0 in range(0, n, CHUNK):
        i = c0 + offs_c
        e = tl.load(experts_ptr + i, mask=i < n, other=-1)
        onehot = (e[:, None] == offs_e[None, :]).to(tl.int32)
        earlier = tl.cumsum(onehot, axis=0) - onehot  # same expert, earlier in this chunk
        place = tl.sum(onehot * ((starts + seen)[None, :] + earlier), axis=1)
        tl.store(sorted_ptr + place, i.to(tl.int32), mask=i < n)
        seen += tl.sum(onehot, axis=0)
    # the padding at the end of each run (disjoint from the places above), and each tile's expert
    for p0 in range(0, capacity, CHUNK):
        p = p0 + offs_c
        owner = tl.sum((ends[None, :] <= p[:, None]).to(tl.int32), axis=1)  # the run holding p; E_POW2: none
        run_end = tl.sum(tl.where(owner[:, None] == offs_e[None, :], (starts + counts)[None, :], 0), axis=1)
        inside = p < capacity
        tl.store(sorted_ptr + p, tl.full((CHUNK,), -1, tl.int32),
                 mask=inside & ((owner >= n_experts) | (p >= run_end)))
        tl.store(tile_expert_ptr + p // BLOCK_M, tl.where(owner < n_experts, owner, -1).to(tl.int32),
                 mask=inside & (p % BLOCK_M == 0))


def align_by_expert(experts: torch.Tensor, n_experts: int, block_m: int):
    """Sorted, padded assignment order, computed on the device without a host sync.

    Returns (assignment id per padded position, -1 for padding; expert per tile of block_m
    positions, -1 for spare tiles). Assignments keep their order within an expert's run. The
    grid is sized from an upper bound, so the whole layer can be captured in a CUDA graph,
    and the sort is one kernel launch (in torch it took some 25 small ones)."""
    flat = experts.reshape(-1).contiguous()
    n = flat.numel()
    capacity = min(n * block_m, n + n_experts * (block_m - 1))
    capacity = (capacity + block_m - 1) // block_m * block_m
    sorted_ids = torch.empty((capacity,), dtype=torch.int32, device=flat.device)
    tile_expert = torch.empty((capacity // block_m,), dtype=torch.int32, device=flat.device)
    e_pow2 = triton.next_power_of_2(n_experts)
    _align_kernel[(1,)](flat, sorted_ids, tile_expert, n, n_experts, capacity,
                        BLOCK_M=block_m, E_POW2=e_pow2, CHUNK=max(16, min(256, 16384 // e_pow2)),
                        num_warps=ALIGN_WARPS)
    return sorted_ids, tile_expert


def block_m_for(assignments: int, n_experts: int) -> int:
    """Rows per tile: small for decode (few tokens per expert), larger for prefill."""
    return 16 if assignments <= 32 * n_experts else 64


def tiles_for(experts: torch.Tensor, n_experts: int, block_m: int, one_per_tile: bool):
    """(sorted assignment ids, expert per tile, rows of act) of the layout the kernels read."""
    if one_per_tile:  # the kernels read the router's expert ids directly: no device work before them
        tile_expert = experts.reshape(-1).contiguous()
        return tile_expert, tile_expert, tile_expert.numel()
    sorted_ids, tile_expert = align_by_expert(experts, n_experts, block_m)
    return sorted_ids, tile_expert, sorted_ids.numel()


def moe_mxfp4_triton(x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor, gate_up, b1: torch.Tensor,
                     down, b2: torch.Tensor, block_n: int = 64, block_k: int = 128, num_warps: int = 4,
                     num_stages: int = 4, block_m: int | None = None, one_per_tile: bool | None = None,
                     limit: float = SWIGLU_LIMIT, alpha: float = SWIGLU_ALPHA) -> torch.Tensor:
    """x [T, H]; experts/weights [T, k] from the router; gate_up and down as PackedExperts
    (MXFP4 codes and scales); limit and alpha: the SwiGLU's clamp and slope. Returns [T, H]
    float32. one_per_tile picks the tile layout (None: by DECODE_ASSIGNMENTS); the launch
    parameters are the benchmark's to sweep."""
    T_, H = x.shape
    top_k = experts.shape[1]
    E, N1, K1 = gate_up.shape
    _, N2, K2 = down.shape
    if one_per_tile is None:
        one_per_tile = experts.numel() <= DECODE_ASSIGNMENTS
    block_m = block_m or block_m_for(T_ * top_k, E)
    sorted_ids, tile_expert, act_rows = tiles_for(experts, E, block_m, one_per_tile)
    tiles = tile_expert.numel()
    x = x.contiguous()
    act = torch.empty((act_rows, N1 // 2), dtype=torch.bfloat16, device=x.device)
    _gate_up_kernel[(tiles, triton.cdiv(N1, block_n))](
        x, gate_up.data, gate_up.scales, b1, act, tile_expert, sorted_ids,
        K1, N1, top_k, x.stride(0), gate_up.data.stride(0), gate_up.data.stride(1),
        gate_up.scales.stride(0), gate_up.scales.stride(1), b1.stride(0), act.stride(0), limit, alpha,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, ONE_PER_TILE=one_per_tile,
        num_warps=num_warps, num_stages=num_stages)
    # every assignment's row is written whole by exactly one tile, so no zero fill
    y = torch.empty((T_ * top_k, N2), dtype=torch.float32, device=x.device)
    route_w = weights.reshape(-1).float().contiguous()
    _down_kernel[(tiles, triton.cdiv(N2, block_n))](
        act, down.data, down.scales, b2, route_w, y, tile_expert, sorted_ids,
        K2, N2, act.stride(0), down.data.stride(0), down.data.stride(1),
        down.scales.stride(0), down.scales.stride(1), b2.stride(0), y.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, ONE_PER_TILE=one_per_tile,
        num_warps=num_warps, num_stages=num_stages)
    return y.view(T_, top_k, N2).sum(dim=1)
