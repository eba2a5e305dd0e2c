"""One token's MoE block on the CPU (a decode step) in two native calls around one sigmoid.

At one token an expert's product takes a few hundred microseconds, and the reference
(`moe_reference.mix_experts`) wraps each of the top-k experts in a dozen small torch operations
and two or three parallel products of its own. Here the k experts' first products go to the
native kernels as one batch, with the biases and the SwiGLU's clamps, scale and + 1 in C
(`native.moe_gate_up`); torch takes the sigmoid; then their second products go as a second batch
with the SwiGLU's products, the biases, the routing weights and the sum (`native.moe_down`). The
same operations on the same values, summed in the same order (experts by ascending id): the
same floats as mix_experts.
"""

from __future__ import annotations

import torch

from . import native
from .moe_reference import route
from .weights import MappedExperts, MoELayer

# Elementwise torch kernels run vectors over a contiguous tensor and the scalar code on its tail;
# their transcendentals (SwiGLU's sigmoid) may differ in the last bit between the two. k rows at
# once put the same values at the same places as one row alone only if a row ends on a vector:
# a multiple of 64 floats (AVX-512's 16, unrolled) does for every build. Otherwise row by row.
WHOLE_VECTORS = 64


def takes(layer: MoELayer, x: torch.Tensor) -> bool:
    """Whether this path runs `layer` on x: one token, on the CPU, both expert stacks multiplied
    by the native kernels in their stored form."""
    return (x.shape[0] == 1 and x.device.type == "cpu"
            and all(isinstance(w, MappedExperts) and w.native for w in (layer.gate_up, layer.down)))


def moe_one_token(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """The MoE block on one normalized token x [1, H] (where `takes`); returns [1, H] float32."""
    x = x.float().contiguous()
    experts, weights = route(x, layer.router_w, layer.router_b, layer.top_k)
    ids, shares = experts[0].tolist(), weights[0].tolist()
    order = sorted(range(len(ids)), key=ids.__getitem__)  # mix_experts' order: ascending ids
    chosen = [ids[s] for s in order]
    first = [layer.gate_up.stored(e) for e in chosen]
    lib = native.library()
    halves = torch.empty(3, len(chosen), layer.gate_up.shape[1] // 2)
    native.moe_gate_up(lib, native.matrices([p for parts in first for p in parts], layer.gate_up.activations),
                       len(first[0]), x, layer.b1.float().contiguous(), chosen, layer.swiglu_limit,
                       layer.swiglu_alpha, halves)
    if halves.shape[2] % WHOLE_VECTORS == 0:
        halves[2].sigmoid_()
    else:
        for row in halves[2]:
            row.sigmoid_()
    out = torch.empty(1, layer.down.shape[1])
    second = native.matrices([p for e in chosen for p in layer.down.stored(e)], layer.down.activations)
    native.moe_down(lib, second, halves, layer.b2.float().contiguous(), chosen, [shares[s] for s in order], out)
    return out
