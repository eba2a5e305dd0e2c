"""One token's MoE block on the CPU (a decode step) in two native calls.

At one token an expert's product takes a few hundred microseconds, and the reference
(`moe_reference.mix_experts`) wraps each of the top-k experts in a dozen small torch operations
and two or three parallel products of its own; even the routing's three torch operations and
the Python around them cost a step milliseconds, as the weights a step streams evict them from
the caches. Here the routing is one native call (the router's products, top-k, softmax), the
experts another (their products as two batches, biases, SwiGLU, routing weights and the sum in
C, native.MoeOneToken); between them Python only makes sure the chosen experts' matrices are
known (an expert's are put in at its first use, its pages mapped in then). The products are
the same floats as mix_experts'; the router's sums, the softmax and the sigmoid round in
another order than torch's: within a few units in the last place, not bit for bit.
"""

from __future__ import annotations

import torch

from . import native
from .weights import MappedExperts, MoELayer


def takes(layer: MoELayer, x: torch.Tensor) -> bool:
    """Whether this path runs `layer` on x: one token, on the CPU, both expert stacks multiplied
    by the native kernels in their stored form."""
    return (x.shape[0] == 1 and x.device.type == "cpu"
            and all(isinstance(w, MappedExperts) and w.native for w in (layer.gate_up, layer.down)))


def _plan(layer: MoELayer) -> native.MoeOneToken:
    """The layer's native description, made at its first token and kept with the layer."""
    plan = layer.one_token
    if plan is None:
        plan = layer.one_token = native.MoeOneToken(
            layer.top_k, layer.router_w.float().contiguous(), layer.router_b.float().contiguous(),
            layer.b1.float().contiguous(), layer.b2.float().contiguous(), layer.swiglu_limit, layer.swiglu_alpha)
    return plan


def add_moe_one_token(layer: MoELayer, h: torch.Tensor, x: torch.Tensor) -> None:
    """x [1, H] += the MoE block on one normalized token h [1, H] (where `takes`), in place; both
    float32 and contiguous."""
    plan, lib = _plan(layer), native.library()
    for e in plan.route(lib, h):
        if e not in plan.known:
            plan.add(e, layer.gate_up.stored(e), layer.down.stored(e), layer.gate_up.activations)
    plan.run(lib, h, x)


def moe_one_token(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """The MoE block on one normalized token x [1, H] (where `takes`); returns [1, H] float32."""
    out = torch.zeros(1, layer.down.shape[1])
    add_moe_one_token(layer, x.float().contiguous(), out)
    return out
