"""GPT-OSS hyperparameters, read and validated from whichever place a checkpoint keeps them.

Every field is checked for its type and a sane range as it is read: config.json and GGUF
metadata come from strangers, and a wrong value here would otherwise surface minutes later
as a crash in the middle of a conversion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import OssConvertError

DEFAULT_SWIGLU_ALPHA = 1.702  # transformers' default; OpenAI's reference hard-codes it
DEFAULT_SWIGLU_LIMIT = 7.0
# Generous bounds: far beyond any released model, small enough that sizes computed from them
# stay sane (a vocabulary of 2^40 tokens is a corrupt file, not a model).
MAX_DIM = 1 << 20
MAX_CONTEXT = 1 << 31


@dataclass
class GptOssConfig:
    num_layers: int
    num_experts: int
    experts_per_token: int
    vocab_size: int | None
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
    swiglu_limit: float = DEFAULT_SWIGLU_LIMIT
    swiglu_alpha: float = DEFAULT_SWIGLU_ALPHA
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("raw")
        return d

    @classmethod
    def from_hf(cls, cfg: dict, where: str) -> GptOssConfig:
        f = _Fields(cfg, where)
        rope = f.table("rope_scaling")
        r = _Fields(rope, f"{where}: rope_scaling")
        experts = "num_local_experts" if "num_local_experts" in cfg else "num_experts"
        per_token = "num_experts_per_tok" if "num_experts_per_tok" in cfg else "experts_per_token"
        return _checked(cls(
            **_json_fields(f),
            num_experts=f.int(experts),
            experts_per_token=f.int(per_token),
            context_length=f.int("max_position_embeddings", 131072, hi=MAX_CONTEXT),
            rope_scaling_factor=r.float("factor", 1.0),
            rope_original_context=r.int("original_max_position_embeddings",
                                        f.int("initial_context_length", 4096, hi=MAX_CONTEXT), hi=MAX_CONTEXT),
            rope_beta_fast=r.float("beta_fast", None),
            rope_beta_slow=r.float("beta_slow", None),
            rms_norm_eps=f.float("rms_norm_eps", 1e-5, hi=1.0),
            raw=cfg,
        ), where)

    @classmethod
    def from_original(cls, cfg: dict, where: str) -> GptOssConfig:
        f = _Fields(cfg, where)
        factor = f.float("rope_scaling_factor", 32.0)
        initial = f.int("initial_context_length", 4096, hi=MAX_CONTEXT)
        return _checked(cls(
            **_json_fields(f),
            num_experts=f.int("num_experts"),
            experts_per_token=f.int("experts_per_token", 4),
            context_length=min(int(initial * factor), MAX_CONTEXT),
            rope_scaling_factor=factor,
            rope_original_context=initial,
            rope_beta_fast=f.float("rope_ntk_beta", 32.0),
            rope_beta_slow=f.float("rope_ntk_alpha", 1.0),
            raw=cfg,
        ), where)

    @classmethod
    def from_gguf(cls, meta: dict, arch: str, where: str) -> GptOssConfig:
        f = _Fields({k[len(arch) + 1:]: v for k, v in meta.items() if k.startswith(arch + ".")},
                    where, prefix=arch + ".")
        tokens = meta.get("tokenizer.ggml.tokens")
        return _checked(cls(
            num_layers=f.int("block_count"),
            num_experts=f.int("expert_count"),
            experts_per_token=f.int("expert_used_count"),
            vocab_size=len(tokens) if isinstance(tokens, list) and tokens else None,
            hidden_size=f.int("embedding_length"),
            intermediate_size=f.int("expert_feed_forward_length", f.int("feed_forward_length")),
            head_dim=f.int("attention.key_length", 64),
            num_heads=f.int("attention.head_count"),
            num_kv_heads=f.int("attention.head_count_kv"),
            sliding_window=f.int("attention.sliding_window", 128),
            context_length=f.int("context_length", 131072, hi=MAX_CONTEXT),
            rope_theta=f.float("rope.freq_base", 150000.0),
            rope_scaling_factor=f.float("rope.scaling.factor", 1.0),
            rope_original_context=f.int("rope.scaling.original_context_length", 4096, hi=MAX_CONTEXT),
            rope_beta_fast=f.float("rope.scaling.yarn_beta_fast", None),
            rope_beta_slow=f.float("rope.scaling.yarn_beta_slow", None),
            rms_norm_eps=f.float("attention.layer_norm_rms_epsilon", 1e-5, hi=1.0),
            # llama.cpp's gpt-oss GGUFs carry no SwiGLU keys: its runtime uses 7.0 and 1.702
            swiglu_limit=f.float("swiglu_limit", DEFAULT_SWIGLU_LIMIT),
            swiglu_alpha=f.float("swiglu_alpha", DEFAULT_SWIGLU_ALPHA),
            raw={k: v for k, v in meta.items() if not k.startswith("tokenizer.")},
        ), where)


def _json_fields(f: _Fields) -> dict:
    """The fields the HF config.json and OpenAI's original/ config.json name alike."""
    return dict(num_layers=f.int("num_hidden_layers"), vocab_size=f.int("vocab_size"),
                hidden_size=f.int("hidden_size"), intermediate_size=f.int("intermediate_size"),
                head_dim=f.int("head_dim", 64), num_heads=f.int("num_attention_heads"),
                num_kv_heads=f.int("num_key_value_heads"), sliding_window=f.int("sliding_window", 128),
                rope_theta=f.float("rope_theta", 150000.0),
                swiglu_limit=f.float("swiglu_limit", DEFAULT_SWIGLU_LIMIT),
                swiglu_alpha=f.float("swiglu_alpha", DEFAULT_SWIGLU_ALPHA))


class _Fields:
    """Typed, range-checked reads of one JSON object (or GGUF key group) for one config."""

    def __init__(self, table, where: str, prefix: str = ""):
        if not isinstance(table, dict):
            raise OssConvertError(f"{where}: expected an object, found {_kind(table)}")
        self.fields, self.where, self.prefix = table, where, prefix

    def _bad(self, key: str, want: str, value) -> OssConvertError:
        return OssConvertError(f"{self.where}: field {self.prefix + key!r} must be {want}, found {value!r}"[:400])

    def _get(self, key: str, default):
        value = self.fields.get(key, default)
        if value is _REQUIRED:
            raise OssConvertError(f"{self.where}: required field {self.prefix + key!r} is missing")
        return value

    def int(self, key: str, default=None, hi: int = MAX_DIM):
        default = _REQUIRED if default is None else default
        value = self._get(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
            raise self._bad(key, f"a whole number from 1 to {hi}", value)
        return value

    def float(self, key: str, default, hi: float = 1e12):
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 < value <= hi:
            raise self._bad(key, f"a positive number up to {hi:g}", value)
        return float(value)

    def table(self, key: str) -> dict:
        value = self.fields.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._bad(key, "an object", value)
        return value


_REQUIRED = object()


def _kind(value) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


def _checked(cfg: GptOssConfig, where: str) -> GptOssConfig:
    """Relations between fields that the architecture needs."""
    problems = []
    if cfg.experts_per_token > cfg.num_experts:
        problems.append(f"experts per token ({cfg.experts_per_token}) exceeds the expert count ({cfg.num_experts})")
    if cfg.num_heads % cfg.num_kv_heads:
        problems.append(f"{cfg.num_heads} attention heads do not divide into {cfg.num_kv_heads} KV heads")
    if cfg.head_dim % 2:
        problems.append(f"head_dim {cfg.head_dim} is odd (RoPE rotates pairs)")
    if problems:
        raise OssConvertError(f"{where}: not a usable GPT-OSS config: {problems[0]}")
    return cfg
