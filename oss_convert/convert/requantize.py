"""Requantized GGUF plans: llama.cpp's converter followed by llama-quantize, in one pass.

The starting point is the lossless plan (the tensors llama.cpp's converter writes: MXFP4
experts, BF16 weights, F32 rest). Each tensor then gets the type llama-quantize's mixture
gives it, in llama-quantize's order; a tensor whose type does not change is copied, the
others are decoded to float32 (MXFP4 exactly, BF16 exactly) and encoded again. While it
writes, the plan measures what each requantized tensor lost against the source values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from gguf import GGMLQuantizationType as T

from ..checkpoint.safetensors_source import SafetensorsCheckpoint
from ..files.gguf import tensor_nbytes
from ..files.stream import CHUNK_BYTES
from ..formats import floats, mxfp4
from ..formats.registry import QUANTIZERS, encode
from ..metrics import ErrorStats
from .layout import Target, iter_chunks
from .lossless import PlannedTensor, plan_lossless
from .mixtures import MIXTURES, MixturePlanner, quantize_order

EXPERT_WEIGHTS = re.compile(r"_exps\.weight$")


@dataclass
class RequantPlan:
    mixture_key: str
    tensors: list[PlannedTensor]
    source_types: dict[str, T]  # what llama.cpp's converter would have written
    stats: dict[str, ErrorStats] = field(default_factory=dict)

    @property
    def file_type(self) -> int:
        return MIXTURES[self.mixture_key].file_type


def plan_requantized(ckpt: SafetensorsCheckpoint, mixture_key: str, keep_mxfp4_experts: bool = False) -> RequantPlan:
    mixture = MIXTURES[mixture_key]
    base = {p.name: p for p in plan_lossless(ckpt)}
    overrides = [(EXPERT_WEIGHTS, T.MXFP4)] if keep_mxfp4_experts else []
    planner = MixturePlanner(mixture, list(base), ckpt.config.num_layers, ckpt.config.num_experts, overrides)
    plan = RequantPlan(mixture_key, [], {n: p.type for n, p in base.items()})
    for name in quantize_order(list(base)):
        src = base[name]
        choice = planner.choose(name, src.shape, src.type)
        if choice.type == src.type:
            plan.tensors.append(PlannedTensor(name, src.type, src.shape, src.source,
                                              f"kept {src.type.name}: {choice.reason}", src.produce, src.target))
            continue
        if choice.type not in QUANTIZERS and choice.type not in (T.F16, T.F32, T.BF16):
            raise ValueError(f"{name}: no encoder for {choice.type.name}")
        stats = plan.stats.setdefault(name, ErrorStats())
        plan.tensors.append(PlannedTensor(
            name, choice.type, src.shape, src.source, f"{src.type.name} -> {choice.type.name}: {choice.reason}",
            lambda t=src.target, q=choice.type, s=stats: _requantized_chunks(t, q, s), src.target))
    return plan


def source_values(target: Target) -> Iterator[np.ndarray]:
    """The target's values as float32, decoded exactly from MXFP4 or BF16, in chunks."""
    for chunk in iter_chunks(target, CHUNK_BYTES // 4):
        if target.source.format == "MXFP4":
            yield mxfp4.decode_hf(*chunk)
        else:
            yield floats.to_float32(chunk, target.source.format)


def _requantized_chunks(target: Target, qtype: T, stats: ErrorStats) -> Iterator[np.ndarray]:
    codec = QUANTIZERS.get(qtype)
    for values in source_values(target):
        data = encode(values, qtype)
        restored = codec.dequantize(data) if codec else data.astype(np.float32)
        stats.add(values, restored.reshape(values.shape))
        yield data


def cost_report(plan: RequantPlan) -> dict:
    """Per requantized tensor error figures, and the bits per weight of the whole file."""
    tensors = []
    for p in plan.tensors:
        if p.name in plan.stats:
            tensors.append({"name": p.name, "from": plan.source_types[p.name].name, "to": p.type.name,
                            **plan.stats[p.name].report()})
    params = sum(math.prod(p.shape) for p in plan.tensors)
    nbytes = sum(tensor_nbytes(p.type, p.shape) for p in plan.tensors)
    return {"tensors": tensors, "bits_per_weight": 8 * nbytes / params if params else 0.0,
            "tensor_bytes": nbytes, "params": params}
