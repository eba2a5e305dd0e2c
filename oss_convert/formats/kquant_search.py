"""The scale searches of ggml's reference K-quantizers, vectorized over groups.

`make_qkx2_quants` (Q4_K, Q5_K: scale and min per group of 32, weighted least squares
over a small grid of candidate scales) and `make_qx_quants` (Q6_K: symmetric scale per
group of 16, rmse_type 1). Each runs on every group at once; the order of float32
operations inside a group is the reference's (sums left to right, no fused multiply-add),
which is what makes the results bit-identical.
"""

from __future__ import annotations

import ctypes

import numpy as np

from . import compiled
from .floats import F32, block_fp16
from .rounding import MAGIC, first_absmax_index, nearest_int


def seq_sum(terms: np.ndarray) -> np.ndarray:
    """Sum along the last axis strictly left to right in float32 (as a C loop does)."""
    return seq_sum_rows(np.ascontiguousarray(np.moveaxis(terms, -1, 0)))


def seq_sum_rows(terms: np.ndarray) -> np.ndarray:
    """Sum along the first axis, row after row in float32: terms [n, G] -> [G].

    The searches keep their per-group values as [n, G], so the sum runs over contiguous
    rows. numpy reduces a C-ordered [n, G] array (G > 1) along axis 0 by adding each row
    into the accumulator in turn, which is the C loop's order; pairwise summation, which
    would not be, only applies along the contiguous axis. A single column takes the loop."""
    if terms.ndim == 2 and terms.shape[1] > 1 and terms.flags.c_contiguous:
        return np.add.reduce(terms, axis=0)
    acc = terms[0].copy()
    for i in range(1, terms.shape[0]):
        acc += terms[i]
    return acc


class _Levels:
    """clip(nearest_int(iscale * (x - offset)), 0, nmax) as float32 codes, into reused buffers.

    The search evaluates it 22 times per group on the same [n, G] shape: working in place
    saves the allocations and the int64 temporaries that dominate otherwise."""

    def __init__(self, shape: tuple[int, int]):
        self.work = np.empty(shape, F32)
        self.codes = np.empty(shape, F32)

    def __call__(self, x: np.ndarray, offset: np.ndarray, iscale: np.ndarray, nmax: int) -> np.ndarray:
        v = np.subtract(x, offset, out=self.work)
        v *= iscale
        v += MAGIC  # nearest_int's trick: the integer lands in the low mantissa bits
        bits = v.view(np.int32)
        bits &= 0x007FFFFF
        bits -= 0x00400000
        np.clip(bits, 0, nmax, out=bits)
        self.codes[...] = bits
        return self.codes


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, weights: float32 [G, n]. Returns (scale [G], the_min [G] = -min, L uint8 [G, n]).
    The error is weighted squared differences, or with `use_mad` (Q2_K) absolute ones.
    Compiled (kquant_search.c, the same operations group by group) where a compiler is at hand."""
    lib = compiled.library("kquant_search")
    if lib is None or x.shape[-1] > 32:
        return make_qkx2_quants_numpy(x, weights, nmax, rmin, rdelta, nstep, use_mad)
    x = np.ascontiguousarray(x, F32)
    weights = np.ascontiguousarray(weights, F32)
    groups, n = x.shape
    scale, the_min = np.empty(groups, F32), np.empty(groups, F32)
    codes = np.empty((groups, n), np.uint8)
    lib.oss_make_qkx2_quants(*(ctypes.c_void_p(a.ctypes.data) for a in (x, weights)), ctypes.c_int64(groups),
                             ctypes.c_int(n), ctypes.c_int(nmax), ctypes.c_float(rmin), ctypes.c_float(rdelta),
                             ctypes.c_int(nstep), ctypes.c_int(int(use_mad)),
                             *(ctypes.c_void_p(a.ctypes.data) for a in (scale, the_min, codes)))
    return scale, the_min, codes


@np.errstate(all="ignore")  # inf/NaN from extreme inputs follow the C reference's IEEE semantics
def make_qkx2_quants_numpy(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                           nstep: int, use_mad: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants in numpy, every group at once (the path without a compiler)."""
    x = np.ascontiguousarray(x.T, dtype=F32)  # [n, G]: a group per column
    w = np.ascontiguousarray(weights.T, dtype=F32)
    levels = _Levels(x.shape)
    scratch = np.empty(x.shape, F32)

    def weighted_sq_error(lf, scale, offset):
        diff = np.multiply(lf, scale, out=scratch)  # scale * L + min - x, then w * diff^2
        diff += offset
        diff -= x
        if use_mad:
            np.abs(diff, out=diff)
        else:
            diff *= diff
        diff *= w
        return seq_sum_rows(diff)

    mn = np.minimum(x.min(axis=0), F32(0))
    mx = x.max(axis=0)
    sum_w = seq_sum_rows(w)
    sum_x = seq_sum_rows(w * x)
    flat = mx == mn
    span = np.where(flat, F32(1), mx - mn).astype(F32)

    iscale = (F32(nmax) / span).astype(F32)
    scale = (F32(1) / iscale).astype(F32)
    best_error = weighted_sq_error(levels(x, mn, iscale, nmax), scale, mn)
    best_min = mn.copy()
    # The winning codes are recomputed at the end from the (iscale, offset) that made them.
    chosen_iscale, chosen_offset = iscale, mn
    wl = np.empty(x.shape, F32)
    for step in range(nstep + 1):
        # The reference updates `min` in place when a candidate wins, and later candidates
        # measure from it: both the span and the offset use the current best min.
        span = np.where(flat, F32(1), mx - best_min).astype(F32)
        iscale = ((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / span).astype(F32)
        lf = levels(x, best_min, iscale, nmax)
        np.multiply(w, lf, out=wl)
        sum_l = seq_sum_rows(wl)
        sum_l2 = seq_sum_rows(np.multiply(wl, lf, out=scratch))
        sum_xl = seq_sum_rows(np.multiply(wl, x, out=scratch))
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Dsafe = np.where(ok, D, F32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Dsafe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Dsafe
        positive = this_min > 0
        this_scale = np.where(positive, sum_xl / sum_l2, this_scale).astype(F32)
        this_min = np.where(positive, F32(0), this_min).astype(F32)
        cur_error = weighted_sq_error(lf, this_scale, this_min)
        better = ok & (cur_error < best_error)
        chosen_iscale = np.where(better, iscale, chosen_iscale)
        chosen_offset = np.where(better, best_min, chosen_offset)
        best_error = np.where(better, cur_error, best_error)
        scale = np.where(better, this_scale, scale)
        best_min = np.where(better, this_min, best_min)
    L = levels(x, chosen_offset.astype(F32), chosen_iscale.astype(F32), nmax).astype(np.uint8)
    scale = np.where(flat, F32(0), scale).astype(F32)
    L[:, flat] = 0
    the_min = np.where(flat, -mn, -best_min).astype(F32)
    return scale, the_min, np.ascontiguousarray(L.T)


@np.errstate(all="ignore")
def make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants with rmse_type 1 and no importance weights. x: float32 [G, n].

    Returns (scale [G], L uint8 [G, n] in 0..2*nmax-1)."""
    x = x.astype(F32, copy=False)
    G = x.shape[0]
    mx = x[np.arange(G), first_absmax_index(x)]
    zero = np.abs(mx) < F32(1e-15)
    mx_safe = np.where(zero, F32(1), mx).astype(F32)
    w = x * x

    def trial(iscale):
        l = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = l.astype(F32)
        return l, seq_sum((w * x) * lf), seq_sum((w * lf) * lf)

    iscale = (F32(-nmax) / mx_safe).astype(F32)
    l, sumlx, suml2 = trial(iscale)
    L = l + nmax
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
    best = (scale * sumlx).astype(F32)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = (-(F32(nmax) + F32(0.1) * F32(step)) / mx_safe).astype(F32)
        l, sumlx, suml2 = trial(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better[:, None], l + nmax, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_scale = (sumlx / suml2).astype(F32)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, (new_scale * sumlx).astype(F32), best)
    scale = np.where(zero, F32(0), scale).astype(F32)
    L = np.where(zero[:, None], 0, L)
    return scale, L.astype(np.uint8)


def pack_scales_mins_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and 8 six-bit mins [B, 8] -> the 12-byte K-quant layout [B, 12]."""
    out = np.zeros((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, 0:4]
    out[:, 4:8] = lm[:, 0:4]
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return out


def unpack_scales_mins_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = packed.astype(np.uint8)
    sc = np.empty((q.shape[0], 8), np.uint8)
    m = np.empty((q.shape[0], 8), np.uint8)
    sc[:, 0:4] = q[:, 0:4] & 63
    m[:, 0:4] = q[:, 4:8] & 63
    sc[:, 4:8] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return sc, m


def super_block_header(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K/Q5_K blocks [B, bytes] -> (d [B,1], dmin [B,1], group scales [B,8], group mins [B,8])."""
    d = block_fp16(blocks, 0)
    dmin = block_fp16(blocks, 2)
    sc, m = unpack_scales_mins_k4(blocks[:, 4:16])
    return d, dmin, sc, m


def new_super_blocks(d: np.ndarray, dmin: np.ndarray, scales: np.ndarray, block_bytes: int) -> np.ndarray:
    """Q4_K/Q5_K output blocks [B, block_bytes] with the 16-byte header (d, dmin, scales) filled."""
    B = scales.shape[0]
    out = np.empty((B, block_bytes), np.uint8)
    out[:, 0:2] = d.reshape(B, 1).view(np.uint8)
    out[:, 2:4] = dmin.reshape(B, 1).view(np.uint8)
    out[:, 4:16] = scales
    return out
