"""The MoE kernels of kernels/triton_moe.py with the variants no default path uses yet:

- the words layout (Mxfp4Words, mxfp4_words.py): the experts re-laid so that a tile decodes
  them to bf16 by bit operations and feeds tl.dot, fewer instructions a byte than
  tl.dot_scaled's upcast (static counts: benchmarks/kernel_stats.py);
- split-K (split_k > 1): each GEMM's K over more programs, for decode, where there are too
  few tiles to keep the GPU busy; gate_up's partial sums go through one more small kernel for
  the bias and SwiGLU, down's into the final sum; still no atomics;
- fuse_sum (one tile per assignment only): the sum over slots joins the down kernel: the last
  program to finish a token's columns adds up the token's partial rows (in a fixed order, so
  every run gives the same sums), counted by one atomic per program on counters that gate_up
  zeroes.

Each is tested against the default kernels under the interpreter; none has been timed on a
GPU. benchmarks/bench_moe_gpu.py measures them beside the default: promote what wins into
kernels/triton_moe.py, delete what does not.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ....checkpoint.config import DEFAULT_SWIGLU_ALPHA as SWIGLU_ALPHA
from ....checkpoint.config import DEFAULT_SWIGLU_LIMIT as SWIGLU_LIMIT
from ..triton_moe import (
    DECODE_ASSIGNMENTS,
    TRITON_VERSION,
    _bias_swiglu_store,
    _mxfp4_matmul_tile,
    _tile,
    block_m_for,
    tiles_for,
)
from .mxfp4_words import Mxfp4Words, decode_words

NARROW_DOT_SINCE = (3, 5)  # tl.dot takes an operand 8 wide from this Triton on (before: 16 at least)


@triton.jit
def _words_step(acc, a_ptr, a_rows, a_mask, stride_a, k0, k_end, w_rows, s_rows,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TAIL: tl.constexpr,
                WIDE_SCALES: tl.constexpr, INTERPRETED: tl.constexpr):
    """acc + W[:, k0:k0 + BLOCK_K] . A[a_rows, k0:k0 + BLOCK_K]^T, W in words from the row
    pointers w_rows (words) and s_rows (scales). Only the TAIL step, which may pass k_end,
    masks K: the others run on whole blocks, with no mask to compute (about a sixth of a
    step's instructions)."""
    kk = k0 + tl.arange(0, BLOCK_K)
    kw = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    kg = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    if TAIL:
        a = tl.load(a_ptr + a_rows[:, None] * stride_a + kk[None, :], mask=a_mask[:, None] & (kk < k_end)[None, :],
                    other=0.0)
        words = tl.load(w_rows[:, None] + kw[None, :], mask=(kw < k_end // 8)[None, :], other=0)
        scale = tl.load(s_rows[:, None] + kg[None, :], mask=(kg < k_end // 32)[None, :], other=0)
    else:
        a = tl.load(a_ptr + a_rows[:, None] * stride_a + kk[None, :], mask=a_mask[:, None], other=0.0)
        words = tl.load(w_rows[:, None] + kw[None, :])
        scale = tl.load(s_rows[:, None] + kg[None, :])
    words = tl.reshape(words.to(tl.uint32, bitcast=True), (BLOCK_N, BLOCK_K // 32, 4))
    w = tl.reshape(decode_words(words, scale.to(tl.uint32)[:, :, None], WIDE_SCALES, INTERPRETED),
                   (BLOCK_N, BLOCK_K))
    a = a.to(tl.bfloat16)  # the MMA's input precision, as in the codes tile
    if INTERPRETED:  # float32 weights there (decode_words says why): the same products
        a = a.to(tl.float32)
    return tl.dot(w, tl.trans(a), acc)


@triton.jit
def _mxfp4_words_tile(a_ptr, a_rows, a_mask, stride_a, k_start, k_end,
                      w_ptr, s_ptr, e, offs_n, n_mask, stride_we, stride_wn, stride_se, stride_sn,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      WIDE_SCALES: tl.constexpr, INTERPRETED: tl.constexpr):
    """_mxfp4_matmul_tile over W in the words layout (mxfp4_words): the codes decoded to bf16 by
    bit operations, then tl.dot. The weights are the MMA's first operand (W A^T, transposed on
    return): an MMA tile is 16 rows by as few as 8 columns, so a decode tile of 8 rows of A
    wastes less, and the decoded words land in the operand registers without a shuffle.
    Columns past N read row 0 instead of being masked; their sums are never stored."""
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    rows = tl.where(n_mask, offs_n, 0)
    # K / 8 words a row, K a multiple of 32: rows start on 16 bytes, so the loads vectorize
    w_rows = w_ptr + e * stride_we + tl.multiple_of(rows * stride_wn, 4)
    s_rows = s_ptr + e * stride_se + rows * stride_sn
    k_whole = k_start + (k_end - k_start) // BLOCK_K * BLOCK_K
    for k0 in range(k_start, k_whole, BLOCK_K):
        acc = _words_step(acc, a_ptr, a_rows, a_mask, stride_a, k0, k_end, w_rows, s_rows,
                          BLOCK_N, BLOCK_K, False, WIDE_SCALES, INTERPRETED)
    if k_whole < k_end:
        acc = _words_step(acc, a_ptr, a_rows, a_mask, stride_a, k_whole, k_end, w_rows, s_rows,
                          BLOCK_N, BLOCK_K, True, WIDE_SCALES, INTERPRETED)
    return tl.trans(acc)


@triton.jit
def _expert_gemm(a_ptr, a_rows, a_mask, stride_a, k_start, k_end,
                 w_ptr, s_ptr, e, offs_n, n_mask, stride_we, stride_wn, stride_se, stride_sn,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 WORDS: tl.constexpr, WIDE_SCALES: tl.constexpr, INTERPRETED: tl.constexpr):
    if WORDS:
        acc = _mxfp4_words_tile(a_ptr, a_rows, a_mask, stride_a, k_start, k_end, w_ptr, s_ptr, e, offs_n, n_mask,
                                stride_we, stride_wn, stride_se, stride_sn, BLOCK_M, BLOCK_N, BLOCK_K,
                                WIDE_SCALES, INTERPRETED)
    else:
        acc = _mxfp4_matmul_tile(a_ptr, a_rows, a_mask, stride_a, k_start, k_end, w_ptr, s_ptr, e, offs_n, n_mask,
                                 stride_we, stride_wn, stride_se, stride_sn, BLOCK_M, BLOCK_N, BLOCK_K)
    return acc


@triton.jit
def _k_range(split, K, SPLITS: tl.constexpr, K_SPLIT: tl.constexpr):
    """Split `split`'s share of 0..K: K_SPLIT values (a multiple of BLOCK_K), the last share shorter.
    Unsplit, the bound stays K itself, whose divisibility the compiler knows (vector loads)."""
    if SPLITS == 1:
        return 0, K
    k_start = split * K_SPLIT
    return k_start, tl.minimum(k_start + K_SPLIT, K)


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, s_ptr, b_ptr, act_ptr, h_ptr, tile_expert_ptr, sorted_ptr, count_ptr,
                    K, N, top_k, stride_x, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_act,
                    stride_hs, stride_h, counts_per_token, limit, alpha,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    ONE_PER_TILE: tl.constexpr, SPLITS: tl.constexpr, K_SPLIT: tl.constexpr,
                    WORDS: tl.constexpr, WIDE_SCALES: tl.constexpr, INTERPRETED: tl.constexpr,
                    FUSE_SUM: tl.constexpr, COUNTS_POW2: tl.constexpr):
    """SPLITS == 1: act = SwiGLU(x W1^T + b1). Otherwise each split stores its partial x W1^T
    in h[split], and _swiglu_kernel finishes. FUSE_SUM: also zero the down kernel's arrival
    counters, one program per token (down starts only after this kernel has ended)."""
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if FUSE_SUM:
        if (pid_n == 0) & (split == 0) & (pid_m % top_k == 0):
            c = tl.arange(0, COUNTS_POW2)
            tl.store(count_ptr + pid_m // top_k * counts_per_token + c, tl.zeros((COUNTS_POW2,), tl.int32),
                     mask=c < counts_per_token)
    e, rows, assignment, valid = _tile(pid_m, tile_expert_ptr, sorted_ptr, ONE_PER_TILE, BLOCK_M)
    if e < 0:  # a spare tile of the fixed-size grid
        return
    tokens = tl.where(valid, assignment // top_k, 0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    k_start, k_end = _k_range(split, K, SPLITS, K_SPLIT)
    acc = _expert_gemm(x_ptr, tokens, valid, stride_x, k_start, k_end, w_ptr, s_ptr, e, offs_n, n_mask,
                       stride_we, stride_wn, stride_se, stride_sn, BLOCK_M, BLOCK_N, BLOCK_K,
                       WORDS, WIDE_SCALES, INTERPRETED)
    if SPLITS == 1:
        _bias_swiglu_store(acc, b_ptr, e, stride_be, offs_n, n_mask, act_ptr, rows, valid, stride_act, N,
                           limit, alpha, pid_n, BLOCK_M, BLOCK_N)
    else:
        tl.store(h_ptr + split * stride_hs + rows[:, None] * stride_h + offs_n[None, :], acc,
                 mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _swiglu_kernel(h_ptr, b_ptr, act_ptr, tile_expert_ptr, sorted_ptr, N, stride_hs, stride_h, stride_be,
                   stride_act, limit, alpha,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ONE_PER_TILE: tl.constexpr, SPLITS: tl.constexpr):
    """act = SwiGLU(sum of the split partials in h + b1), for split-K gate_up."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    e, rows, assignment, valid = _tile(pid_m, tile_expert_ptr, sorted_ptr, ONE_PER_TILE, BLOCK_M)
    if e < 0:
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for split in tl.static_range(SPLITS):  # in split order: the same sum every run
        acc += tl.load(h_ptr + split * stride_hs + rows[:, None] * stride_h + offs_n[None, :],
                       mask=valid[:, None] & n_mask[None, :], other=0.0)
    _bias_swiglu_store(acc, b_ptr, e, stride_be, offs_n, n_mask, act_ptr, rows, valid, stride_act, N,
                       limit, alpha, pid_n, BLOCK_M, BLOCK_N)


@triton.jit
def _down_kernel(act_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr, tile_expert_ptr, sorted_ptr, count_ptr, out_ptr,
                 K, N, top_k, stride_act, stride_we, stride_wn, stride_se, stride_sn, stride_be, stride_ys, stride_y,
                 stride_out,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 ONE_PER_TILE: tl.constexpr, SPLITS: tl.constexpr, K_SPLIT: tl.constexpr,
                 WORDS: tl.constexpr, WIDE_SCALES: tl.constexpr, INTERPRETED: tl.constexpr,
                 FUSE_SUM: tl.constexpr):
    """y[split, assignment] = weight * (act W2^T + b2) over split's share of K (b2 in split 0 only).
    FUSE_SUM (one assignment a tile): the last of a token's programs for these columns also
    writes out[token] = the sum of its partial rows."""
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    e, rows, assignment, valid = _tile(pid_m, tile_expert_ptr, sorted_ptr, ONE_PER_TILE, BLOCK_M)
    if e < 0:
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    k_start, k_end = _k_range(split, K, SPLITS, K_SPLIT)
    acc = _expert_gemm(act_ptr, rows, valid, stride_act, k_start, k_end, w_ptr, s_ptr, e, offs_n, n_mask,
                       stride_we, stride_wn, stride_se, stride_sn, BLOCK_M, BLOCK_N, BLOCK_K,
                       WORDS, WIDE_SCALES, INTERPRETED)
    if split == 0:
        acc += tl.load(b_ptr + e * stride_be + offs_n, mask=n_mask, other=0.0)[None, :]
    weight = tl.load(route_w_ptr + tl.where(valid, assignment, 0), mask=valid, other=0.0)
    acc = acc * weight[:, None]
    safe = tl.where(valid, assignment, 0)
    tl.store(y_ptr + split * stride_ys + safe[:, None] * stride_y + offs_n[None, :], acc,
             mask=valid[:, None] & n_mask[None, :])
    if FUSE_SUM:
        _sum_when_last(y_ptr, out_ptr, count_ptr, pid_m // top_k, pid_n, offs_n, n_mask, top_k,
                       stride_ys, stride_y, stride_out, SPLITS, BLOCK_N)


@triton.jit
def _sum_when_last(y_ptr, out_ptr, count_ptr, token, pid_n, offs_n, n_mask, top_k, stride_ys, stride_y, stride_out,
                   SPLITS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Count this program's partial row of `token` in; the last of its top_k x SPLITS programs
    sums them all into out[token]. The barrier puts every thread's stores before the count
    (the atomic releases them at GPU scope, and acquires the others' for the last one); the
    partials are read from L2 (.cg), where the other SMs wrote them."""
    tl.debug_barrier()
    arrived = tl.atomic_add(count_ptr + token * tl.num_programs(1) + pid_n, 1, sem="acq_rel", scope="gpu")
    if arrived == top_k * SPLITS - 1:
        total = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for split in tl.static_range(SPLITS):  # a fixed order: the same sums every run
            for slot in range(top_k):
                total += tl.load(y_ptr + split * stride_ys + (token * top_k + slot) * stride_y + offs_n,
                                 mask=n_mask, other=0.0, cache_modifier=".cg")
        tl.store(out_ptr + token * stride_out + offs_n, total, mask=n_mask)


def _block_m(assignments: int, n_experts: int, one_per_tile: bool = False, words: bool = False) -> int:
    """Rows per tile: small for decode (few tokens per expert), larger for prefill. A decode
    tile (one row used) of the words kernels takes 8 where Triton allows: there A is the
    MMA's narrow side."""
    if one_per_tile and words and TRITON_VERSION >= NARROW_DOT_SINCE:
        return 8
    return block_m_for(assignments, n_experts)


def _split(K: int, block_k: int, split_k: int) -> tuple[int, int]:
    """(splits, values of K per split) for splitting K in about split_k shares of whole BLOCK_Ks."""
    per_split = triton.cdiv(triton.cdiv(K, block_k), split_k) * block_k
    return triton.cdiv(K, per_split), per_split


def moe_mxfp4_variants(x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor, gate_up, b1: torch.Tensor,
                     down, b2: torch.Tensor, block_n: int = 64, block_k: int = 128, num_warps: int = 4,
                     num_stages: int = 4, block_m: int | None = None,
                     one_per_tile: bool | None = None, split_k: int = 1, fuse_sum: bool = False,
                     limit: float = SWIGLU_LIMIT, alpha: float = SWIGLU_ALPHA) -> torch.Tensor:
    """x [T, H]; experts/weights [T, k] from the router; gate_up and down MXFP4, both as
    PackedExperts (codes for tl.dot_scaled) or both as Mxfp4Words (decoded by bit operations).
    Returns [T, H] float32.

    one_per_tile picks the tile layout (None: by DECODE_ASSIGNMENTS). split_k > 1 splits each
    GEMM's K into that many programs, for more programs in flight when there are few tiles
    (decode); gate_up's partials are then summed, biased and activated by one more small
    kernel, down's go into the final sum. fuse_sum (with one_per_tile only) does that sum in
    the down kernel instead of one more launch. The launch parameters, the layout, the split
    and the fusion are the benchmark's to sweep."""
    T_, H = x.shape
    top_k = experts.shape[1]
    E, N1, K1 = gate_up.shape
    _, N2, K2 = down.shape
    words = isinstance(gate_up, Mxfp4Words)
    if words != isinstance(down, Mxfp4Words):
        raise ValueError("gate_up and down must both be in the words layout, or neither")
    if one_per_tile is None:
        one_per_tile = experts.numel() <= DECODE_ASSIGNMENTS
    if fuse_sum and not one_per_tile:
        raise ValueError("fuse_sum sums a token's rows in the down kernel with one tile per assignment only")
    block_m = block_m or _block_m(T_ * top_k, E, one_per_tile, words)
    sorted_ids, tile_expert, act_rows = tiles_for(experts, E, block_m, one_per_tile)
    tiles = tile_expert.numel()
    x = x.contiguous()
    # Triton's interpreter (kernels on the CPU) runs no inline PTX and no bf16 arithmetic
    decode = dict(WORDS=words, INTERPRETED=not x.is_cuda)
    act = torch.empty((act_rows, N1 // 2), dtype=torch.bfloat16, device=x.device)
    down_blocks = triton.cdiv(N2, block_n)
    # fuse_sum: arrivals per (token, column block of down), zeroed by gate_up
    counts = torch.empty((T_ * down_blocks if fuse_sum else 1,), dtype=torch.int32, device=x.device)
    splits1, k_split1 = _split(K1, block_k, split_k)
    # split-K partials of x W1^T (every valid row written whole by each split); unused when unsplit
    h = torch.empty((splits1, act_rows, N1) if splits1 > 1 else (1, 1, 1), dtype=torch.float32, device=x.device)
    _gate_up_kernel[(tiles, triton.cdiv(N1, block_n), splits1)](
        x, gate_up.data, gate_up.scales, b1, act, h, tile_expert, sorted_ids, counts,
        K1, N1, top_k, x.stride(0), gate_up.data.stride(0), gate_up.data.stride(1),
        gate_up.scales.stride(0), gate_up.scales.stride(1), b1.stride(0), act.stride(0), h.stride(0), h.stride(1),
        down_blocks, limit, alpha, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        ONE_PER_TILE=one_per_tile, SPLITS=splits1, K_SPLIT=k_split1, WIDE_SCALES=words and gate_up.wide_scales,
        **decode, FUSE_SUM=fuse_sum, COUNTS_POW2=triton.next_power_of_2(down_blocks),
        num_warps=num_warps, num_stages=num_stages)
    if splits1 > 1:
        _swiglu_kernel[(tiles, triton.cdiv(N1, block_n))](
            h, b1, act, tile_expert, sorted_ids, N1, h.stride(0), h.stride(1), b1.stride(0), act.stride(0),
            limit, alpha, BLOCK_M=block_m, BLOCK_N=block_n, ONE_PER_TILE=one_per_tile, SPLITS=splits1)
    # every assignment's row is written whole by exactly one tile per split, so no zero fill
    splits2, k_split2 = _split(K2, block_k, split_k)
    y = torch.empty((splits2, T_ * top_k, N2), dtype=torch.float32, device=x.device)
    out = torch.empty((T_, N2) if fuse_sum else (1, 1), dtype=torch.float32, device=x.device)
    route_w = weights.reshape(-1).float().contiguous()
    _down_kernel[(tiles, down_blocks, splits2)](
        act, down.data, down.scales, b2, route_w, y, tile_expert, sorted_ids, counts, out,
        K2, N2, top_k, act.stride(0), down.data.stride(0), down.data.stride(1),
        down.scales.stride(0), down.scales.stride(1), b2.stride(0), y.stride(0), y.stride(1), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, ONE_PER_TILE=one_per_tile, SPLITS=splits2, K_SPLIT=k_split2,
        WIDE_SCALES=words and down.wide_scales, **decode, FUSE_SUM=fuse_sum, num_warps=num_warps,
        num_stages=num_stages)
    return out if fuse_sum else y.view(splits2, T_, top_k, N2).sum(dim=(0, 2))
