"""GPT-OSS hyperparameters, read from whichever place a checkpoint keeps them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GptOssConfig:
    num_layers: int
    num_experts: int
    experts_per_token: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    head_dim: int = 64
    num_heads: int = 64
    num_kv_heads: int = 8
    sliding_window: int = 128
    context_length: int = 131072
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_original_context: int = 4096
    rope_beta_fast: float | None = 32.0
    rope_beta_slow: float | None = 1.0
    rms_norm_eps: float = 1e-5
    swiglu_limit: float = 7.0
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("raw")
        return d

    @classmethod
    def from_hf(cls, cfg: dict) -> "GptOssConfig":
        rope = cfg.get("rope_scaling") or {}
        return cls(
            num_layers=cfg["num_hidden_layers"],
            num_experts=cfg.get("num_local_experts", cfg.get("num_experts")),
            experts_per_token=cfg.get("num_experts_per_tok", cfg.get("experts_per_token")),
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            head_dim=cfg.get("head_dim", 64),
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg["num_key_value_heads"],
            sliding_window=cfg.get("sliding_window", 128),
            context_length=cfg.get("max_position_embeddings", 131072),
            rope_theta=float(cfg.get("rope_theta", 150000.0)),
            rope_scaling_factor=float(rope.get("factor", 1.0)),
            rope_original_context=rope.get("original_max_position_embeddings", cfg.get("initial_context_length", 4096)),
            rope_beta_fast=rope.get("beta_fast"),
            rope_beta_slow=rope.get("beta_slow"),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            swiglu_limit=cfg.get("swiglu_limit", 7.0),
            raw=cfg,
        )

    @classmethod
    def from_original(cls, cfg: dict) -> "GptOssConfig":
        factor = float(cfg.get("rope_scaling_factor", 32.0))
        initial = cfg.get("initial_context_length", 4096)
        return cls(
            num_layers=cfg["num_hidden_layers"],
            num_experts=cfg["num_experts"],
            experts_per_token=cfg.get("experts_per_token", 4),
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            head_dim=cfg.get("head_dim", 64),
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg["num_key_value_heads"],
            sliding_window=cfg.get("sliding_window", 128),
            context_length=int(initial * factor),
            rope_theta=float(cfg.get("rope_theta", 150000.0)),
            rope_scaling_factor=factor,
            rope_original_context=initial,
            rope_beta_fast=float(cfg.get("rope_ntk_beta", 32.0)),
            rope_beta_slow=float(cfg.get("rope_ntk_alpha", 1.0)),
            swiglu_limit=cfg.get("swiglu_limit", 7.0),
            raw=cfg,
        )

    @classmethod
    def from_gguf(cls, meta: dict, arch: str) -> "GptOssConfig":
        def get(key, default=None):
            return meta.get(f"{arch}.{key}", default)

        tokens = meta.get("tokenizer.ggml.tokens")
        heads = get("attention.head_count")
        return cls(
            num_layers=get("block_count"),
            num_experts=get("expert_count"),
            experts_per_token=get("expert_used_count"),
            vocab_size=len(tokens) if tokens is not None else None,
            hidden_size=get("embedding_length"),
            intermediate_size=get("expert_feed_forward_length", get("feed_forward_length")),
            head_dim=get("attention.key_length", 64),
            num_heads=heads,
            num_kv_heads=get("attention.head_count_kv"),
            sliding_window=get("attention.sliding_window", 128),
            context_length=get("context_length"),
            rope_theta=get("rope.freq_base", 150000.0),
            rope_scaling_factor=get("rope.scaling.factor", 1.0),
            rope_original_context=get("rope.scaling.original_context_length", 4096),
            rope_beta_fast=get("rope.scaling.yarn_beta_fast"),
            rope_beta_slow=get("rope.scaling.yarn_beta_slow"),
            rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5),
            raw={k: v for k, v in meta.items() if not k.startswith("tokenizer.")},
        )
