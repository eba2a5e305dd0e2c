"""GGUF metadata for architecture `gpt-oss`, in the keys, types and order llama.cpp writes."""

from __future__ import annotations

import math

from gguf import GGML_QUANT_VERSION
from gguf.utility import size_label

from ..checkpoint.config import GptOssConfig
from ..checkpoint.tokenizer import GGUF_SPECIAL_KEYS, GPT_OSS_PRE_TOKENIZER, Vocab
from ..files.gguf import Value, ValueType

ARCH = "gpt-oss"
# llama_ftype values (include/llama.h)
FILE_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7, "BF16": 32, "MXFP4_MOE": 38}

_U32, _F32, _STR, _BOOL = ValueType.UINT32, ValueType.FLOAT32, ValueType.STRING, ValueType.BOOL


def parameter_counts(tensors: list[tuple[str, tuple[int, ...]]]) -> tuple[int, int, int, int]:
    """(total, shared, per-expert, expert count) as llama.cpp counts them for the size label.

    `tensors` are GGUF names with ggml shapes reversed (row-major), as gguf-py sees them.
    """
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for name, shape in tensors:
        size = math.prod(shape)
        if "_exps." in name and len(shape) >= 3:
            count = shape[-2 if ".bias" in name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    count = expert_sum // n_expert_tensors if n_expert_tensors else 0
    return total, shared, expert, count


def model_metadata(cfg: GptOssConfig, vocab: Vocab, *, name: str, file_type: int,
                   tensors: list[tuple[str, tuple[int, ...]]]) -> dict[str, Value]:
    p = f"{ARCH}."
    m: dict[str, Value] = {
        "general.architecture": Value(_STR, ARCH),
        "general.type": Value(_STR, "model"),
        "general.name": Value(_STR, name),
    }
    total, shared, expert, count = parameter_counts(tensors)
    if total > 0:
        m["general.size_label"] = Value(_STR, size_label(total, shared, expert, count))
    m |= {
        p + "block_count": Value(_U32, cfg.num_layers),
        p + "context_length": Value(_U32, cfg.context_length),
        p + "embedding_length": Value(_U32, cfg.hidden_size),
        p + "feed_forward_length": Value(_U32, cfg.intermediate_size),
        p + "attention.head_count": Value(_U32, cfg.num_heads),
        p + "attention.head_count_kv": Value(_U32, cfg.num_kv_heads),
    }
    if cfg.rope_scaling_factor and cfg.rope_scaling_factor != 1.0:
        m[p + "rope.scaling.type"] = Value(_STR, "yarn")
        m[p + "rope.scaling.factor"] = Value(_F32, float(cfg.rope_scaling_factor))
        m[p + "rope.scaling.original_context_length"] = Value(_U32, cfg.rope_original_context)
        if cfg.rope_beta_fast is not None:
            m[p + "rope.scaling.yarn_beta_fast"] = Value(_F32, float(cfg.rope_beta_fast))
        if cfg.rope_beta_slow is not None:
            m[p + "rope.scaling.yarn_beta_slow"] = Value(_F32, float(cfg.rope_beta_slow))
    m |= {
        p + "rope.freq_base": Value(_F32, float(cfg.rope_theta)),
        p + "attention.layer_norm_rms_epsilon": Value(_F32, float(cfg.rms_norm_eps)),
        p + "expert_count": Value(_U32, cfg.num_experts),
        p + "expert_used_count": Value(_U32, cfg.experts_per_token),
        p + "attention.key_length": Value(_U32, cfg.head_dim),
        p + "attention.value_length": Value(_U32, cfg.head_dim),
        "general.file_type": Value(_U32, file_type),
        p + "attention.sliding_window": Value(_U32, cfg.sliding_window),
        p + "expert_feed_forward_length": Value(_U32, cfg.intermediate_size),
        "general.quantization_version": Value(_U32, GGML_QUANT_VERSION),
    }
    m |= tokenizer_metadata(vocab)
    return m


def tokenizer_metadata(vocab: Vocab) -> dict[str, Value]:
    m = {
        "tokenizer.ggml.model": Value(_STR, "gpt2"),
        "tokenizer.ggml.pre": Value(_STR, GPT_OSS_PRE_TOKENIZER),
        "tokenizer.ggml.tokens": Value(ValueType.ARRAY, vocab.tokens, _STR),
        "tokenizer.ggml.token_type": Value(ValueType.ARRAY, vocab.token_types, ValueType.INT32),
    }
    if vocab.merges:
        m["tokenizer.ggml.merges"] = Value(ValueType.ARRAY, vocab.merges, _STR)
    for typ, tid in vocab.special_ids.items():
        m[f"tokenizer.ggml.{GGUF_SPECIAL_KEYS[typ]}"] = Value(_U32, tid)
    for typ, add in vocab.add_special.items():
        m[f"tokenizer.ggml.add_{typ}_token"] = Value(_BOOL, add)
    if vocab.chat_template is not None:
        m["tokenizer.chat_template"] = Value(_STR, vocab.chat_template)
    return m
