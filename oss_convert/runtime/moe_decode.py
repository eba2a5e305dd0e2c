"""One token's MoE block on the CPU (a decode step) in two batched native calls.

At one token an expert's product takes a few hundred microseconds, and the reference
(`moe_reference.mix_experts`) wraps each of the top-k experts in a dozen small torch operations
and two or three parallel products of its own. Here the k experts' first products go to the
native kernels as one batch, the SwiGLU runs once over the k rows, and their second products go
as a second batch. The same operations on the same values, summed in the same order (experts by
ascending id): the same floats as mix_experts.
"""

from __future__ import annotations

import torch

from . import native
from .moe_reference import route, swiglu_halves
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


def _products(stored: list, shape: tuple[int, int, int], inputs: list[torch.Tensor], outputs: list[torch.Tensor],
              activations: str) -> None:
    """outputs[part][i] (a [1, N] row) = inputs[i] @ the part's matrix.T for each expert i, whose
    stored matrices are stored[i], in one native batch."""
    batch = [native.Product(p.format, p.data, p.scales, (shape[1] // len(parts), shape[2]), inputs[i], out[i:i + 1])
             for i, parts in enumerate(stored) for p, out in zip(parts, outputs)]
    native.batch_matmul(native.library(), batch, activations)


def moe_one_token(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """The MoE block on one normalized token x [1, H] (where `takes`); returns [1, H] float32."""
    x = x.float()
    experts, weights = route(x, layer.router_w, layer.router_b, layer.top_k)
    ids = experts[0].tolist()
    order = sorted(range(len(ids)), key=ids.__getitem__)  # mix_experts' order: ascending ids
    chosen = [ids[s] for s in order]
    count, (two_i, hidden) = len(chosen), layer.gate_up.shape[1:]
    first = [layer.gate_up.stored(e) for e in chosen]
    b1 = layer.b1[chosen]
    if len(first[0]) == 2:  # GGUF's gate and up apart: the halves without interleaving them
        gate, up = torch.empty(count, two_i // 2), torch.empty(count, two_i // 2)
        _products(first, layer.gate_up.shape, [x] * count, [gate, up], layer.gate_up.activations)
        gate, up = gate + b1[:, 0::2], up + b1[:, 1::2]
    else:
        h = torch.empty(count, two_i)
        _products(first, layer.gate_up.shape, [x] * count, [h], layer.gate_up.activations)
        h = h + b1
        gate, up = h[:, 0::2], h[:, 1::2]
    if (two_i // 2) % WHOLE_VECTORS == 0:
        a = swiglu_halves(gate, up, layer.swiglu_limit, layer.swiglu_alpha)
    else:
        a = torch.cat([swiglu_halves(gate[i:i + 1], up[i:i + 1], layer.swiglu_limit, layer.swiglu_alpha)
                       for i in range(count)])
    y = torch.empty(count, hidden)
    _products([layer.down.stored(e) for e in chosen], layer.down.shape, [a[i:i + 1] for i in range(count)], [y],
              layer.down.activations)
    y = (y + layer.b2[chosen]) * weights[0, order][:, None]
    out = torch.zeros_like(x)
    for row in y:  # as mix_experts adds each expert's share: 0 + first, + second, ...
        out += row
    return out
