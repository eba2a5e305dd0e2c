"""A decode step's blocks on the CPU in C: the attention block in one call, the MoE block in two.

At one token an expert's product takes a few hundred microseconds, and the reference wraps each
of the top-k experts in a dozen small torch operations and two or three parallel products of its
own; even the routing's three torch operations and the Python around them cost a step
milliseconds, as the weights a step streams evict them from the caches. Here the attention block
(RMSNorm, q/k/v, rotation, the new k and v into the cache, attention, o, and the MoE block's
RMSNorm of the new x) is one call, the routing another, the experts (their products as two
batches, biases, SwiGLU, routing weights and the sum) a third; between the last two, Python only
makes sure the chosen experts' matrices are known (an expert's are put in at its first use, its
pages mapped in then). The products are the same floats as the torch path's; the norms, softmaxes
and the sigmoid round in another order than torch's: within a few units in the last place, not
bit for bit.
"""

from __future__ import annotations

from typing import cast

import torch

from ..kernels import native
from ..kernels.native.decode_step import NativeAttention, NativeMoe
from ..model.attention import AttentionBlock, StepInputs
from ..model.cache import KVCache
from ..model.moe import MoEBlock
from ..weights.experts import MappedExperts
from ..weights.matrices import StoredMatrix


def attention_takes(block: AttentionBlock, x: torch.Tensor, cache: KVCache | None) -> bool:
    """Whether a decode step's attention block runs in one C call: one token on the CPU
    (float32, contiguous), a cache to keep its keys in, and the four matrices in their stored
    form."""
    return (x.shape[0] == 1 and cache is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and x.is_contiguous() and all(isinstance(m, StoredMatrix) for m in (block.q, block.k, block.v, block.o)))


def _native_attention(block: AttentionBlock, next_norm: torch.Tensor) -> NativeAttention:
    if not isinstance(block.native, NativeAttention):  # made at the block's first token
        stored = [cast(StoredMatrix, m) for m in (block.q, block.k, block.v, block.o)]  # (attention_takes)
        block.native = NativeAttention(native.loaded(), [m.stored_rows for m in stored], stored[0].activations,
                                       [b.float().contiguous() for b in (block.q_bias, block.k_bias, block.v_bias,
                                                                         block.o_bias)],
                                       block.norm.float().contiguous(), block.sinks.float().contiguous(),
                                       next_norm.float().contiguous(), block.heads, block.kv_heads, block.head_dim,
                                       block.window, block.eps)
    return block.native


def attention_one_token(block: AttentionBlock, next_norm: torch.Tensor, x: torch.Tensor, step: StepInputs,
                        cache: KVCache) -> torch.Tensor:
    """x += the attention block of one token (where `attention_takes`), in place, and returns the
    MoE block's RMSNorm (`next_norm`) of the new x."""
    keys, values, held = cache.room(block.layer, 1, (block.kv_heads, block.head_dim), x.dtype, x.device)
    h = torch.empty_like(x)
    _native_attention(block, next_norm).one_token(x, step.cos, step.sin, keys, values, held, h)
    cache.filled(block.layer, held + 1)
    return h


def moe_takes(block: MoEBlock, h: torch.Tensor) -> bool:
    """Whether a MoE block runs on h in C: one token, on the CPU, both expert stacks multiplied by
    the C kernels in their stored form."""
    return (h.shape[0] == 1 and h.device.type == "cpu"
            and all(isinstance(w, MappedExperts) and w.native for w in (block.gate_up, block.down)))


def _native_moe(block: MoEBlock) -> NativeMoe:
    if not isinstance(block.native, NativeMoe):  # made at the block's first token
        block.native = NativeMoe(native.loaded(), block.top_k, block.router_w.float().contiguous(),
                                 block.router_b.float().contiguous(), block.b1.float().contiguous(),
                                 block.b2.float().contiguous(), block.swiglu_limit, block.swiglu_alpha)
    return block.native


def add_moe_one_token(block: MoEBlock, h: torch.Tensor, x: torch.Tensor) -> None:
    """x [1, H] += the MoE block on one normalized token h [1, H] (where `moe_takes`), in place;
    both float32 and contiguous."""
    layer = _native_moe(block)
    gate_up, down = cast(MappedExperts, block.gate_up), cast(MappedExperts, block.down)  # (moe_takes)
    for e in layer.route(h):
        if e not in layer.known:
            layer.add(e, gate_up.stored(e), down.stored(e), gate_up.activations)
    layer.run(h, x)


def moe_one_token(block: MoEBlock, h: torch.Tensor) -> torch.Tensor:
    """The MoE block on one normalized token h [1, H] (where `moe_takes`): [1, H] float32."""
    out = torch.zeros(1, block.down.shape[1])
    add_moe_one_token(block, h.float().contiguous(), out)
    return out
