"""The attention block: x -> o(Attention(RMSNorm(x))), GPT-OSS's grouped-query attention.

64 query heads over 8 KV heads (GQA), head_dim 64, biases on q/k/v/o, scale 1/sqrt(head_dim),
one learned sink logit per head in the softmax denominator (it takes a share and gives no
value), NeoX RoPE with YaRN; even layers see only the last `sliding_window` positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ...checkpoint.config import GptOssConfig
from ..weights.matrices import Matrix
from ..weights.source import WeightSource
from .cache import KVCache
from .norm import rms_norm
from .rope import apply_rope, rotation


@dataclass
class StepInputs:
    """What every layer of one forward call shares: RoPE's cos and sin for the new positions,
    and which keys each new query must not see, in full-attention and sliding-window layers."""
    cos: torch.Tensor  # [T, head_dim], YaRN's attention factor included
    sin: torch.Tensor
    hidden: torch.Tensor  # [T, S]: True where query t may not attend to key s
    hidden_in_window: torch.Tensor


def step_inputs(cfg: GptOssConfig, inv_freq: torch.Tensor, rope_scale: float, positions: torch.Tensor,
                keys: int) -> StepInputs:
    """For new `positions` that attend over `keys` positions in all (the cache's and their own)."""
    cos, sin = rotation(positions, inv_freq, rope_scale)
    key_pos = torch.arange(keys, device=positions.device)
    visible = key_pos[None, :] <= positions[:, None]
    in_window = visible & (positions[:, None] - key_pos[None, :] < cfg.sliding_window)
    return StepInputs(cos, sin, ~visible, ~in_window)


@dataclass
class AttentionBlock:
    layer: int
    heads: int
    kv_heads: int
    head_dim: int
    window: int  # positions a query sees, its own included, in a sliding layer; 0: all
    eps: float
    norm: torch.Tensor  # the block's input RMSNorm weight [H]
    q: Matrix
    q_bias: torch.Tensor
    k: Matrix
    k_bias: torch.Tensor
    v: Matrix
    v_bias: torch.Tensor
    o: Matrix
    o_bias: torch.Tensor
    sinks: torch.Tensor  # [heads]
    # the layer as the decode step's C call takes it (runtime.execution), made at its first token
    native: object | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_weights(cls, source: WeightSource, layer: int) -> AttentionBlock:
        cfg = source.config
        prefix = f"model.layers.{layer}."
        matrix = lambda name: source.matrix(prefix + name)  # noqa: E731
        vector = lambda name: source.floats(prefix + name)  # noqa: E731
        return cls(layer, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.sliding_window if layer % 2 == 0 else 0,
                   cfg.rms_norm_eps, vector("input_layernorm.weight"),
                   matrix("self_attn.q_proj.weight"), vector("self_attn.q_proj.bias"),
                   matrix("self_attn.k_proj.weight"), vector("self_attn.k_proj.bias"),
                   matrix("self_attn.v_proj.weight"), vector("self_attn.v_proj.bias"),
                   matrix("self_attn.o_proj.weight"), vector("self_attn.o_proj.bias"), vector("self_attn.sinks"))

    @property
    def sliding(self) -> bool:
        return self.window > 0  # even layers slide

    def project_qkv(self, h: torch.Tensor, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, heads, hd] and k [T, kv heads, hd] (rotated) and v [T, kv heads, hd] of h."""
        T, hd = h.shape[0], self.head_dim
        q = self.q.matmul(h, self.q_bias).view(T, self.heads, hd)
        k = self.k.matmul(h, self.k_bias).view(T, self.kv_heads, hd)
        v = self.v.matmul(h, self.v_bias).view(T, self.kv_heads, hd)
        return apply_rope(q, step.cos, step.sin), apply_rope(k, step.cos, step.sin), v

    def forward(self, x: torch.Tensor, step: StepInputs, cache: KVCache | None) -> torch.Tensor:
        """The block's output [T, H] for x [T, H] following what the cache holds (appending to it)."""
        T, hd, nh, nkv = x.shape[0], self.head_dim, self.heads, self.kv_heads
        q, k, v = self.project_qkv(rms_norm(x, self.norm, self.eps), step)
        if cache is not None:
            k, v = cache.extend(self.layer, k, v)
        if T == 1:
            return self.o.matmul(self.newest_position(q, k, v), self.o_bias)
        hidden = step.hidden_in_window if self.sliding else step.hidden
        # GQA without copying keys and values per query head: query head h = g * group + j reads
        # KV head g, so the queries are grouped by KV head ([T, nkv, group, hd]) instead
        q = q.view(T, nkv, nh // nkv, hd)
        scores = torch.einsum("qgjd,kgd->gjqk", q, k).reshape(nh, T, -1) / math.sqrt(hd)
        scores = scores.masked_fill(hidden[None], float("-inf"))
        sinks = self.sinks.float()[:, None, None].expand(nh, T, 1)
        logits = torch.cat([scores, sinks], dim=-1)
        probs = torch.softmax(logits - logits.amax(dim=-1, keepdim=True), dim=-1)[..., :-1]
        probs = probs.view(nkv, nh // nkv, T, -1)
        out = torch.einsum("gjqk,kgd->qgjd", probs, v).reshape(T, nh * hd)
        return self.o.matmul(out, self.o_bias)

    def newest_position(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One query [1, heads, hd], the newest position (a decode step), over its keys and values
        [S, kv heads, hd]: it sees all of them, or in a sliding-window layer the last `window`,
        so those are taken instead of masking the rest. [1, heads * hd]."""
        nh, nkv, hd = self.heads, self.kv_heads, self.head_dim
        if self.sliding:
            k, v = k[-self.window:], v[-self.window:]
        scores = torch.matmul(q.view(nkv, nh // nkv, hd), k.permute(1, 2, 0)).view(nh, -1) / math.sqrt(hd)
        logits = torch.cat([scores, self.sinks.float()[:, None]], dim=-1)
        probs = torch.softmax(logits - logits.amax(dim=-1, keepdim=True), dim=-1)[:, :-1]
        return torch.matmul(probs.view(nkv, nh // nkv, -1), v.transpose(0, 1)).reshape(1, nh * hd)
