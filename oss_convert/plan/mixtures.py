"""Per-tensor type choice of llama-quantize's mixtures, for the gpt-oss architecture.

Follows `tensor_allows_quantization`, `llama_tensor_get_type_impl` and
`tensor_type_fallback` in llama.cpp's src/llama-quant.cpp, restricted to the branches
that the supported mixtures reach on the gpt-oss architecture (real: 32 or 128 experts;
the 8-expert special cases apply to small fixtures), and records why each tensor got its type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from ..checkpoint.config import GptOssConfig
from .lossless import PlannedTensor


@dataclass(frozen=True)
class Mixture:
    name: str
    file_type: int  # llama_ftype
    default: T
    pure: bool = False


MIXTURES = {
    "q4_k_m": Mixture("Q4_K_M", 15, T.Q4_K),
    "q4_k_s": Mixture("Q4_K_S", 14, T.Q4_K),
    "q4_k": Mixture("Q4_K (pure)", 15, T.Q4_K, pure=True),  # llama-quantize --pure Q4_K_M
    "q5_k_m": Mixture("Q5_K_M", 17, T.Q5_K),
    "q5_k_s": Mixture("Q5_K_S", 16, T.Q5_K),
    "q6_k": Mixture("Q6_K", 18, T.Q6_K),
    "q8_0": Mixture("Q8_0", 7, T.Q8_0),
    "q4_0": Mixture("Q4_0", 2, T.Q4_0),
    "q5_0": Mixture("Q5_0", 8, T.Q5_0),
    "q5_1": Mixture("Q5_1", 9, T.Q5_1),
    "q4_1": Mixture("Q4_1", 3, T.Q4_1),
    "q2_k": Mixture("Q2_K", 10, T.Q2_K),
    "q3_k_s": Mixture("Q3_K_S", 11, T.Q3_K),
    "q3_k_m": Mixture("Q3_K_M", 12, T.Q3_K),
    "q3_k_l": Mixture("Q3_K_L", 13, T.Q3_K),
    "iq4_nl": Mixture("IQ4_NL", 25, T.IQ4_NL),
    "iq4_xs": Mixture("IQ4_XS", 30, T.IQ4_XS),
    "mxfp4_moe": Mixture("MXFP4_MOE", 38, T.MXFP4),
}
FALLBACKS = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.IQ4_XS: T.IQ4_NL}
# the mixtures whose attn_output an 8-expert model raises to Q5_K
ATTN_OUTPUT_Q5_K_ON_8_EXPERTS = {"Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS"}
# and what the others give it
ATTN_OUTPUT_MORE_BITS = {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}


def block_size(t: T) -> int:
    return GGML_QUANT_SIZES[t][0]


def is_quantized(t: T) -> bool:
    return t not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def not_quantized_reason(name: str, n_dims: int) -> str | None:
    if n_dims < 2:
        return "1-D tensors are not quantized"
    if not name.endswith("weight"):
        return "biases are not quantized"
    if "_norm.weight" in name:
        return "norms are not quantized"
    if "ffn_gate_inp.weight" in name:
        return "the router (ffn_gate_inp) is not quantized"
    return None


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass(frozen=True)
class Choice:
    type: T
    reason: str


class MixturePlanner:
    """Chooses types tensor by tensor, in llama-quantize's order (see `quantize_order`)."""

    def __init__(self, mixture: Mixture, names: list[str], n_layers: int, n_experts: int, n_gqa: int,
                 overrides: list[tuple[re.Pattern, T]] | None = None):
        self.mixture, self.n_layers, self.n_experts, self.n_gqa = mixture, n_layers, n_experts, n_gqa
        self.overrides = overrides or []
        self.n_attn_v = sum(category(n) in ("attn_v", "attn_qkv") for n in names)
        self.i_attn_v = 0
        self.tied_embeddings = "output.weight" not in names

    def choose(self, name: str, ggml_shape: tuple[int, ...], current: T) -> Choice:
        why_not = not_quantized_reason(name, len(ggml_shape))
        if why_not:
            return Choice(current, why_not)
        new, reason = self.mixture.default, f"{self.mixture.name} default"
        manual = next((t for p, t in self.overrides if p.search(name)), None)
        if manual is not None:
            new, reason = manual, "kept as requested"
        elif not self.mixture.pure:
            new, reason = self._mixture_rule(name, ggml_shape, new, reason)
        return self._fallback(ggml_shape[0], new, reason)

    def _mixture_rule(self, name: str, shape: tuple[int, ...], new: T, reason: str) -> tuple[T, str]:
        m, cat = self.mixture, category(name)
        if cat == "output" or (self.tied_embeddings and cat == "token_embd"):
            if m.default == T.MXFP4:
                return T.Q8_0, "MXFP4_MOE keeps the output tensor at Q8_0"
            if shape[0] % block_size(new):
                return T.Q8_0, f"output: ne0 = {shape[0]} is not a multiple of {block_size(new)}, so Q8_0"
            if new != T.Q8_0:
                return T.Q6_K, "output tensor gets Q6_K"
            return new, reason
        if m.default == T.MXFP4:
            if len(shape) > 2 and shape[2] > 1:
                return T.MXFP4, "MXFP4_MOE: expert tensors MXFP4"
            return T.Q8_0, "MXFP4_MOE: non-expert tensors Q8_0"
        if cat == "token_embd":
            return new, reason
        if cat in ("attn_v", "attn_qkv"):
            i = self.i_attn_v
            self.i_attn_v += 1
            if self.n_experts == 8:
                return T.Q8_0, "8-expert models keep attn_v at Q8_0"
            if m.name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, self.n_attn_v):
                return T.Q6_K, f"{m.name}: attn_v of layer {i} gets more bits (Q6_K)"
            if m.name == "Q4_K_S" and i < 4:
                return T.Q5_K, f"{m.name}: attn_v of the first 4 layers gets Q5_K"
            if m.name in ("IQ4_NL", "IQ4_XS") and self.n_gqa >= 4:
                return T.Q5_K, f"{m.name} with {self.n_gqa} query heads per KV head: attn_v gets Q5_K"
            if m.name == "Q2_K":
                return (T.Q4_K, f"Q2_K with {self.n_gqa} query heads per KV head: attn_v gets Q4_K") \
                    if self.n_gqa >= 4 else (T.Q3_K, "Q2_K: attn_v gets Q3_K")
            if m.name == "Q3_K_M":
                return (T.Q5_K, "Q3_K_M: attn_v of the first 2 layers gets Q5_K") if i < 2 else \
                    (T.Q4_K, "Q3_K_M: attn_v gets Q4_K")
            if m.name == "Q3_K_L":
                return T.Q5_K, "Q3_K_L: attn_v gets Q5_K"
            return new, reason
        if cat == "attn_k" and self.n_experts == 8:
            return T.Q8_0, "8-expert models keep attn_k at Q8_0"
        if cat == "attn_output" and self.n_experts == 8:
            if m.name in ATTN_OUTPUT_Q5_K_ON_8_EXPERTS:
                return T.Q5_K, f"{m.name} on an 8-expert model: attn_output gets Q5_K"
        elif cat == "attn_output" and m.name in ATTN_OUTPUT_MORE_BITS:
            more = ATTN_OUTPUT_MORE_BITS[m.name]
            return more, f"{m.name}: attn_output gets {more.name}"
        if cat == "ffn_down":
            layer = int(name.split(".")[1])  # blk.N.ffn_down...
            if m.name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(layer, self.n_layers):
                return T.Q6_K, f"{m.name}: ffn_down of layer {layer} gets more bits (Q6_K)"
            if m.name in ("Q4_K_S", "IQ4_NL", "IQ4_XS") and layer < self.n_layers // 8:
                return T.Q5_K, f"{m.name}: ffn_down of the first n_layer/8 layers gets Q5_K"
            if m.name == "Q2_K":
                return T.Q3_K, "Q2_K: ffn_down gets Q3_K"
            if m.name == "Q3_K_M":
                return (T.Q5_K, "Q3_K_M: ffn_down of the first n_layer/16 layers gets Q5_K") \
                    if layer < self.n_layers // 16 else (T.Q4_K, "Q3_K_M: ffn_down gets Q4_K")
            if m.name == "Q3_K_L":
                return T.Q5_K, "Q3_K_L: ffn_down gets Q5_K"
        return new, reason

    @staticmethod
    def _fallback(ne0: int, new: T, reason: str) -> Choice:
        if ne0 % block_size(new) == 0:
            return Choice(new, reason)
        target = FALLBACKS.get(new, new if block_size(new) <= 32 else None)
        if target is None:
            raise ValueError(f"no fallback for {new.name}")
        why = f"ne0 = {ne0} is not a multiple of {block_size(new)}: {new.name} falls back to {target.name}"
        if ne0 % block_size(target):
            target, why = T.F16, f"ne0 = {ne0} fits no block size of {new.name} or its fallback: F16"
        return Choice(target, f"{reason}; {why}")


def quantize_order(names: list[str]) -> list[str]:
    """llama-quantize's tensor order: non-layer tensors first, then by layer, by name within."""
    def key(n: str):
        m = re.match(r"blk\.(\d+)\.", n)
        return (int(m[1]) if m else -1, n)
    return sorted(names, key=key)


EXPERT_WEIGHTS = re.compile(r"_exps\.weight$")


def plan_mixture(base: list[PlannedTensor], mixture_key: str, cfg: GptOssConfig,
                 keep_mxfp4_experts: bool = False) -> list[PlannedTensor]:
    """The lossless plan as llama-quantize rewrites it with a mixture: its types and its order,
    each tensor with the type it had and why it has its new one."""
    by_name = {p.name: p for p in base}
    overrides = [(EXPERT_WEIGHTS, T.MXFP4)] if keep_mxfp4_experts else []
    planner = MixturePlanner(MIXTURES[mixture_key], list(by_name), cfg.num_layers, cfg.num_experts,
                             cfg.num_heads // cfg.num_kv_heads, overrides)
    plan = []
    for name in quantize_order(list(by_name)):
        src = by_name[name]
        choice = planner.choose(name, src.shape, src.type)
        reason = (f"kept {src.type.name}: {choice.reason}" if choice.type == src.type
                  else f"{src.type.name} -> {choice.type.name}: {choice.reason}")
        plan.append(PlannedTensor(name, choice.type, src.shape, src.source, reason, src.target, src.type))
    return plan
