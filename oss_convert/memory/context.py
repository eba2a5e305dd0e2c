"""What a memory estimate is computed from: the model's shape and the context asked for."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OssConvertError

DEFAULT_CONTEXT = 8192  # estimated, with the model's maximum, when no context is asked for
KV_TYPES = ("f16", "bf16", "f32", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


@dataclass(frozen=True)
class ContextOptions:
    """A context as llama.cpp is asked for one: `ctx` cells in all (split between `parallel`
    sequences unless `kv_unified`), micro-batches of `ubatch` tokens, flash attention on
    (llama.cpp's automatic choice on CPU and CUDA)."""

    ctx: int
    kv_type: str = "f16"
    parallel: int = 1
    ubatch: int = 512
    batch: int = 2048
    swa_full: bool = False
    kv_unified: bool = False

    def __post_init__(self):
        if self.ctx < 1:
            raise OssConvertError(f"the context must be at least 1 token, not {self.ctx}")
        if self.kv_type not in KV_TYPES:
            raise OssConvertError(f"KV cache type {self.kv_type!r}: choose one of {', '.join(KV_TYPES)}")
        if self.parallel < 1 or self.ubatch < 1 or self.batch < 1:
            raise OssConvertError("--parallel, --ubatch and --batch must be at least 1")

    def with_ctx(self, ctx: int) -> ContextOptions:
        return ContextOptions(ctx, self.kv_type, self.parallel, self.ubatch, self.batch, self.swa_full,
                              self.kv_unified)


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that size buffers, with llama.cpp's vocabulary (the embedding's rows)."""

    layers: int
    experts: int
    experts_per_token: int
    hidden: int
    expert_ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    sliding_window: int
    max_context: int

    @property
    def swa_layers(self) -> int:
        """llama.cpp's gpt-oss pattern: layers 0, 2, 4, ... attend over the sliding window."""
        return (self.layers + 1) // 2

    @property
    def full_layers(self) -> int:
        return self.layers - self.swa_layers
