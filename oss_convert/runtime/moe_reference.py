"""The GPT-OSS MoE block in plain torch: readable, and the oracle for every faster path.

    logits = W_r x + b_r;  pick the top k;  softmax over those k
    h      = W1[e] x + b1[e]                  (rows interleave gate, up, gate, up, ...)
    gate   = min(h[0::2], limit);  up = clamp(h[1::2], -limit, limit)
    a      = gate * sigmoid(alpha * gate) * (up + 1)
    y      = sum over chosen e of  weight_e * (W2[e] a + b2[e])
"""

from __future__ import annotations

import torch

from ..checkpoint.config import DEFAULT_SWIGLU_ALPHA as SWIGLU_ALPHA
from ..checkpoint.config import DEFAULT_SWIGLU_LIMIT as SWIGLU_LIMIT


def route(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor, top_k: int):
    """(expert ids [T, k], routing weights [T, k]) in float32."""
    logits = torch.addmm(router_b.float(), x.float(), router_w.float().T)
    top_logits, experts = torch.topk(logits, top_k, dim=-1)
    return experts, torch.softmax(top_logits, dim=-1)


def swiglu(h: torch.Tensor, limit: float = SWIGLU_LIMIT, alpha: float = SWIGLU_ALPHA) -> torch.Tensor:
    return swiglu_halves(h[..., 0::2], h[..., 1::2], limit, alpha)


def swiglu_halves(gate: torch.Tensor, up: torch.Tensor, limit: float = SWIGLU_LIMIT,
                  alpha: float = SWIGLU_ALPHA) -> torch.Tensor:
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def moe_reference(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
                  w1, b1: torch.Tensor, w2, b2: torch.Tensor, top_k: int,
                  limit: float = SWIGLU_LIMIT, alpha: float = SWIGLU_ALPHA) -> torch.Tensor:
    """x [T, H]; w1 [E, 2I, H], b1 [E, 2I], w2 [E, H, I], b2 [E, H]. Returns [T, H] float32.

    w1 and w2 may be anything whose [e] gives that expert's float matrix (a tensor, or
    packed experts that expand on demand)."""
    experts, weights = route(x, router_w, router_b, top_k)
    return mix_experts(x, experts, weights, w1, b1, w2, b2, limit, alpha)


def expert_product(w, e: int, x: torch.Tensor) -> torch.Tensor:
    """x @ w[e].T: by w's own product where it has one (packed experts: from the stored form)."""
    matmul = getattr(w, "matmul", None)
    return matmul(e, x) if matmul is not None else x @ w[e].float().T


def mix_experts(x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor,
                w1, b1: torch.Tensor, w2, b2: torch.Tensor,
                limit: float = SWIGLU_LIMIT, alpha: float = SWIGLU_ALPHA) -> torch.Tensor:
    """Sum over each token's chosen experts (ids and weights [T, k]) of weight * expert(x)."""
    x = x.float()
    out = torch.zeros_like(x)
    for e in experts.unique().tolist():
        tokens, slots = torch.nonzero(experts == e, as_tuple=True)
        h = expert_product(w1, e, x[tokens]) + b1[e].float()
        y = expert_product(w2, e, swiglu(h, limit, alpha)) + b2[e].float()
        out[tokens] += y * weights[tokens, slots, None]  # each token once per expert: no index_add_'s sort
    return out
