"""The GPT-OSS MoE block in plain torch: readable, and the oracle for every faster path.

    logits = W_r x + b_r;  pick the top k;  softmax over those k
    h      = W1[e] x + b1[e]                  (rows interleave gate, up, gate, up, ...)
    gate   = min(h[0::2], limit);  up = clamp(h[1::2], -limit, limit)
    a      = gate * sigmoid(alpha * gate) * (up + 1)
    y      = sum over chosen e of  weight_e * (W2[e] a + b2[e])
"""

from __future__ import annotations

import torch

SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0


def route(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor, top_k: int):
    """(expert ids [T, k], routing weights [T, k]) in float32."""
    logits = x.float() @ router_w.float().T + router_b.float()
    top_logits, experts = torch.topk(logits, top_k, dim=-1)
    return experts, torch.softmax(top_logits, dim=-1)


def swiglu(h: torch.Tensor, limit: float = SWIGLU_LIMIT, alpha: float = SWIGLU_ALPHA) -> torch.Tensor:
    gate, up = h[..., 0::2], h[..., 1::2]
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def moe_reference(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
                  w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                  top_k: int) -> torch.Tensor:
    """x [T, H]; w1 [E, 2I, H], b1 [E, 2I], w2 [E, H, I], b2 [E, H] as floats. Returns [T, H] float32."""
    x = x.float()
    experts, weights = route(x, router_w, router_b, top_k)
    out = torch.zeros_like(x)
    for e in experts.unique().tolist():
        tokens, slots = torch.nonzero(experts == e, as_tuple=True)
        h = x[tokens] @ w1[e].float().T + b1[e].float()
        y = swiglu(h) @ w2[e].float().T + b2[e].float()
        out.index_add_(0, tokens, y * weights[tokens, slots, None])
    return out
