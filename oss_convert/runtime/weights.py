"""Loading one MoE layer from either artifact into one in-memory form.

Expert matrices stay packed as stored (MXFP4 as HF blocks + scales, ggml block formats as
their rows of blocks) and are expanded one expert at a time when used; only the router,
biases and norm weight are widened to float32. On the CPU the experts are not even read:
they stay in the file's memory-mapped pages until an expert is used, so the OS, not this
process, holds them (a 120b layer is 1.7 GB, the model 61 GB). GGUF's split gate/up tensors
are re-interleaved row by row (ggml quantizes each row on its own, so rows move intact),
giving the HF [E, 2I, H] order for every source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from ..checkpoint import GGUFCheckpoint, SafetensorsCheckpoint
from ..checkpoint.names import gguf_names
from ..convert.layout import interleave_rows
from ..errors import OssConvertError
from ..files.gguf import GGUFTensor, ggml_type_name
from ..formats import floats, mxfp4
from ..formats.registry import OLLAMA_MXFP4, decode
from .dequant import DECODED_BLOCK_TYPES, dequantize_expert, expand_in_numpy


@dataclass
class PackedExperts:
    """An expert matrix stack [E, N, K] in memory (on any device), in its packed form."""

    format: str  # "MXFP4", a ggml block type name ("Q5_0", ...), or "F32"
    shape: tuple[int, int, int]
    data: torch.Tensor  # MXFP4: packed codes [E, N, K/2]; ggml: rows of blocks [E, N, bytes]; F32: values
    scales: torch.Tensor | None = None  # MXFP4: E8M0 bytes [E, N, K/32]

    def to(self, device) -> "PackedExperts":
        return PackedExperts(self.format, self.shape, self.data.to(device),
                             None if self.scales is None else self.scales.to(device))

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + (0 if self.scales is None else self.scales.numel())

    def __getitem__(self, e: int) -> torch.Tensor:
        """Expert e as float32 [N, K], on the tensors' device: expanded only when used."""
        return dequantize_expert(self, e)


class MappedExperts:
    """The same stack left in its file: `packed(e)` puts expert e into the packed form of
    PackedExperts (as numpy arrays) from the memory-mapped pages, when it is used.

    On the CPU it stays this way (`to("cpu")` is itself); `to(device)` elsewhere copies the
    experts into PackedExperts there, one expert at a time through host memory."""

    def __init__(self, format: str, shape: tuple[int, int, int], nbytes: int,
                 packed: Callable[[int], tuple[np.ndarray, np.ndarray | None]]):
        self.format, self.shape, self.packed = format, shape, packed
        self.nbytes = nbytes  # as stored in the file

    def __getitem__(self, e: int) -> torch.Tensor:
        return expand_in_numpy(self.format, self.shape[1:], *self.packed(e))

    def to(self, device) -> "MappedExperts | PackedExperts":
        device = torch.device(device)
        return self if device.type == "cpu" else self.resident(device)

    def resident(self, device) -> PackedExperts:
        """Every expert copied into memory on `device`, one expert at a time through the host."""
        out = None
        for e in range(self.shape[0]):
            data, scales = (None if a is None else torch.from_numpy(np.array(a)) for a in self.packed(e))
            if out is None:
                out = PackedExperts(self.format, self.shape, data.new_empty((self.shape[0],) + data.shape, device=device),
                                    None if scales is None else
                                    scales.new_empty((self.shape[0],) + scales.shape, device=device))
            out.data[e] = data
            if scales is not None:
                out.scales[e] = scales
        return out


Experts = PackedExperts | MappedExperts


@dataclass
class MoELayer:
    layer: int
    top_k: int
    norm_w: torch.Tensor  # post-attention RMSNorm weight [H], the MoE block's input norm
    router_w: torch.Tensor  # [E, H] float32
    router_b: torch.Tensor  # [E]
    gate_up: Experts  # [E, 2I, H], gate and up rows interleaved
    b1: torch.Tensor  # [E, 2I]
    down: Experts  # [E, H, I]
    b2: torch.Tensor  # [E, H]

    def to(self, device) -> "MoELayer":
        move = lambda t: t.to(device)  # noqa: E731
        return MoELayer(self.layer, self.top_k, move(self.norm_w), move(self.router_w), move(self.router_b),
                        self.gate_up.to(device), move(self.b1), self.down.to(device), move(self.b2))


def as_float32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# --------------------------------------------------------------------------- safetensors

def _hf_float(t) -> torch.Tensor:
    return as_float32(floats.to_float32(t.read(), t.format))


def _hf_experts(t) -> MappedExperts:
    if t.format == "MXFP4":
        blocks, scales = t.mapped()
        E, N, G, _ = blocks.shape
        return MappedExperts("MXFP4", (E, N, G * 32), blocks.nbytes + scales.nbytes,
                             lambda e: (blocks[e].reshape(N, G * 16), scales[e]))
    stored = t.mapped()
    return MappedExperts("F32", stored.shape, stored.nbytes, lambda e: (floats.to_float32(stored[e], t.format), None))


def load_safetensors_layer(ckpt: SafetensorsCheckpoint, layer: int) -> MoELayer:
    p = f"model.layers.{layer}."
    want = {p + n for n in ("post_attention_layernorm.weight", "mlp.router.weight", "mlp.router.bias",
                            "mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj_bias",
                            "mlp.experts.down_proj", "mlp.experts.down_proj_bias")}
    found = {t.name: t for t in ckpt.hf_tensors() if t.name in want}
    if len(found) != len(want):
        raise OssConvertError(f"{ckpt.root}: layer {layer} lacks {sorted(want - set(found))}")
    g = lambda n: found[p + n]  # noqa: E731
    return MoELayer(layer, ckpt.config.experts_per_token, _hf_float(g("post_attention_layernorm.weight")),
                    _hf_float(g("mlp.router.weight")), _hf_float(g("mlp.router.bias")),
                    _hf_experts(g("mlp.experts.gate_up_proj")), _hf_float(g("mlp.experts.gate_up_proj_bias")),
                    _hf_experts(g("mlp.experts.down_proj")), _hf_float(g("mlp.experts.down_proj_bias")))


# --------------------------------------------------------------------------- GGUF

def gguf_values(t: GGUFTensor) -> np.ndarray:
    return decode(np.array(t.raw()), t.type).reshape(tuple(reversed(t.shape)))


def _gguf_experts(parts: list[GGUFTensor]) -> MappedExperts:
    """One or two (gate, up) GGUF expert tensors -> packed [E, N, K], rows interleaved."""
    types = {t.type for t in parts}
    if len(types) != 1:
        raise OssConvertError(f"{parts[0].path}: gate and up have different types "
                              f"({', '.join(ggml_type_name(t) for t in types)})")
    qtype = types.pop()
    K, N, E = parts[0].shape
    N *= len(parts)
    raws = [t.raw() for t in parts]  # [E, rows, row bytes] each, memory-mapped
    nbytes = sum(t.nbytes for t in parts)

    def interleaved(halves: list[np.ndarray]) -> np.ndarray:
        """One expert's rows [rows, ...] of gate and up (or of the one tensor) in HF order."""
        return halves[0] if len(halves) == 1 else interleave_rows(halves[0][None], halves[1][None])[0]

    if qtype in (T.MXFP4, OLLAMA_MXFP4):
        unpack = mxfp4.ggml_to_hf if qtype == T.MXFP4 else mxfp4.ollama_to_hf

        def packed(e: int):
            halves = [unpack(np.asarray(r[e])) for r in raws]  # (blocks [rows, G, 16], scales [rows, G])
            return (interleaved([h[0] for h in halves]).reshape(N, K // 2),
                    interleaved([h[1] for h in halves]))
        return MappedExperts("MXFP4", (E, N, K), nbytes, packed)
    if qtype in (T.F32, T.F16, T.BF16):
        return MappedExperts("F32", (E, N, K), nbytes, lambda e: (
            interleaved([decode(r[e], qtype).reshape(-1, K) for r in raws]), None))
    if qtype not in DECODED_BLOCK_TYPES:
        raise OssConvertError(f"{parts[0].path}: {parts[0].name} is {ggml_type_name(qtype)}; the runtime runs experts "
                              f"in MXFP4, {', '.join(t.name for t in DECODED_BLOCK_TYPES)}, F16, BF16 or F32")
    return MappedExperts(ggml_type_name(qtype), (E, N, K), nbytes, lambda e: (interleaved([r[e] for r in raws]), None))


def load_gguf_layer(ckpt: GGUFCheckpoint, layer: int) -> MoELayer:
    tensors = ckpt.gguf.tensors

    def get(hf_name: str) -> list[GGUFTensor]:
        names = gguf_names(f"model.layers.{layer}.{hf_name}", ckpt.layout)
        missing = [n.gguf for n in names if n.gguf not in tensors]
        if not names or missing:
            raise OssConvertError(f"{ckpt.files[0]}: layer {layer} lacks {missing or hf_name}")
        return [tensors[n.gguf] for n in names]

    def floats_of(hf_name: str) -> torch.Tensor:
        parts = [gguf_values(t) for t in get(hf_name)]
        return as_float32(parts[0] if len(parts) == 1 else interleave_rows(*parts))

    return MoELayer(layer, ckpt.config.experts_per_token, floats_of("post_attention_layernorm.weight"),
                    floats_of("mlp.router.weight"), floats_of("mlp.router.bias"),
                    _gguf_experts(get("mlp.experts.gate_up_proj")), floats_of("mlp.experts.gate_up_proj_bias"),
                    _gguf_experts(get("mlp.experts.down_proj")), floats_of("mlp.experts.down_proj_bias"))


def load_layer(ckpt, layer: int) -> MoELayer:
    if isinstance(ckpt, GGUFCheckpoint):
        if ckpt.layout == "other":
            raise OssConvertError(f"{ckpt.files[0]}: not a GPT-OSS GGUF (architecture {ckpt.architecture!r})")
        return load_gguf_layer(ckpt, layer)
    return load_safetensors_layer(ckpt, layer)
