"""Tensor naming of every GPT-OSS layout we read, mapped to roles and to HF names.

The Hugging Face names are the canonical ones: the `original/` layout is translated to
them, and GGUF names (llama.cpp's `gpt-oss`, Ollama's older `gptoss`) map back to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .tensor import Role

_L = r"(?P<layer>\d+)"

# HF name pattern -> role. MXFP4 tensors appear here by their logical name (no _blocks/_scales).
HF_PATTERNS: list[tuple[re.Pattern, Role]] = [(re.compile(p), r) for p, r in [
    (r"model\.embed_tokens\.weight", Role.EMBEDDING),
    (r"model\.norm\.weight", Role.NORM),
    (r"lm_head\.weight", Role.OUTPUT),
    (rf"model\.layers\.{_L}\.(input_layernorm|post_attention_layernorm)\.weight", Role.NORM),
    (rf"model\.layers\.{_L}\.self_attn\.[qkvo]_proj\.(weight|bias)", Role.ATTENTION),
    (rf"model\.layers\.{_L}\.self_attn\.sinks", Role.SINKS),
    (rf"model\.layers\.{_L}\.mlp\.router\.(weight|bias)", Role.ROUTER),
    (rf"model\.layers\.{_L}\.mlp\.experts\.gate_up_proj", Role.EXPERT_GATE_UP),
    (rf"model\.layers\.{_L}\.mlp\.experts\.down_proj", Role.EXPERT_DOWN),
    (rf"model\.layers\.{_L}\.mlp\.experts\.(gate_up|down)_proj_bias", Role.EXPERT_BIAS),
]]

ORIGINAL_PATTERNS: list[tuple[re.Pattern, Role]] = [(re.compile(p), r) for p, r in [
    (r"embedding\.weight", Role.EMBEDDING),
    (r"norm\.scale", Role.NORM),
    (r"unembedding\.weight", Role.OUTPUT),
    (rf"block\.{_L}\.(attn|mlp)\.norm\.scale", Role.NORM),
    (rf"block\.{_L}\.attn\.(qkv|out)\.(weight|bias)", Role.ATTENTION),
    (rf"block\.{_L}\.attn\.sinks", Role.SINKS),
    (rf"block\.{_L}\.mlp\.gate\.(weight|bias)", Role.ROUTER),
    (rf"block\.{_L}\.mlp\.mlp1_weight", Role.EXPERT_GATE_UP),
    (rf"block\.{_L}\.mlp\.mlp2_weight", Role.EXPERT_DOWN),
    (rf"block\.{_L}\.mlp\.mlp[12]_bias", Role.EXPERT_BIAS),
]]

# Suffixes that split an MXFP4 logical tensor into its two stored parts, per layout.
MXFP4_SUFFIXES = {"hf": ("_blocks", "_scales"), "original": (".blocks", ".scales")}

# original/ name -> HF name, for everything but the fused qkv (split by `split_qkv`).
_ORIGINAL_TO_HF = [(re.compile(p), h) for p, h in [
    (r"^embedding\.weight$", "model.embed_tokens.weight"),
    (r"^norm\.scale$", "model.norm.weight"),
    (r"^unembedding\.weight$", "lm_head.weight"),
    (r"^block\.(\d+)\.attn\.norm\.scale$", r"model.layers.\1.input_layernorm.weight"),
    (r"^block\.(\d+)\.mlp\.norm\.scale$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^block\.(\d+)\.attn\.sinks$", r"model.layers.\1.self_attn.sinks"),
    (r"^block\.(\d+)\.attn\.out\.(weight|bias)$", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"^block\.(\d+)\.mlp\.gate\.(weight|bias)$", r"model.layers.\1.mlp.router.\2"),
    (r"^block\.(\d+)\.mlp\.mlp1_weight$", r"model.layers.\1.mlp.experts.gate_up_proj"),
    (r"^block\.(\d+)\.mlp\.mlp2_weight$", r"model.layers.\1.mlp.experts.down_proj"),
    (r"^block\.(\d+)\.mlp\.mlp1_bias$", r"model.layers.\1.mlp.experts.gate_up_proj_bias"),
    (r"^block\.(\d+)\.mlp\.mlp2_bias$", r"model.layers.\1.mlp.experts.down_proj_bias"),
]]
_ORIGINAL_QKV = re.compile(r"^block\.(\d+)\.attn\.qkv\.(weight|bias)$")


def classify(name: str, layout: str) -> tuple[Role, int | None]:
    """Role and layer of a logical tensor name in layout "hf" or "original"."""
    for pattern, role in (HF_PATTERNS if layout == "hf" else ORIGINAL_PATTERNS):
        m = pattern.fullmatch(name)
        if m:
            layer = m.groupdict().get("layer")
            return role, (int(layer) if layer is not None else None)
    return Role.OTHER, None


def original_to_hf(name: str) -> list[str]:
    """HF names that an original/ logical tensor becomes (three for a fused qkv)."""
    m = _ORIGINAL_QKV.match(name)
    if m:
        return [f"model.layers.{m[1]}.self_attn.{p}_proj.{m[2]}" for p in "qkv"]
    for pattern, repl in _ORIGINAL_TO_HF:
        if pattern.match(name):
            return [pattern.sub(repl, name)]
    return []


def hf_names(num_layers: int) -> list[str]:
    """Every logical tensor of an HF GPT-OSS checkpoint, MXFP4 ones without suffix."""
    per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight",
                 *(f"self_attn.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")),
                 "self_attn.sinks", "mlp.router.weight", "mlp.router.bias",
                 "mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj_bias",
                 "mlp.experts.down_proj", "mlp.experts.down_proj_bias"]
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    names += [f"model.layers.{i}.{n}" for i in range(num_layers) for n in per_layer]
    return names


def hf_storage_order(tensors: list) -> list:
    """The order the HF shards store tensors in: by name, an MXFP4 pair at its `_scales` part."""
    return sorted(tensors, key=lambda t: t.name + "_scales" if t.format == "MXFP4" else t.name)


# ------------------------------------------------------------------------ GGUF naming

@dataclass(frozen=True)
class GGUFName:
    """How an HF tensor is named in a GGUF layout, and what part of it the tensor holds."""

    gguf: str
    hf: str
    part: str = "all"  # "all", "gate" (even rows of gate_up), "up" (odd rows), "fused"


_LLAMA_CPP_LAYER: dict[str, list[str | tuple[str, str]]] = {
    "input_layernorm.weight": ["attn_norm.weight"],
    "post_attention_layernorm.weight": ["post_attention_norm.weight"],
    "self_attn.q_proj.weight": ["attn_q.weight"], "self_attn.q_proj.bias": ["attn_q.bias"],
    "self_attn.k_proj.weight": ["attn_k.weight"], "self_attn.k_proj.bias": ["attn_k.bias"],
    "self_attn.v_proj.weight": ["attn_v.weight"], "self_attn.v_proj.bias": ["attn_v.bias"],
    "self_attn.o_proj.weight": ["attn_output.weight"], "self_attn.o_proj.bias": ["attn_output.bias"],
    "self_attn.sinks": ["attn_sinks.weight"],
    "mlp.router.weight": ["ffn_gate_inp.weight"], "mlp.router.bias": ["ffn_gate_inp.bias"],
    "mlp.experts.gate_up_proj": [("ffn_gate_exps.weight", "gate"), ("ffn_up_exps.weight", "up")],
    "mlp.experts.gate_up_proj_bias": [("ffn_gate_exps.bias", "gate"), ("ffn_up_exps.bias", "up")],
    "mlp.experts.down_proj": ["ffn_down_exps.weight"],
    "mlp.experts.down_proj_bias": ["ffn_down_exps.bias"],
}
_OLLAMA_LAYER: dict[str, list[str | tuple[str, str]]] = {
    **_LLAMA_CPP_LAYER,
    "post_attention_layernorm.weight": ["ffn_norm.weight"],
    "self_attn.o_proj.weight": ["attn_out.weight"], "self_attn.o_proj.bias": ["attn_out.bias"],
    "self_attn.sinks": ["attn_sinks"],
    "mlp.experts.gate_up_proj": [("ffn_gate_up_exps.weight", "fused")],
    "mlp.experts.gate_up_proj_bias": [("ffn_gate_up_exps.bias", "fused")],
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_LAYOUTS = {"gpt-oss": _LLAMA_CPP_LAYER, "gptoss": _OLLAMA_LAYER}


def gguf_names(hf_name: str, layout: str = "gpt-oss") -> list[GGUFName]:
    """The GGUF tensor(s) that hold an HF tensor in a given GGUF layout."""
    if hf_name in _GLOBAL:
        return [GGUFName(_GLOBAL[hf_name], hf_name)]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if not m or m[2] not in GGUF_LAYOUTS[layout]:
        return []
    out = []
    for entry in GGUF_LAYOUTS[layout][m[2]]:
        gname, part = entry if isinstance(entry, tuple) else (entry, "all")
        out.append(GGUFName(f"blk.{m[1]}.{gname}", hf_name, part))
    return out


_GGUF_ROLES = [(re.compile(p), r) for p, r in [
    (r"token_embd\.weight", Role.EMBEDDING),
    (r"output_norm\.weight", Role.NORM),
    (r"output\.weight", Role.OUTPUT),
    (r"blk\.\d+\.(attn_norm|post_attention_norm|ffn_norm)\.weight", Role.NORM),
    (r"blk\.\d+\.attn_(q|k|v|output|out)\.(weight|bias)", Role.ATTENTION),
    (r"blk\.\d+\.attn_sinks(\.weight)?", Role.SINKS),
    (r"blk\.\d+\.ffn_gate_inp\.(weight|bias)", Role.ROUTER),
    (r"blk\.\d+\.ffn_gate_up_exps\.weight", Role.EXPERT_GATE_UP),
    (r"blk\.\d+\.ffn_gate_exps\.weight", Role.EXPERT_GATE),
    (r"blk\.\d+\.ffn_up_exps\.weight", Role.EXPERT_UP),
    (r"blk\.\d+\.ffn_down_exps\.weight", Role.EXPERT_DOWN),
    (r"blk\.\d+\.ffn_(gate_up|gate|up|down)_exps\.bias", Role.EXPERT_BIAS),
]]


def classify_gguf(name: str) -> tuple[Role, int | None]:
    m = re.match(r"blk\.(\d+)\.", name)
    layer = int(m[1]) if m else None
    for pattern, role in _GGUF_ROLES:
        if pattern.fullmatch(name):
            return role, layer
    return Role.OTHER, layer
