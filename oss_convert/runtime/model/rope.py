"""Rotary position embedding: NeoX rotation (pairs of dimensions half a head apart) with YaRN's
frequency blend and attention factor, without truncation (GPT-OSS's rope_scaling)."""

from __future__ import annotations

import math

import torch

from ...checkpoint.config import GptOssConfig


def yarn_frequencies(cfg: GptOssConfig) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim/2], attention factor) of YaRN without truncation."""
    dim, base, factor = cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_factor
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    if factor <= 1.0:
        return extrapolation.float(), 1.0

    def correction_dim(rotations: float) -> float:
        return dim * math.log(cfg.rope_original_context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(cfg.rope_beta_fast or 32.0), correction_dim(cfg.rope_beta_slow or 1.0)
    low, high = max(low, 0.0), min(high, dim - 1.0)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # share of the original (extrapolated) frequency
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    return inv_freq.float(), 0.1 * math.log(factor) + 1.0


def rotation(positions: torch.Tensor, inv_freq: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [T, head_dim] of `positions`, each half-dim angle twice, times YaRN's factor."""
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos() * scale, angles.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX rotation of x [T, heads, dim] by cos/sin [T, dim] (each half-dim angle twice):
    pairs (i, i + dim/2) become (x_i cos - x_j sin, x_j cos + x_i sin)."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)  # x_i - y == x_i + (-y): the same floats
    return x * cos[:, None, :] + rotated * sin[:, None, :]
