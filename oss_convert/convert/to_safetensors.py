"""GGUF (gpt-oss layout) -> Hugging Face checkpoint folder, the inverse of the lossless path.

MXFP4 experts are unpacked to `_blocks`/`_scales` with gate and up re-interleaved, BF16
stays BF16, F32 tensors that came from BF16 narrow back exactly. config.json and the
tokenizer files are rebuilt from the GGUF metadata.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from tqdm import tqdm

from ..checkpoint import GGUFCheckpoint, open_checkpoint
from ..checkpoint.config import GptOssConfig
from ..checkpoint.names import gguf_names
from ..errors import OssConvertError
from ..files.atomic import atomic_path
from ..files.gguf import GGUFTensor
from ..files.safetensors import TensorToWrite, write_file
from ..formats import floats, mxfp4
from ..formats.registry import decode
from .layout import interleave_rows
from .vocab import (
    CONTROL,
    NORMAL,
    UNUSED,
    USER_DEFINED,
    added_tokens_decoder,
    tokenizer_json,
)


def hf_names(cfg: GptOssConfig) -> list[str]:
    """Every logical tensor of an HF GPT-OSS checkpoint, MXFP4 ones without suffix."""
    per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight",
                 *(f"self_attn.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")),
                 "self_attn.sinks", "mlp.router.weight", "mlp.router.bias",
                 "mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj_bias",
                 "mlp.experts.down_proj", "mlp.experts.down_proj_bias"]
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    names += [f"model.layers.{i}.{n}" for i in range(cfg.num_layers) for n in per_layer]
    return names


def _values(t: GGUFTensor) -> np.ndarray:
    """A float GGUF tensor's values as float32, row-major (ggml shape reversed)."""
    if t.type not in (T.F32, T.BF16, T.F16, T.Q8_0):
        raise OssConvertError(f"{t.path}: {t.name} is {t.type_name}; --to safetensors takes lossless GGUFs "
                              "(MXFP4 experts, F32/BF16/F16/Q8_0 elsewhere)")
    return decode(t.raw(), t.type).reshape(tuple(reversed(t.shape)))


def _bf16(t: GGUFTensor) -> np.ndarray:
    if t.type == T.BF16:
        return t.raw().view(np.uint16).reshape(tuple(reversed(t.shape)))
    return floats.float32_to_bf16(_values(t))


def _mxfp4_parts(t: GGUFTensor, expert: int) -> tuple[np.ndarray, np.ndarray]:
    if t.type != T.MXFP4:
        raise OssConvertError(f"{t.path}: {t.name} is {t.type_name}, not MXFP4; --to safetensors keeps "
                              "the FP4 bits and cannot re-encode requantized experts")
    return mxfp4.ggml_to_hf(t.read(expert, expert + 1))


def _stored_tensors(ckpt: GGUFCheckpoint) -> list[TensorToWrite]:
    cfg = ckpt.config
    g = ckpt.gguf.tensors
    out = []

    def find(name: str) -> GGUFTensor:
        if name not in g:
            raise OssConvertError(f"{ckpt.files[0]}: tensor {name!r} is missing")
        return g[name]

    for hf in hf_names(cfg):
        names = gguf_names(hf, "gpt-oss")
        srcs = [find(n.gguf) for n in names]
        if hf.endswith(("gate_up_proj", "down_proj")):
            E = cfg.num_experts
            rows = sum(s.shape[1] for s in srcs)
            groups = srcs[0].shape[0] // 32

            def blocks(srcs=srcs):
                for e in range(E):
                    parts = [_mxfp4_parts(s, e) for s in srcs]
                    yield parts[0][0] if len(parts) == 1 else interleave_rows(parts[0][0], parts[1][0])

            def scales(srcs=srcs):
                for e in range(E):
                    parts = [_mxfp4_parts(s, e) for s in srcs]
                    yield parts[0][1] if len(parts) == 1 else interleave_rows(parts[0][1], parts[1][1])

            out.append(TensorToWrite(hf + "_blocks", "U8", (E, rows, groups, 16), blocks))
            out.append(TensorToWrite(hf + "_scales", "U8", (E, rows, groups), scales))
            continue
        shape = tuple(reversed(srcs[0].shape))
        if len(srcs) == 2:  # gate/up biases
            shape = shape[:-1] + (shape[-1] * 2,)
            produce = (lambda srcs=srcs: interleave_rows(_bf16(srcs[0]), _bf16(srcs[1])))
        else:
            produce = (lambda s=srcs[0]: _bf16(s))
        out.append(TensorToWrite(hf, "BF16", shape, produce))
    return sorted(out, key=lambda t: t.name)


def hf_config(cfg: GptOssConfig, meta: dict) -> dict:
    special = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
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
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }
    if special["eos"] is not None:
        config["eos_token_id"] = special["eos"]
    if special["padding"] is not None:
        config["pad_token_id"] = special["padding"]
    return dict(sorted(config.items()))


def tokenizer_files(meta: dict) -> dict[str, str]:
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    vocab, added = {}, []
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ == UNUSED:
            continue
        if typ in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": typ == CONTROL})
        elif typ == NORMAL:
            vocab[tok] = i
    merges = [m.split(" ") for m in meta.get("tokenizer.ggml.merges", [])]
    tokenizer = tokenizer_json(vocab, merges, added)

    def content(key):
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[tid] if tid is not None and tid < len(tokens) else None

    tok_config = {"added_tokens_decoder": added_tokens_decoder(added),
        "bos_token": content("bos"), "clean_up_tokenization_spaces": False, "eos_token": content("eos"),
        "model_input_names": ["input_ids", "attention_mask"], "pad_token": content("padding"),
        "tokenizer_class": "PreTrainedTokenizerFast"}
    generation = {"bos_token_id": meta.get("tokenizer.ggml.bos_token_id"), "do_sample": True,
                  "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
                  "pad_token_id": meta.get("tokenizer.ggml.padding_token_id")}
    files = {"tokenizer.json": json.dumps(tokenizer, indent=2, ensure_ascii=False) + "\n",
             "tokenizer_config.json": json.dumps(tok_config, indent=2) + "\n",
             "generation_config.json": json.dumps(generation, indent=2) + "\n"}
    if "tokenizer.chat_template" in meta:
        files["chat_template.jinja"] = meta["tokenizer.chat_template"]
    return files


def convert_to_safetensors(src, out: Path, *, force: bool = False, show_progress: bool | None = None) -> dict:
    ckpt = open_checkpoint(src)
    if not isinstance(ckpt, GGUFCheckpoint):
        raise OssConvertError(f"{src}: --to safetensors takes a GGUF file")
    if ckpt.layout != "gpt-oss":
        raise OssConvertError(f"{src}: architecture {ckpt.architecture!r}; --to safetensors takes llama.cpp's "
                              "gpt-oss layout")
    tensors = _stored_tensors(ckpt)
    total = sum(t.nbytes for t in tensors)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    with atomic_path(out, force, directory=True) as tmp:
        with open(tmp / "model.safetensors", "wb") as f, \
                tqdm(total=total, unit="B", unit_scale=True, disable=not show_progress) as bar:
            write_file(f, tensors, {"format": "pt"}, on_bytes=bar.update)
        (tmp / "config.json").write_text(json.dumps(hf_config(ckpt.config, ckpt.metadata), indent=2) + "\n")
        for name, text in tokenizer_files(ckpt.metadata).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return {"output": str(out), "bytes": total, "tensors": len(tensors)}



