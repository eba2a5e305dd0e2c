"""The buffers libllama allocates for a gpt-oss model and context, sized as llama.cpp sizes them.

- model: the tensor data as stored in the GGUF (each tensor padded to the file's alignment);
- KV cache (src/llama-context.cpp, src/llama-kv-cache-iswa.cpp): the context is padded to 256
  cells, split evenly between sequences unless the cache is unified. Full-attention layers hold
  every cell; sliding-window layers hold GGML_PAD(min(cells, window x sequences sharing a
  stream + ubatch), 256), or every cell with --swa-full. K and V each take one row of the cache
  type per cell and stream;
- output (llama_context::output_reserve): float32 logits for one token per sequence;
- compute: what ggml's graph allocator reserves for the worst micro-batch. Not a closed form in
  llama.cpp (it is the high-water mark of a best-fit allocator over the graph), so it is modelled
  as the attention masks, which live across all layers, plus the largest set of tensors alive
  at once in a layer or in the output head, plus ALLOCATOR_SLACK for the gaps the allocator
  leaves (fitted to libllama: over fixture and full-size shapes, 1k to 128k cells, 1 and 4
  sequences, f16 and q8_0, the reported buffer is 0 to 10% above the live tensors).
"""

from __future__ import annotations

from gguf import GGMLQuantizationType

from ..files.gguf import tensor_nbytes
from .context import ContextOptions, ModelShape

CELL_PAD = 256  # llama.cpp pads n_ctx, n_ctx_seq and the SWA cache to this
BUFFER_ALIGNMENT = 32  # ggml's CPU buffers; KV tensors are allocated at this alignment
ALLOCATOR_SLACK = 1.05
F32 = 4


def pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def kv_cells(shape: ModelShape, opts: ContextOptions) -> dict:
    """Cells per stream of the full-attention and sliding-window caches, and the streams."""
    n_ctx = pad(opts.ctx, CELL_PAD)
    if opts.kv_unified:
        per_seq, streams = n_ctx, 1
    else:
        per_seq, streams = pad(n_ctx // opts.parallel or 1, CELL_PAD), opts.parallel
    ubatch = micro_batch(opts)
    window = shape.sliding_window * (opts.parallel if opts.kv_unified else 1) + ubatch
    swa = per_seq if opts.swa_full else pad(min(per_seq, window), CELL_PAD)
    return {"n_ctx": per_seq * streams, "full": per_seq, "swa": swa, "streams": streams, "ubatch": ubatch}


def micro_batch(opts: ContextOptions) -> int:
    """Tokens in the largest micro-batch: n_ubatch, capped by n_batch, capped by the context asked for."""
    return min(opts.ubatch, opts.batch, opts.ctx)


def kv_layer_bytes(shape: ModelShape, kv_type: str, cells: int, streams: int) -> int:
    """K and V of one layer: a row of the cache type per cell and stream, each tensor aligned."""
    ggml_type = GGMLQuantizationType[kv_type.upper()]
    one = tensor_nbytes(ggml_type, (shape.kv_heads * shape.head_dim * cells * streams,))
    return 2 * pad(one, BUFFER_ALIGNMENT)


def kv_cache(shape: ModelShape, opts: ContextOptions) -> dict:
    cells = kv_cells(shape, opts)
    full = shape.full_layers * kv_layer_bytes(shape, opts.kv_type, cells["full"], cells["streams"])
    swa = shape.swa_layers * kv_layer_bytes(shape, opts.kv_type, cells["swa"], cells["streams"])
    return {"bytes": full + swa, "full_attention_bytes": full, "sliding_window_bytes": swa,
            "cells": cells["full"], "swa_cells": cells["swa"], "streams": cells["streams"],
            "n_ctx": cells["n_ctx"], "ubatch": cells["ubatch"]}


def output_buffer(shape: ModelShape, opts: ContextOptions) -> int:
    return shape.vocab * max(1, opts.parallel) * F32


def compute_buffer(shape: ModelShape, opts: ContextOptions) -> int:
    """The graph allocator's reservation for the worst micro-batch (flash attention on)."""
    cells = kv_cells(shape, opts)
    t = cells["ubatch"]
    f16 = 2
    # inputs: token ids, positions, out ids (i32), cache row indices (i64, K and V, two caches),
    # and one f16 mask per cache [cells, tokens] (the tokens split between the streams)
    full_mask, swa_mask = cells["full"] * t * f16, cells["swa"] * t * f16
    small_inputs = 3 * t * 4 + 4 * t * 8
    hidden = shape.hidden * t * F32
    q = shape.heads * shape.head_dim * t * F32
    kv = shape.kv_heads * shape.head_dim * t * F32
    ffn = shape.expert_ffn * shape.experts_per_token * t * F32
    per_expert_out = shape.hidden * shape.experts_per_token * t * F32
    attention = max(
        2 * hidden + q + 2 * kv,  # the residual, the normed input, Q, K and V
        hidden + 2 * q,  # the residual, Q and the attention output
    )
    moe = max(
        2 * hidden + 3 * ffn,  # gate, up and their SwiGLU for every chosen expert
        hidden + ffn + 2 * per_expert_out,  # the down projection and its bias, per chosen expert
    )
    # In the MoE of layer 0 the sliding-window mask is dead when no windowed layer follows (a
    # 2-layer model); its space then goes to the MoE's tensors only if they fit in it.
    swa_mask_at_moe = swa_mask if shape.layers >= 3 or swa_mask < ffn else 0
    layers = max(full_mask + swa_mask + attention, full_mask + swa_mask_at_moe + moe) + small_inputs
    head = shape.vocab * t * F32 + 3 * hidden  # logits for every token of the micro-batch
    return round(max(layers, head) * ALLOCATOR_SLACK)


def llama_cpp_memory(shape: ModelShape, weights: int, opts: ContextOptions) -> dict:
    kv = kv_cache(shape, opts)
    output = output_buffer(shape, opts)
    compute = compute_buffer(shape, opts)
    return {"weights_bytes": weights, "kv_cache_bytes": kv["bytes"], "output_bytes": output,
            "compute_bytes": compute, "total_bytes": weights + kv["bytes"] + output + compute, "kv_cache": kv}
