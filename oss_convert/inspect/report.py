"""What `inspect` reports: per-tensor facts and a summary, built from headers alone."""

from __future__ import annotations

import re
from collections import defaultdict

from gguf import GGMLQuantizationType as T

from ..checkpoint import GGUFCheckpoint, LogicalTensor, Role, SafetensorsCheckpoint
from ..convert.lossless import plan_lossless
from ..convert.mixtures import MIXTURES, MixturePlanner, quantize_order
from ..errors import OssConvertError
from ..files.gguf import tensor_nbytes

QK_K = 256


def tensor_entry(t: LogicalTensor) -> dict:
    return {"name": t.name, "role": t.role.value, "layer": t.layer, "format": t.format,
            "shape": list(t.shape), "nbytes": t.nbytes}


def _expert_count(t: LogicalTensor) -> int:
    return t.shape[-1] if t.ggml_order else t.shape[0]


def parameter_summary(ckpt) -> dict:
    total = sum(t.n_params for t in ckpt.tensors)
    expert = sum(t.n_params for t in ckpt.tensors if t.role.is_expert_weight or t.role == Role.EXPERT_BIAS)
    embedding = sum(t.n_params for t in ckpt.tensors if t.role == Role.EMBEDDING)
    cfg = ckpt.config
    k, n = (cfg.experts_per_token, cfg.num_experts) if cfg else (None, None)
    active = round(total - embedding - expert + expert * k / n) if k and n else None
    return {"total_params": total, "expert_params": expert, "embedding_params": embedding,
            "active_params": active,
            "active_params_note": "per token: all non-expert weights except the embedding table, "
                                  "plus experts_per_token/num_experts of the expert weights"}


def format_summary(tensors: list[LogicalTensor]) -> dict:
    by = defaultdict(lambda: {"tensors": 0, "bytes": 0, "params": 0})
    for t in tensors:
        entry = by[t.format]
        entry["tensors"] += 1
        entry["bytes"] += t.nbytes
        entry["params"] += t.n_params
    return dict(sorted(by.items(), key=lambda kv: -kv[1]["bytes"]))


def kquant_summary(tensors: list[LogicalTensor]) -> dict:
    """Which weight matrices have a row length (ne0) that K-quants can take."""
    weights = [t for t in tensors if len(t.shape) >= 2 and t.role in (
        Role.EMBEDDING, Role.OUTPUT, Role.ATTENTION, Role.EXPERT_GATE_UP, Role.EXPERT_GATE,
        Role.EXPERT_UP, Role.EXPERT_DOWN)]
    ok = [t for t in weights if t.row_length % QK_K == 0]
    fallback = [t for t in weights if t.row_length % QK_K]
    rows = defaultdict(int)
    for t in fallback:
        rows[t.row_length] += 1
    return {
        "block": QK_K,
        "compatible": len(ok),
        "falls_back": len(fallback),
        "fallback_row_lengths": {str(k): v for k, v in sorted(rows.items())},
        "compatible_tensors": sorted({_group_name(t.name) for t in ok}),
        "fallback_tensors": sorted({_group_name(t.name) for t in fallback}),
        "note": "K-quants need ne0 % 256 == 0; llama-quantize substitutes Q4_K->Q5_0, Q5_K->Q5_1, "
                "Q6_K->Q8_0 for the others",
    }


def _group_name(name: str) -> str:
    return re.sub(r"(^|\.)\d+\.", r"\1N.", name)


def _mixture_bytes(items: list[tuple[str, tuple[int, ...], T]], n_layers: int, n_experts: int,
                   mixture: str) -> tuple[int, dict]:
    names = [n for n, _, _ in items]
    planner = MixturePlanner(MIXTURES[mixture], names, n_layers, n_experts)
    by_name = {n: (s, t) for n, s, t in items}
    total, types = 0, defaultdict(int)
    for name in quantize_order(names):
        shape, current = by_name[name]
        choice = planner.choose(name, shape, current)
        total += tensor_nbytes(choice.type, shape)
        types[choice.type.name] += 1
    return total, dict(types)


def size_estimates(ckpt) -> dict:
    cfg = ckpt.config
    if isinstance(ckpt, SafetensorsCheckpoint):
        try:
            items = [(p.name, p.shape, p.type) for p in plan_lossless(ckpt)]
        except OssConvertError as e:
            return {"unavailable": str(e)}
    elif ckpt.layout == "gpt-oss":
        items = [(t.name, t.shape, T(t.parts["data"].type)) for t in ckpt.tensors]
    else:
        return {}
    lossless = sum(tensor_nbytes(t, s) for _, s, t in items)
    q4km, q4km_types = _mixture_bytes(items, cfg.num_layers, cfg.num_experts, "q4_k_m")
    return {"mxfp4_gguf_tensor_bytes": lossless, "q4_k_m_gguf_tensor_bytes": q4km,
            "q4_k_m_tensor_types": q4km_types,
            "note": "tensor data only; the header (tokenizer) adds a few MB"}


def inspect_report(ckpt) -> dict:
    tensors = ckpt.tensors
    total_bytes = sum(t.nbytes for t in tensors)
    formats = format_summary(tensors)
    params = parameter_summary(ckpt)
    mxfp4_params = formats.get("MXFP4", {}).get("params", 0)
    summary = {
        "tensors": len(tensors),
        "bytes": total_bytes,
        "formats": formats,
        "mxfp4_param_share": mxfp4_params / params["total_params"] if params["total_params"] else 0.0,
        **params,
        "hyperparameters": ckpt.config.to_dict() if ckpt.config else None,
        "kquant": kquant_summary(tensors),
        "gpu_memory_bytes": total_bytes,
        "gpu_memory_note": "weights as stored (MXFP4 kept packed), without KV cache or activations",
    }
    if ckpt.config:
        summary["estimated_sizes"] = size_estimates(ckpt)
    source = {"path": str(ckpt.files[0] if len(ckpt.files) == 1 else ckpt.root),
              "kind": ckpt.kind, "files": [str(f) for f in ckpt.files]}
    if isinstance(ckpt, GGUFCheckpoint):
        source["layout"] = ckpt.layout_description
        summary["gguf"] = gguf_summary(ckpt)
    else:
        source["layout"] = {"hf": "Hugging Face", "original": "OpenAI original/"}[ckpt.layout]
    return {"source": source, "tensors": [tensor_entry(t) for t in tensors], "summary": summary}


def gguf_summary(ckpt: GGUFCheckpoint) -> dict:
    meta = ckpt.metadata
    experts = ckpt.expert_tensors()
    arch = ckpt.architecture
    hparams = {k[len(arch) + 1:]: v for k, v in meta.items() if arch and k.startswith(arch + ".")}
    return {
        "architecture": arch,
        "layout": ckpt.layout,
        "file_type": meta.get("general.file_type"),
        "name": meta.get("general.name"),
        "hyperparameters": hparams,
        "tokenizer_model": meta.get("tokenizer.ggml.model"),
        "tokenizer_pre": meta.get("tokenizer.ggml.pre"),
        "tokens": len(meta.get("tokenizer.ggml.tokens") or []),
        "chat_template": "tokenizer.chat_template" in meta,
        "expert_tensors": len(experts),
        "expert_tensors_mxfp4": sum(t.format == "MXFP4" for t in experts),
        "expert_types": dict(sorted(format_count(experts).items())),
    }


def format_count(tensors) -> dict:
    out = defaultdict(int)
    for t in tensors:
        out[t.format] += 1
    return out
