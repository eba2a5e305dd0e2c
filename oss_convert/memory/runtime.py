"""What our runtime (`generate`, runtime/execution/forward.py) holds on its device for a context.

- weights: the expert matrices as stored (MXFP4 or ggml blocks stay packed and are multiplied
  from their stored form; 16-bit float experts are widened to float32); on the CPU, with the
  native kernels built, the other matrices too where the kernels read their type in place
  (formats/table.py's `in_place`); every other tensor float32;
- KV cache: float32 keys and values for every layer over the whole context, reserved up front
  (generate's context: the prompt and max_tokens); the sliding-window layers keep every
  position too: their mask, not their cache, limits what they see;
- activations of the prompt's forward pass, PREFILL_TOKENS at a time: per layer the attention
  scores [heads, PREFILL_TOKENS, context] exist about four times at once (scores, masked, with
  the sink column, softmax), and the logits of each micro-batch's tokens [PREFILL_TOKENS, vocab].
`compare --full` holds one layer's weights at a time instead, and no cache.
"""

from __future__ import annotations

import math

from ..checkpoint import Checkpoint, Role
from ..formats import table
from .context import ModelShape

F32 = 4
SCORE_COPIES = 4
PREFILL_TOKENS = 512  # generate feeds the prompt in micro-batches of this size, as llama.cpp's -ub
DENSE_MATRICES = (Role.EMBEDDING, Role.ATTENTION, Role.OUTPUT)  # the router is widened: it is small


def runtime_weight_bytes(ckpt: Checkpoint, stored_dense: bool = False) -> int:
    """Bytes of weights the runtime holds: on CUDA (the estimate's case), or with `stored_dense` on
    a CPU where the native kernels are built."""
    total = 0
    for t in ckpt.model_tensors:
        if t.role.is_expert_weight and t.format not in ("F16", "BF16", "F32"):
            total += t.nbytes
        elif stored_dense and t.role in DENSE_MATRICES and len(t.shape) == 2 \
                and table.in_place(t.ggml_type, t.format) is not None:
            total += t.nbytes
        else:
            total += math.prod(t.shape) * F32
    return total


def runtime_kv_bytes(shape: ModelShape, ctx: int) -> int:
    return 2 * shape.layers * ctx * shape.kv_heads * shape.head_dim * F32


def runtime_prefill_bytes(shape: ModelShape, ctx: int) -> int:
    """The peak of a prompt micro-batch's forward pass that reaches `ctx` keys."""
    tokens = min(PREFILL_TOKENS, ctx)
    scores = SCORE_COPIES * shape.heads * tokens * (ctx + 1) * F32
    logits = tokens * shape.vocab * F32
    return max(scores, logits) + 4 * tokens * shape.hidden * F32


def runtime_memory(shape: ModelShape, weights: int, ctx: int) -> dict:
    kv = runtime_kv_bytes(shape, ctx)
    prefill = runtime_prefill_bytes(shape, ctx)
    return {"weights_bytes": weights, "kv_cache_bytes": kv, "activation_bytes": prefill,
            "total_bytes": weights + kv + prefill}
