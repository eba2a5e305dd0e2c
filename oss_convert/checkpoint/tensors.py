"""The logical view of a checkpoint that every command consumes.

A logical tensor is one weight of the model as the architecture sees it, whatever file
holds it: an MXFP4 `_blocks`/`_scales` pair is one tensor with its logical shape
`[E, 2I, H]`, a GGUF tensor is one tensor with its ggml type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class Role(str, Enum):
    EMBEDDING = "embedding"
    ATTENTION = "attention"
    SINKS = "sinks"
    ROUTER = "router"
    EXPERT_GATE_UP = "expert_gate_up"
    EXPERT_GATE = "expert_gate"
    EXPERT_UP = "expert_up"
    EXPERT_DOWN = "expert_down"
    EXPERT_BIAS = "expert_bias"
    NORM = "norm"
    OUTPUT = "output"
    OTHER = "other"

    @property
    def is_expert_weight(self) -> bool:
        return self in (Role.EXPERT_GATE_UP, Role.EXPERT_GATE, Role.EXPERT_UP, Role.EXPERT_DOWN)


@dataclass
class LogicalTensor:
    name: str
    role: Role
    layer: int | None
    format: str  # "MXFP4", "BF16", "F32", "U8" (unpaired), or a ggml type name
    shape: tuple[int, ...]  # safetensors: row-major logical shape; GGUF: ggml order
    nbytes: int  # bytes stored, scales included
    parts: dict = field(default_factory=dict)  # "data" or "blocks"/"scales" -> stored tensor
    ggml_order: bool = False  # True for GGUF tensors, whose shape lists ne0 first

    @property
    def n_params(self) -> int:
        return math.prod(self.shape)

    @property
    def row_length(self) -> int:
        """The contraction length: last dim in row-major order, ne0 in ggml order."""
        return self.shape[0] if self.ggml_order else self.shape[-1]
