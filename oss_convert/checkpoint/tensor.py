"""One weight of the model as the architecture sees it, whatever file holds it.

An MXFP4 `_blocks`/`_scales` pair is one tensor of logical shape `[E, 2I, H]`; a GGUF tensor
is one tensor with its ggml type; GGUF's split gate and up are one tensor again under the HF
name. Shapes are always row-major (the last axis is the row, the contraction axis; ggml
lists the same dimensions in reverse).

A tensor gives its data in its *stored form*, slices of whole rows of the first axis:
- MXFP4 in safetensors: (blocks [..., G, 16], scales [..., G]) in the HF nibble order;
- F32 / F16: float32 / float16 arrays; BF16 (and other safetensors integers): their words;
- any ggml block type, MXFP4 in a GGUF included: its bytes, one row of blocks per row
  [..., row bytes] (whole rows, so gate and up interleave and experts slice alike).
`decode` turns a stored form into float32 values, `hf_mxfp4` an MXFP4 one into HF blocks and
scales whatever its layout; `read` takes fresh memory by positioned reads (streaming), `view`
memory-mapped pages (the runtime's experts, decoded when used).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import cast

import numpy as np
from gguf import GGMLQuantizationType as T

from ..errors import OssConvertError
from ..formats import floats, mxfp4
from ..formats.mxfp4 import OLLAMA_MXFP4
from ..formats.registry import decode

FLOAT_FORMATS = ("F32", "F16", "BF16", "F64")


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


Stored = np.ndarray | tuple[np.ndarray, np.ndarray]


@dataclass(eq=False)
class Tensor:
    name: str
    role: Role
    layer: int | None
    format: str  # "MXFP4", a float format (F32, F16, BF16), a safetensors dtype or a ggml type name
    shape: tuple[int, ...]  # row-major
    nbytes: int  # bytes stored, MXFP4 scales included
    where: str  # the file, for messages
    reader: Callable[[int, int], Stored]  # rows [start, stop) of axis 0, fresh memory
    viewer: Callable[[int], Stored]  # row i of axis 0 (an expert), memory-mapped
    ggml_type: int | None = None  # the type code, for tensors stored in a GGUF
    stored_name: str = ""  # the name in the file, where it differs (for messages)
    interleaved: tuple[Tensor, Tensor] | None = None  # the gate and up this gate_up's rows alternate
    mapper: Callable[[], Stored] | None = None  # the whole stored form, memory-mapped (where it is one piece)

    def __post_init__(self):
        self.stored_name = self.stored_name or self.name

    @property
    def n_params(self) -> int:
        return math.prod(self.shape)

    @property
    def row_length(self) -> int:
        """The contraction length (ggml's ne0)."""
        return self.shape[-1] if self.shape else 1

    @property
    def ggml_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    def read(self, start: int = 0, stop: int | None = None) -> Stored:
        return self.reader(start, self.shape[0] if stop is None else stop)

    def view(self, i: int) -> Stored:
        return self.viewer(i)

    def mapped(self) -> Stored:
        """The whole stored form as a read-only view of the file's pages (else read into memory)."""
        return self.mapper() if self.mapper is not None else self.read()

    def hf_mxfp4(self, stored: Stored) -> tuple[np.ndarray, np.ndarray]:
        """HF blocks and scales of (part of) an MXFP4 tensor's stored form, from any layout."""
        if self.ggml_type == T.MXFP4:
            return mxfp4.ggml_to_hf(cast(np.ndarray, stored))
        if self.ggml_type == OLLAMA_MXFP4:
            return mxfp4.ollama_to_hf(cast(np.ndarray, stored))
        return cast(tuple[np.ndarray, np.ndarray], stored)  # safetensors' pair

    def decode(self, stored: Stored) -> np.ndarray:
        """float32 values of (part of) this tensor's stored form, exactly as its codec defines them."""
        if self.format == "MXFP4":
            return mxfp4.decode_hf(*self.hf_mxfp4(stored))
        stored = cast(np.ndarray, stored)  # (only MXFP4 comes as a pair)
        if self.format in FLOAT_FORMATS:
            return floats.to_float32(stored, self.format)
        if self.ggml_type is None:
            raise OssConvertError(f"{self.where}: {self.stored_name} is {self.format}, not a weight format")
        try:
            values = decode(stored, self.ggml_type)
        except (ValueError, NotImplementedError):
            raise OssConvertError(f"{self.where}: {self.stored_name} is {self.format}, which has no dequantizer "
                                  "here") from None
        return values.reshape(np.shape(stored)[:-1] + (-1,))

    def values(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.decode(self.read(start, stop))

    def renamed(self, name: str, role: Role, layer: int | None) -> Tensor:
        return dataclasses.replace(self, name=name, role=role, layer=layer)


def interleave_rows(gate: Stored, up: Stored, axis: int = 1) -> Stored:
    """gate rows at even, up rows at odd positions of `axis` (MXFP4: of blocks and scales alike)."""
    if isinstance(gate, tuple):
        blocks, scales = (cast(np.ndarray, interleave_rows(g, u, axis)) for g, u in zip(gate, up))
        return blocks, scales
    shape = list(gate.shape)
    shape[axis] *= 2
    out = np.empty(shape, gate.dtype)
    index = [slice(None)] * gate.ndim
    for half, offset in ((gate, 0), (up, 1)):
        index[axis] = slice(offset, None, 2)
        out[tuple(index)] = half
    return out


def fused_gate_up(name: str, role: Role, layer: int, gate: Tensor, up: Tensor) -> Tensor:
    """GGUF's split gate and up as HF's one gate_up tensor, rows interleaved (ggml quantizes each
    row on its own, so rows move intact whatever the type)."""
    if gate.shape != up.shape or len(gate.shape) < 2:
        raise OssConvertError(f"{gate.where}: {gate.name} {list(gate.shape)} and {up.name} {list(up.shape)} "
                              "do not pair as gate and up")
    shape = (gate.shape[0], gate.shape[1] * 2) + gate.shape[2:]
    if gate.format != up.format:  # a mixture may type them apart: a fine file, but not one tensor
        def unreadable(*_):
            raise OssConvertError(f"{gate.where}: {gate.name} is {gate.format} and {up.name} {up.format}; "
                                  "gate and up of different types cannot be read as one gate_up tensor")
        return Tensor(name, role, layer, f"{gate.format}+{up.format}", shape, gate.nbytes + up.nbytes, gate.where,
                      unreadable, unreadable, None, f"{gate.name} and {up.name}")
    return Tensor(name, role, layer, gate.format, shape, gate.nbytes + up.nbytes, gate.where,
                  lambda start, stop: interleave_rows(gate.read(start, stop), up.read(start, stop)),
                  lambda i: interleave_rows(gate.view(i), up.view(i), axis=0), gate.ggml_type,
                  f"{gate.name} and {up.name}", (gate, up))


def row_slice(name: str, t: Tensor, start: int, rows: int) -> Tensor:
    """Rows [start, start + rows) of a tensor as a tensor of its own (a q/k/v of a fused qkv)."""
    per_row = t.nbytes // t.shape[0]
    whole = t.mapper

    def mapper() -> Stored:
        assert whole is not None
        return cast(np.ndarray, whole())[start:start + rows]
    return Tensor(name, t.role, t.layer, t.format, (rows,) + t.shape[1:], per_row * rows, t.where,
                  lambda a, b: t.read(start + a, start + b), lambda i: t.view(start + i), t.ggml_type,
                  f"rows {start}-{start + rows - 1} of {t.stored_name}", mapper=None if whole is None else mapper)
