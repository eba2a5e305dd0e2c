"""The lossless plan: MXFP4 experts repacked bit for bit, everything else as llama.cpp writes it.

Type rules (llama.cpp's `prepare_tensors`): 1-D tensors, norms, the router and every
non-`.weight` tensor (biases) are F32; the remaining 2-D weights take the output type
(BF16 by default). For Q8_0, a row that does not split into 32-blocks falls back to F16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from gguf import GGMLQuantizationType as T

from ..checkpoint.safetensors_source import SafetensorsCheckpoint
from ..files.stream import CHUNK_BYTES, Produced
from ..formats import floats, mxfp4
from ..formats.registry import encode
from .layout import Target, iter_chunks, targets

OUTTYPES = {"bf16": T.BF16, "f16": T.F16, "f32": T.F32, "q8_0": T.Q8_0}


@dataclass
class PlannedTensor:
    name: str
    type: T
    shape: tuple[int, ...]  # ggml order
    source: str  # HF name
    reason: str
    produce: Callable[[], Produced]
    target: Target | None = None  # the source slice it is made from


def _float_type(t: Target, outtype: T) -> tuple[T, str]:
    name = t.name
    if t.n_dims <= 1 or name.endswith("_norm.weight"):
        return T.F32, "1-D tensors and norms are always F32"
    if ".ffn_gate_inp." in name:
        return T.F32, "the router is always F32"
    if not name.endswith(".weight"):
        return T.F32, "biases are always F32"
    if outtype == T.Q8_0 and t.shape[-1] % 32:
        return T.F16, f"row length {t.shape[-1]} is not a multiple of 32: Q8_0 falls back to F16"
    return outtype, "output type"


def plan_lossless(ckpt: SafetensorsCheckpoint, outtype: str = "bf16") -> list[PlannedTensor]:
    out_t = OUTTYPES[outtype]
    plan = []
    for t in targets(ckpt):
        if t.source.format == "MXFP4":
            plan.append(PlannedTensor(t.name, T.MXFP4, t.ggml_shape, t.source.name,
                                      "MXFP4 copied bit for bit", lambda t=t: _mxfp4_chunks(t), t))
            continue
        qtype, reason = _float_type(t, out_t)
        plan.append(PlannedTensor(t.name, qtype, t.ggml_shape, t.source.name, reason,
                                  lambda t=t, q=qtype: _float_chunks(t, q), t))
    return plan


def _mxfp4_chunks(t: Target) -> Iterator[np.ndarray]:
    for blocks, scales in iter_chunks(t, CHUNK_BYTES):
        yield mxfp4.hf_to_ggml(blocks, scales)


def _float_chunks(t: Target, qtype: T) -> Iterator[np.ndarray]:
    dtype = t.source.format
    for chunk in iter_chunks(t, CHUNK_BYTES):
        if qtype == T.BF16 and dtype == "BF16":
            yield chunk  # kept as stored
        else:
            yield encode(floats.to_float32(chunk, dtype), qtype)
