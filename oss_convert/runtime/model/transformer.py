"""The whole GPT-OSS model as math, from its weights:

    x = embed[tokens]
    for each block:  x += Attn(RMSNorm(x));  x += MoE(RMSNorm(x))
    logits = lm_head(RMSNorm(x))

`DecoderBlock.forward` and `Transformer.forward` are the plain torch composition; which faster
path each block takes when the model runs (the C decode step, Triton) is runtime.execution's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...checkpoint.config import GptOssConfig
from ..weights.matrices import Matrix
from ..weights.source import WeightSource
from .attention import AttentionBlock, StepInputs, step_inputs
from .cache import KVCache
from .moe import MoEBlock
from .norm import rms_norm
from .rope import yarn_frequencies

EMBEDDING, FINAL_NORM, UNEMBEDDING = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


@dataclass
class DecoderBlock:
    attention: AttentionBlock
    moe: MoEBlock

    @classmethod
    def from_weights(cls, source: WeightSource, layer: int) -> DecoderBlock:
        return cls(AttentionBlock.from_weights(source, layer), MoEBlock.from_weights(source, layer))

    def forward(self, x: torch.Tensor, step: StepInputs, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attention.forward(x, step, cache)
        return x + self.moe.forward(rms_norm(x, self.moe.norm, self.attention.eps))


@dataclass
class Transformer:
    config: GptOssConfig
    embedding: Matrix
    blocks: list[DecoderBlock]
    norm: torch.Tensor
    unembedding: Matrix
    inv_freq: torch.Tensor  # RoPE inverse frequencies, YaRN-blended
    rope_scale: float  # YaRN's attention factor on cos and sin
    device: torch.device

    @classmethod
    def from_weights(cls, source: WeightSource) -> Transformer:
        """Every weight at once, for generation (a KV cache needs all layers at every step). The
        embedding stays in the file's pages, a token's row read at a time (1.2 GB on the 20b)."""
        blocks = [DecoderBlock.from_weights(source, n) for n in range(source.config.num_layers)]
        inv_freq, rope_scale = yarn_frequencies(source.config)
        return cls(source.config, source.matrix(EMBEDDING, mapped=True), blocks, source.floats(FINAL_NORM),
                   source.matrix(UNEMBEDDING), inv_freq.to(source.device), rope_scale, source.device)

    def step(self, start: int, count: int) -> StepInputs:
        """The rotation and masks of `count` new positions after `start` held ones."""
        positions = torch.arange(start, start + count, device=self.device)
        return step_inputs(self.config, self.inv_freq, self.rope_scale, positions, start + count)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding.rows(tokens.to(self.device))

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [T, V] float32 of the last block's output."""
        return self.unembedding.matmul(rms_norm(x, self.norm, self.config.rms_norm_eps))

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [T, V] for `tokens` following what the cache holds, in plain torch."""
        start = cache.length if cache is not None else 0
        step, x = self.step(start, tokens.shape[0]), self.embed(tokens)
        for block in self.blocks:
            x = block.forward(x, step, cache)
        return self.unembed(x)
