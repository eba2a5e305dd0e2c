"""MXFP4 experts re-laid as 32-bit words that a few bit operations decode into bf16 pairs.

The HF layout holds E2M1 codes two to a byte, element 2j in the low nibble. A words matrix
keeps four bits a value (the same bytes to stream) but places the 32 bits of each run of 8
values so that one shift (or rotation) and one mask put two values straight into bf16x2
position: signs at bits 15 and 31, exponent bits at 7-8 and 23-24, mantissa bits at 6 and 22.
A half so filled is the bf16 of (E2M1 value) x 2^-126: the E2M1 exponent lands in the low
bits of bf16's, and E2M1's one subnormal (0.5) on a bf16 subnormal. One bf16x2 multiply by
2^126 x the block's E8M0 scale then gives two weights, exactly.

Tiling a word with four such shift-and-mask patterns is impossible, so the fourth pair
takes two (rotations of the word by 8 and by 0). The recipe, for a word w:

    pair 0 (values 0, 1) = rotl(w, 6)  & M          M = 0x81C081C0
    pair 1 (values 2, 3) = rotl(w, 2)  & M
    pair 2 (values 4, 5) = rotl(w, 28) & M
    pair 3 (values 6, 7) = rotl(w, 8)  & 0x00400040  |  w & 0x81808180

(about 9 integer operations and 4 bf16x2 multiplies for 8 values; tl.dot_scaled's upcast on
Hopper spends some 2.8 instructions a value.) Within a pair, the low half is the even value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

PAIR_MASK = 0x81C081C0
# per pair: (left rotation, mask) terms OR-ed together, as in the module docstring
RECIPES = (((6, PAIR_MASK),), ((2, PAIR_MASK),), ((28, PAIR_MASK),), ((8, 0x00400040), (0, 0x81808180)))
NIBBLE_TARGET_BITS = (6, 7, 8, 15)  # mantissa, exponent low, exponent high, sign: where a low half wants them
SCALE_LIMIT = 128  # up to this E8M0 exponent, 2^126 x the scale is a finite bf16: one multiply
BF16X2_2_POW_126 = tl.constexpr(0x7E807E80)
F32_2_POW_126 = tl.constexpr(2.0 ** 126)


@dataclass
class Mxfp4Words:
    """An MXFP4 expert stack [E, N, K] in the words layout, for the Triton kernels."""

    shape: tuple[int, int, int]
    data: torch.Tensor  # int32 [E, N, K/8]
    scales: torch.Tensor  # E8M0 bytes [E, N, K/32], as in the HF layout
    wide_scales: bool  # some scale exceeds SCALE_LIMIT: the kernels multiply twice


def source_bit(value: int, nibble_bit: int) -> int:
    """Where in a word bit `nibble_bit` of value `value` (0..7) lives."""
    pair, half = divmod(value, 2)
    target = NIBBLE_TARGET_BITS[nibble_bit] + 16 * half
    for rotation, mask in RECIPES[pair]:
        if mask >> target & 1:
            return (target - rotation) % 32
    raise AssertionError("every target bit has a term")


def _spread_tables() -> torch.Tensor:
    """[8, 16] int64: the word bits that value v's nibble n sets."""
    tables = torch.zeros(8, 16, dtype=torch.int64)
    for v in range(8):
        for n in range(16):
            tables[v, n] = sum(1 << source_bit(v, b) for b in range(4) if n >> b & 1)
    return tables


def to_words(codes: torch.Tensor, scales: torch.Tensor) -> Mxfp4Words:
    """HF-layout MXFP4 (codes [E, N, K/2], scales [E, N, K/32]) -> the words layout, on their device.
    One expert at a time: the temporaries (int64 nibbles) are some 30 times one expert's codes,
    about 270 MB for a gpt-oss-120b gate_up expert."""
    E, N, half_k = codes.shape
    tables = _spread_tables().to(codes.device)
    words = torch.empty((E, N, half_k // 4), dtype=torch.int32, device=codes.device)
    for e in range(E):
        c = codes[e].long()
        nibbles = torch.stack([c & 15, c >> 4], dim=-1).reshape(N, half_k // 4, 8)
        word = tables[torch.arange(8, device=codes.device), nibbles].sum(dim=-1)  # disjoint bits: sum is OR
        words[e] = torch.where(word >= 1 << 31, word - (1 << 32), word).to(torch.int32)
    return Mxfp4Words((E, N, half_k * 2), words, scales, bool(scales.max() > SCALE_LIMIT))


@triton.jit
def _rotl(w, n: tl.constexpr):
    return (w << n) | (w >> (32 - n))


@triton.jit
def _mul_bf16x2(pairs, factor):
    return tl.inline_asm_elementwise("mul.rn.bf16x2 $0, $1, $2;", "=r,r,r", [pairs, factor], dtype=tl.uint32,
                                     is_pure=True, pack=1)


@triton.jit
def _pair_values(pairs, scale, WIDE_SCALES: tl.constexpr, INTERPRETED: tl.constexpr):
    """bf16x2 halves of E2M1 x 2^-126 (uint32) -> (low, high) weights: x 2^126 x 2^(scale - 127).

    Compiled: bf16 values, one packed multiply (two where the scale is too wide for one
    bf16). Interpreted: float32 values, multiplied as float32, because Triton's interpreter
    keeps bf16 as raw uint16 and does integer arithmetic on it (and runs no inline PTX).
    The products are powers of two times E2M1 values, exact in either."""
    if INTERPRETED:
        lo = (pairs << 16).to(tl.float32, bitcast=True)
        hi = (pairs & 0xFFFF0000).to(tl.float32, bitcast=True)
        if WIDE_SCALES:  # 2^126, then the scale itself (scale 0, 2^-127, is subnormal)
            lo, hi = lo * F32_2_POW_126, hi * F32_2_POW_126
            f = tl.where(scale == 0, 0x00400000, scale << 23).to(tl.float32, bitcast=True)
        else:  # 2^(s - 1) = 2^126 x 2^(s - 127) in one float
            f = ((scale + 126) << 23).to(tl.float32, bitcast=True)
        return lo * f, hi * f
    if WIDE_SCALES:
        pairs = _mul_bf16x2(pairs, tl.full(pairs.shape, BF16X2_2_POW_126, tl.uint32))
        f = tl.where(scale == 0, 0x40, scale << 7)
    else:
        f = (scale + 126) << 7
    pairs = _mul_bf16x2(pairs, f | (f << 16))
    return pairs.to(tl.uint16).to(tl.bfloat16, bitcast=True), (pairs >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def decode_words(words, scale, WIDE_SCALES: tl.constexpr, INTERPRETED: tl.constexpr):
    """uint32 words [..., W] and their E8M0 scales (uint32, broadcastable) -> the weights
    [..., 8 W], the 8 values of each word in order: bf16, or float32 when INTERPRETED.
    The shifts and masks spell out RECIPES (which to_words follows); the tests hold the two
    to each other."""
    lo0, hi0 = _pair_values((words << 6) & 0x81C081C0, scale, WIDE_SCALES, INTERPRETED)
    lo1, hi1 = _pair_values((words << 2) & 0x81C081C0, scale, WIDE_SCALES, INTERPRETED)
    lo2, hi2 = _pair_values(_rotl(words, 28) & 0x81C081C0, scale, WIDE_SCALES, INTERPRETED)
    lo3, hi3 = _pair_values((_rotl(words, 8) & 0x00400040) | (words & 0x81808180), scale, WIDE_SCALES, INTERPRETED)
    # join stacks on a new last axis, so the nesting reads inside out: pair, then half
    lo = tl.join(tl.join(lo0, lo2), tl.join(lo1, lo3))
    hi = tl.join(tl.join(hi0, hi2), tl.join(hi1, hi3))
    values = tl.join(lo, hi)  # [..., W, 2, 2, 2]: index (i, j, half) holds pair 2i + j
    return tl.reshape(values, words.shape[:-1] + (words.shape[-1] * 8,))
