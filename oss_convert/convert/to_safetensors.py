"""A GPT-OSS checkpoint with MXFP4 experts (a lossless GGUF of either layout, or OpenAI's
original/) -> Hugging Face checkpoint folder, the inverse of the lossless path.

MXFP4 experts go back to `_blocks`/`_scales` (gate and up re-interleaved), BF16 stays BF16,
F32 tensors that came from BF16 narrow back exactly. config.json and the tokenizer files are
rebuilt from the checkpoint's config and vocabulary.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checkpoint import Checkpoint, Tensor
from ..checkpoint.config import DEFAULT_SWIGLU_ALPHA, GptOssConfig
from ..checkpoint.tensor import FLOAT_FORMATS
from ..checkpoint.tokenizer import Vocab, tokenizer_files
from ..errors import OssConvertError
from ..files.atomic import atomic_path
from ..files.safetensors import SafetensorsWriteTensor, write_file
from ..formats import floats

# Non-expert formats that come back as BF16: the floats exactly, Q8_0 (--outtype q8_0) as close as it can
NARROWABLE = FLOAT_FORMATS + ("Q8_0",)


def _hf_part(t: Tensor, part: int) -> Callable[[], Iterator[np.ndarray]]:
    """An MXFP4 tensor's HF blocks (part 0) or scales (part 1), expert by expert."""
    return lambda: (t.hf_mxfp4(t.read(e, e + 1))[part] for e in range(t.shape[0]))


def _bf16_words(t: Tensor) -> np.ndarray:
    if t.format == "BF16":
        return np.asarray(t.read())
    return floats.float32_to_bf16(t.values())


def _write_plan(ckpt: Checkpoint) -> list[SafetensorsWriteTensor]:
    """Every tensor of the HF checkpoint, checked before anything is written."""
    out = []
    for t in ckpt.model_tensors:
        if t.role.is_expert_weight:
            if t.format != "MXFP4":
                raise OssConvertError(f"{t.where}: {t.stored_name} is {t.format}, not MXFP4; --to safetensors keeps "
                                      "the FP4 bits and cannot re-encode requantized experts")
            E, rows, K = t.shape
            out.append(SafetensorsWriteTensor(t.name + "_blocks", "U8", (E, rows, K // 32, 16), _hf_part(t, 0)))
            out.append(SafetensorsWriteTensor(t.name + "_scales", "U8", (E, rows, K // 32), _hf_part(t, 1)))
            continue
        if t.format not in NARROWABLE:
            raise OssConvertError(f"{t.where}: {t.stored_name} is {t.format}; --to safetensors takes lossless "
                                  "checkpoints (MXFP4 experts, F32/BF16/F16/Q8_0 elsewhere)")
        out.append(SafetensorsWriteTensor(t.name, "BF16", t.shape, functools.partial(_bf16_words, t)))
    return sorted(out, key=lambda t: t.name)


def hf_config(cfg: GptOssConfig, vocab: Vocab) -> dict:
    special = vocab.special_ids
    config = {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "experts_per_token": cfg.experts_per_token,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initial_context_length": cfg.rope_original_context,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(cfg.num_layers)],
        "max_position_embeddings": cfg.context_length,
        "model_type": "gpt_oss",
        "num_attention_heads": cfg.num_heads,
        "num_experts_per_tok": cfg.experts_per_token,
        "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads,
        "num_local_experts": cfg.num_experts,
        "output_router_logits": False,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4"},
        "rms_norm_eps": float(np.float32(cfg.rms_norm_eps).round(10)),
        "rope_scaling": {"beta_fast": cfg.rope_beta_fast, "beta_slow": cfg.rope_beta_slow,
                         "factor": cfg.rope_scaling_factor,
                         "original_max_position_embeddings": cfg.rope_original_context,
                         "rope_type": "yarn", "truncate": False},
        "rope_theta": cfg.rope_theta,
        "router_aux_loss_coef": 0.9,
        "sliding_window": cfg.sliding_window,
        "swiglu_limit": cfg.swiglu_limit,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }
    if cfg.swiglu_alpha != DEFAULT_SWIGLU_ALPHA:
        config["swiglu_alpha"] = cfg.swiglu_alpha
    if special.get("eos") is not None:
        config["eos_token_id"] = special["eos"]
    if special.get("pad") is not None:
        config["pad_token_id"] = special["pad"]
    return dict(sorted(config.items()))


def convert_to_safetensors(ckpt: Checkpoint, out: Path, *, force: bool = False,
                           show_progress: bool | None = None) -> dict:
    cfg = ckpt.require_config()
    tensors = _write_plan(ckpt)
    vocab = ckpt.vocab()
    total = sum(t.nbytes for t in tensors)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    with atomic_path(out, force, directory=True) as tmp:
        with open(tmp / "model.safetensors", "wb") as f, \
                tqdm(total=total, unit="B", unit_scale=True, disable=not show_progress) as bar:
            write_file(f, tensors, {"format": "pt"}, on_bytes=bar.update)
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, vocab), indent=2) + "\n")
        for name, text in tokenizer_files(vocab).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return {"output": str(out), "bytes": total, "tensors": len(tensors)}
