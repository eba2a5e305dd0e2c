"""The port's metadata against the source config and tokenizer."""

from __future__ import annotations

import numpy as np

from ..checkpoint import Checkpoint
from ..checkpoint.tokenizer import GPT_OSS_PRE_TOKENIZER
from ..errors import OssConvertError


def _same(expected, found) -> bool:
    if isinstance(expected, float) or isinstance(found, float):
        # GGUF stores these as float32: compare at that precision
        return found is not None and np.float32(expected) == np.float32(found)
    return expected == found


def metadata_checks(src: Checkpoint, port: Checkpoint) -> list[dict]:
    cfg, meta, arch = src.require_config(), port.metadata, port.architecture
    checks: list[dict] = [{"key": "general.architecture", "expected": "gpt-oss (or Ollama's gptoss)", "found": arch,
                           "ok": arch in ("gpt-oss", "gptoss")}]
    expected: dict[str, int | float] = {
        "block_count": cfg.num_layers,
        "context_length": cfg.context_length,
        "embedding_length": cfg.hidden_size,
        "attention.head_count": cfg.num_heads,
        "attention.head_count_kv": cfg.num_kv_heads,
        "attention.key_length": cfg.head_dim,
        "attention.value_length": cfg.head_dim,
        "attention.layer_norm_rms_epsilon": float(cfg.rms_norm_eps),
        "attention.sliding_window": cfg.sliding_window,
        "expert_count": cfg.num_experts,
        "expert_used_count": cfg.experts_per_token,
        "rope.freq_base": float(cfg.rope_theta),
        "rope.scaling.factor": float(cfg.rope_scaling_factor),
        "rope.scaling.original_context_length": cfg.rope_original_context,
    }
    if port.layout == "gpt-oss":  # Ollama's older files do not carry it
        expected["expert_feed_forward_length"] = cfg.intermediate_size
    for key, value in expected.items():
        found = meta.get(f"{arch}.{key}")
        checks.append({"key": f"{arch}.{key}", "expected": value, "found": found, "ok": _same(value, found)})
    checks += _tokenizer_checks(src, port)
    return checks


def _tokenizer_checks(src: Checkpoint, port: Checkpoint) -> list[dict]:
    meta = port.metadata
    tokens = meta.get("tokenizer.ggml.tokens")
    tokens = tokens if isinstance(tokens, list) else []
    vocab_size = src.require_config().vocab_size
    checks: list[dict] = [
        {"key": "tokenizer.ggml.model", "expected": "gpt2", "found": meta.get("tokenizer.ggml.model"),
         "ok": meta.get("tokenizer.ggml.model") == "gpt2"},
        {"key": "tokenizer.ggml.tokens (count)", "expected": vocab_size, "found": len(tokens),
         "ok": len(tokens) == vocab_size},
        {"key": "tokenizer.chat_template", "expected": "present", "found":
         "present" if "tokenizer.chat_template" in meta else "absent", "ok": "tokenizer.chat_template" in meta},
    ]
    if port.layout == "gpt-oss":
        pre = meta.get("tokenizer.ggml.pre")
        checks.append({"key": "tokenizer.ggml.pre", "expected": GPT_OSS_PRE_TOKENIZER, "found": pre,
                       "ok": pre == GPT_OSS_PRE_TOKENIZER})
    try:
        vocab = src.vocab()
    except OssConvertError:
        return checks
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id"}
    for typ, tid in vocab.special_ids.items():
        if typ in names:
            key = f"tokenizer.ggml.{names[typ]}"
            checks.append({"key": key, "expected": tid, "found": meta.get(key), "ok": meta.get(key) == tid})
    if tokens:
        differ = sum(a != b for a, b in zip(vocab.tokens, tokens))
        checks.append({"key": "tokenizer.ggml.tokens (text)", "expected": "same as tokenizer.json",
                       "found": "same" if differ == 0 else f"{differ} tokens differ", "ok": differ == 0})
    return checks
