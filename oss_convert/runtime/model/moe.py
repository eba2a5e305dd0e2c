"""The MoE block in plain torch: readable, and the oracle for every faster path (runtime.execution
picks those: the C decode step, Triton on CUDA).

    logits = W_r x + b_r;  pick the top k;  softmax over those k
    h      = W1[e] x + b1[e]                  (rows interleave gate, up, gate, up, ...)
    gate   = min(h[0::2], limit);  up = clamp(h[1::2], -limit, limit)
    a      = gate * sigmoid(alpha * gate) * (up + 1)
    y      = sum over chosen e of  weight_e * (W2[e] a + b2[e])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...checkpoint.config import DEFAULT_SWIGLU_ALPHA as SWIGLU_ALPHA
from ...checkpoint.config import DEFAULT_SWIGLU_LIMIT as SWIGLU_LIMIT
from ..weights.experts import Experts
from ..weights.source import WeightSource


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


@dataclass
class MoEBlock:
    """One layer's MoE block: its input norm, router and experts. `forward` takes the normalized
    hidden states (the decoder block normalizes, and the C attention block hands them over)."""
    layer: int
    top_k: int
    norm: torch.Tensor  # the post-attention RMSNorm weight [H], the block's input norm
    router_w: torch.Tensor  # [E, H] float32
    router_b: torch.Tensor  # [E]
    gate_up: Experts  # [E, 2I, H], gate and up rows interleaved
    b1: torch.Tensor  # [E, 2I]
    down: Experts  # [E, H, I]
    b2: torch.Tensor  # [E, H]
    swiglu_limit: float = SWIGLU_LIMIT
    swiglu_alpha: float = SWIGLU_ALPHA
    # the layer as the decode step's C calls take it (runtime.execution), made at its first token
    native: object | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_weights(cls, source: WeightSource, layer: int) -> MoEBlock:
        """Layer `layer`'s MoE block, the experts left in the file's pages on the CPU."""
        cfg = source.config
        prefix = f"model.layers.{layer}."
        vector = lambda name: source.floats(prefix + name)  # noqa: E731
        return cls(layer, cfg.experts_per_token, vector("post_attention_layernorm.weight"),
                   vector("mlp.router.weight"), vector("mlp.router.bias"),
                   source.experts(prefix + "mlp.experts.gate_up_proj"), vector("mlp.experts.gate_up_proj_bias"),
                   source.experts(prefix + "mlp.experts.down_proj"), vector("mlp.experts.down_proj_bias"),
                   cfg.swiglu_limit, cfg.swiglu_alpha)

    def to(self, device) -> MoEBlock:
        move = lambda t: t.to(device)  # noqa: E731
        return MoEBlock(self.layer, self.top_k, move(self.norm), move(self.router_w), move(self.router_b),
                        self.gate_up.to(device), move(self.b1), self.down.to(device), move(self.b2),
                        self.swiglu_limit, self.swiglu_alpha)

    def route(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return route(h, self.router_w, self.router_b, self.top_k)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The block on normalized hidden states h [T, H]: [T, H] float32, each used expert
        expanded from its packed form on demand."""
        return moe_reference(h, self.router_w, self.router_b, self.gate_up, self.b1, self.down, self.b2, self.top_k,
                             self.swiglu_limit, self.swiglu_alpha)
