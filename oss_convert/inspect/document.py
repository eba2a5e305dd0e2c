"""What `inspect` reports: per-tensor facts and a summary, built from headers alone."""

from __future__ import annotations

import re
from collections import defaultdict

from ..checkpoint import Checkpoint, Role, Tensor
from ..errors import OssConvertError
from ..files.gguf import tensor_nbytes
from ..memory.context import DEFAULT_CONTEXT, ContextOptions
from ..memory.estimate import default_contexts, memory_estimate, model_shape
from ..plan.lossless import plan_lossless
from ..plan.mixtures import plan_mixture

QK_K = 256


def tensor_entry(t: Tensor) -> dict:
    return {"name": t.name, "role": t.role.value, "layer": t.layer, "format": t.format,
            "shape": list(t.shape), "nbytes": t.nbytes}


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


def format_summary(tensors: list[Tensor]) -> dict:
    by: defaultdict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "bytes": 0, "params": 0})
    for t in tensors:
        entry = by[t.format]
        entry["tensors"] += 1
        entry["bytes"] += t.nbytes
        entry["params"] += t.n_params
    return dict(sorted(by.items(), key=lambda kv: -kv[1]["bytes"]))


def kquant_summary(tensors: list[Tensor]) -> dict:
    """Which weight matrices have a row length (ne0) that K-quants can take."""
    weights = [t for t in tensors if len(t.shape) >= 2 and t.role in (
        Role.EMBEDDING, Role.OUTPUT, Role.ATTENTION, Role.EXPERT_GATE_UP, Role.EXPERT_GATE,
        Role.EXPERT_UP, Role.EXPERT_DOWN)]
    ok = [t for t in weights if t.row_length % QK_K == 0]
    fallback = [t for t in weights if t.row_length % QK_K]
    rows: defaultdict[int, int] = defaultdict(int)
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


def size_estimates(ckpt: Checkpoint) -> dict:
    """Tensor data of the lossless GGUF and of llama-quantize's Q4_K_M, planned from this checkpoint."""
    if not ckpt.has_mxfp4_experts():
        return {"unavailable": "the experts are not MXFP4: there is no lossless GGUF to plan from this checkpoint"}
    cfg = ckpt.require_config()
    try:
        lossless = plan_lossless(ckpt)
    except OssConvertError as e:
        return {"unavailable": str(e)}
    q4_k_m = plan_mixture(lossless, "q4_k_m", cfg)
    types: defaultdict[str, int] = defaultdict(int)
    for p in q4_k_m:
        types[p.type.name] += 1
    return {"mxfp4_gguf_tensor_bytes": sum(tensor_nbytes(p.type, p.shape) for p in lossless),
            "q4_k_m_gguf_tensor_bytes": sum(tensor_nbytes(p.type, p.shape) for p in q4_k_m),
            "q4_k_m_tensor_types": dict(types),
            "note": "tensor data only; the header (tokenizer) adds a few MB"}


def memory_summary(ckpt: Checkpoint, options: ContextOptions | None, explicit_context: bool,
                   gpu_memory: int | None) -> dict:
    """The plan at options.ctx, or, unless a context was asked for, at the default contexts."""
    try:
        return memory_estimate(ckpt, options or ContextOptions(DEFAULT_CONTEXT), gpu_memory=gpu_memory,
                           contexts=None if explicit_context else default_contexts(model_shape(ckpt)))
    except OssConvertError as e:
        return {"unavailable": str(e)}


def inspect_document(ckpt: Checkpoint, memory: ContextOptions | None = None, *, explicit_context: bool = False,
                   gpu_memory: int | None = None) -> dict:
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
        summary["memory"] = memory_summary(ckpt, memory, explicit_context, gpu_memory)
    source = {"path": ckpt.where, "kind": ckpt.kind, "layout": ckpt.layout_description,
              "files": [str(f) for f in ckpt.files]}
    if ckpt.metadata:
        summary["gguf"] = gguf_summary(ckpt)
    return {"source": source, "tensors": [tensor_entry(t) for t in tensors], "summary": summary}


def gguf_summary(ckpt: Checkpoint) -> dict:
    meta = ckpt.metadata
    experts = [t for t in ckpt.tensors if t.role.is_expert_weight]
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
    out: defaultdict[str, int] = defaultdict(int)
    for t in tensors:
        out[t.format] += 1
    return out
