"""Running the model: each block by its fastest path here, with a KV cache (generation), or text in
windows with one layer's weights in memory at a time (compare --full).

A decode step on the CPU runs each block's attention in one C call and its MoE block in two,
updating the residual stream in place (no torch operation on it: each costs a step's streamed
weights tens of microseconds); every other case runs the model's torch composition, with the
MoE block on Triton where it runs on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...checkpoint import Checkpoint
from ...files.stream import release_freed_memory
from ...memory.runtime import PREFILL_TOKENS
from ..model.attention import StepInputs, step_inputs
from ..model.cache import KVCache
from ..model.norm import rms_norm
from ..model.rope import yarn_frequencies
from ..model.transformer import EMBEDDING, FINAL_NORM, UNEMBEDDING, DecoderBlock, Transformer
from ..weights.source import WeightSource
from . import decode
from .moe import run_moe


def load_model(ckpt: Checkpoint, device: torch.device, activations: str = "float32") -> Transformer:
    """Every weight at once, for generation; `activations`: how they meet the weights on the CPU
    (native.ACTIVATIONS)."""
    return Transformer.from_weights(WeightSource(ckpt, device, activations))


def run_block(block: DecoderBlock, x: torch.Tensor, step: StepInputs, cache: KVCache | None,
              backend: str = "auto") -> torch.Tensor:
    """x after the block. A decode step on the CPU updates x in place; the caller's x is consumed."""
    attention, moe = block.attention, block.moe
    if cache is not None and decode.attention_takes(attention, x, cache):
        h = decode.attention_one_token(attention, moe.norm, x, step, cache)
        return run_moe(moe, h, backend, residual=x)
    x = x + attention.forward(x, step, cache)
    return x + run_moe(moe, rms_norm(x, moe.norm, attention.eps), backend)


def forward(model: Transformer, tokens: torch.Tensor, cache: KVCache | None = None,
            backend: str = "auto") -> torch.Tensor:
    """Logits [T, V] (float32) for `tokens` following whatever the cache already holds."""
    step = model.step(cache.length if cache is not None else 0, tokens.shape[0])
    x = model.embed(tokens)
    for block in model.blocks:
        x = run_block(block, x, step, cache, backend)
    return model.unembed(x)


def prefill(model: Transformer, ids: list[int], cache: KVCache) -> torch.Tensor:
    """The prompt into the cache PREFILL_TOKENS at a time (llama.cpp's micro-batch), so that the
    attention scores of a long prompt are [heads, PREFILL_TOKENS, context], not [heads, prompt,
    prompt]; the logits of the last micro-batch."""
    for start in range(0, len(ids), PREFILL_TOKENS):
        logits = forward(model, torch.tensor(ids[start:start + PREFILL_TOKENS], device=model.device), cache)
    return logits


def streamed_logits(ckpt: Checkpoint, windows: list[torch.Tensor], device: torch.device, backend: str = "auto",
                    progress: Callable[[int], None] | None = None, activations: str = "float32") -> list[torch.Tensor]:
    """Logits [T, V] of each window of tokens, evaluated on its own (positions from 0), with one
    layer's weights in memory at a time: every window passes layer n before layer n + 1 is
    read, so a model larger than memory (120b: 61 GB of experts) runs in a few GB. The same
    operations in the same order as `forward` without a cache, so the same floats.
    `progress(layer)` is called as each layer is done."""
    source = WeightSource(ckpt, device, activations, resident=False)  # each matrix is used once a window
    cfg = source.config
    inv_freq, rope_scale = yarn_frequencies(cfg)
    inv_freq = inv_freq.to(device)
    steps = [step_inputs(cfg, inv_freq, rope_scale, torch.arange(len(w), device=device), len(w)) for w in windows]
    xs = [source.embedding_rows(EMBEDDING, w) for w in windows]
    for n in range(cfg.num_layers):
        block = DecoderBlock.from_weights(source, n)
        xs = [run_block(block, x, step, None, backend) for x, step in zip(xs, steps)]
        del block  # before the next layer is read
        release_freed_memory()
        if progress is not None:
            progress(n)
    final_norm, unembedding = source.floats(FINAL_NORM), source.matrix(UNEMBEDDING)
    return [unembedding.matmul(rms_norm(x, final_norm, cfg.rms_norm_eps)) for x in xs]
