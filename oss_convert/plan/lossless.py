"""The lossless plan: MXFP4 experts repacked bit for bit, everything else as llama.cpp writes it.

Type rules (llama.cpp's `prepare_tensors`): 1-D tensors, norms, the router and every
non-`.weight` tensor (biases) are F32; the remaining 2-D weights take the output type
(BF16 by default). For Q8_0, a row that does not split into 32-blocks falls back to F16.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType as T

from ..checkpoint import Checkpoint
from .layout import Target, targets

LOSSLESS = "mxfp4"  # convert's --type for the lossless file (every other --type is a mixture)
OUTTYPES = {"bf16": T.BF16, "f16": T.F16, "f32": T.F32, "q8_0": T.Q8_0}


@dataclass
class PlannedTensor:
    name: str
    type: T
    shape: tuple[int, ...]  # ggml order
    source: str  # HF name
    reason: str
    target: Target  # the source slice it is made from
    converter_type: T | None = None  # what llama.cpp's converter writes, where a mixture changed it

    @property
    def requantized(self) -> bool:
        return self.converter_type is not None and self.converter_type != self.type


def float_type(t: Target, outtype: T) -> tuple[T, str]:
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


def plan_lossless(ckpt: Checkpoint, outtype: str = "bf16") -> list[PlannedTensor]:
    out_t = OUTTYPES[outtype]
    plan = []
    for t in targets(ckpt):
        if t.source.format == "MXFP4":
            plan.append(PlannedTensor(t.name, T.MXFP4, t.ggml_shape, t.source.name, "MXFP4 copied bit for bit", t))
            continue
        qtype, reason = float_type(t, out_t)
        plan.append(PlannedTensor(t.name, qtype, t.ggml_shape, t.source.name, reason, t))
    return plan
