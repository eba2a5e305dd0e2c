"""Loading one MoE layer from any checkpoint into one in-memory form.

Expert matrices stay packed as stored (MXFP4 as HF blocks + scales, ggml block formats as
their rows of blocks) and are multiplied from that form when used (runtime/native; where it
cannot, expanded one expert at a time); only the router, biases and norm weight are widened
to float32. On the CPU the experts are not even read: they stay in the file's memory-mapped
pages until an expert is used, so the OS, not this process, holds them (a 120b layer is
1.7 GB, the model 61 GB). GGUF's split gate/up tensors are re-interleaved row by row where
they are expanded (ggml quantizes each row on its own, so rows move intact), giving the HF
[E, 2I, H] order for every source; the native kernels instead multiply gate and up in place
and interleave the products.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from ..checkpoint import Checkpoint, Tensor
from ..checkpoint.config import DEFAULT_SWIGLU_ALPHA, DEFAULT_SWIGLU_LIMIT
from ..checkpoint.tensor import FLOAT_FORMATS
from ..errors import OssConvertError
from ..files.stream import map_in
from ..formats.registry import decodable
from . import native
from .dequant import dequantize_expert, expand_in_numpy


@dataclass
class PackedExperts:
    """An expert matrix stack [E, N, K] in memory (on any device), in its packed form."""

    format: str  # "MXFP4", a ggml block type name ("Q5_0", ...), or "F32"
    shape: tuple[int, int, int]
    data: torch.Tensor  # MXFP4: packed codes [E, N, K/2]; ggml: rows of blocks [E, N, bytes]; F32: values
    scales: torch.Tensor | None = None  # MXFP4: E8M0 bytes [E, N, K/32]
    activations: str = "float32"  # on the CPU, "q8": rounded as llama.cpp does (native.ACTIVATIONS)

    def to(self, device) -> "PackedExperts":
        return PackedExperts(self.format, self.shape, self.data.to(device),
                             None if self.scales is None else self.scales.to(device), self.activations)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + (0 if self.scales is None else self.scales.numel())

    def __getitem__(self, e: int) -> torch.Tensor:
        """Expert e as float32 [N, K], on the tensors' device: expanded only when used."""
        return dequantize_expert(self, e)

    def matmul(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] @ expert e's matrix.T, float32 [T, N]."""
        lib = native.for_format(self.format) if self.data.device.type == "cpu" else None
        if lib is None:
            return x.float() @ self[e].T
        return native.matmul(lib, self.format, self.data[e], None if self.scales is None else self.scales[e],
                             self.shape[1:], x, self.activations)


@dataclass
class StoredRows:
    """A matrix's rows as its file stores them, in a format the native kernels read (MXFP4 in
    HF's layout: its E8M0 bytes apart, in `scales`)."""
    format: str
    data: np.ndarray
    scales: np.ndarray | None = None

    @cached_property
    def addresses(self) -> tuple[int, int | None]:
        """Where the kernels read data and scales (native.matrices; kept, as a decode step takes
        the same experts' addresses again and again)."""
        self.data, self.scales = native.contiguous(self.data), native.contiguous(self.scales)
        return native.address(self.data), native.address(self.scales)


class MappedExperts:
    """The same stack left in its file: `packed(e)` puts expert e into the packed form of
    PackedExperts (as numpy arrays) from the memory-mapped pages, when it is used.

    On the CPU it stays this way (`to("cpu")` is itself); `to(device)` elsewhere copies the
    experts into PackedExperts there, one expert at a time through host memory."""

    def __init__(self, format: str, shape: tuple[int, int, int], nbytes: int,
                 packed: Callable[[int], tuple[np.ndarray, np.ndarray | None]],
                 in_place: Callable[[int], list[StoredRows]] | None = None, activations: str = "float32"):
        self.format, self.shape, self.packed = format, shape, packed
        self.nbytes = nbytes  # as stored in the file
        self.in_place = in_place
        self.activations = activations  # as PackedExperts.activations
        self._mapped_in: set[int] = set()  # experts whose pages are mapped into the process
        self._in_place: dict[int, list[StoredRows]] = {}  # views of the file's rows, kept: no copies

    def _first_use(self, e: int, arrays) -> None:
        if e not in self._mapped_in:
            map_in(arrays)
            self._mapped_in.add(e)

    def __getitem__(self, e: int) -> torch.Tensor:
        return expand_in_numpy(self.format, self.shape[1:], *self.packed(e))

    @property
    def native(self) -> bool:
        """Whether the native kernels multiply these experts as they are stored (`stored`)."""
        return native.library() is not None and (self.in_place is not None or self.format in native.FORMATS)

    def stored(self, e: int) -> list[StoredRows]:
        """Expert e as the matrices the native kernels multiply (where `native`), its pages mapped
        in: the file's rows in place where the kernels read its layout (GGUF's gate and up apart:
        two matrices, whose products interleave), else its packed form."""
        if self.in_place is not None:
            parts = self._in_place.get(e)
            if parts is None:
                parts = self._in_place[e] = self.in_place(e)
        else:
            data, scales = self.packed(e)
            parts = [StoredRows(self.format, data, scales)]
        self._first_use(e, [a for p in parts for a in (p.data, p.scales)])
        return parts

    def matmul(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] @ expert e's matrix.T, float32 [T, N], from the mapped pages: by the native
        kernels where they read the stored form (one product per interleaved part), else
        expanded."""
        if not self.native:
            return x.float() @ self[e].T
        parts = self.stored(e)
        n, k = self.shape[1] // len(parts), self.shape[2]
        products = [native.matmul(native.library(), p.format, p.data, p.scales, (n, k), x, self.activations)
                    for p in parts]
        return products[0] if len(products) == 1 else torch.stack(products, dim=-1).flatten(-2)

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
                                    scales.new_empty((self.shape[0],) + scales.shape, device=device), self.activations)
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
    swiglu_limit: float = DEFAULT_SWIGLU_LIMIT
    swiglu_alpha: float = DEFAULT_SWIGLU_ALPHA
    # moe_decode's description of the layer to the native kernels, made at its first token
    one_token: native.MoeOneToken | None = field(default=None, repr=False, compare=False)

    def to(self, device) -> "MoELayer":
        move = lambda t: t.to(device)  # noqa: E731
        return MoELayer(self.layer, self.top_k, move(self.norm_w), move(self.router_w), move(self.router_b),
                        self.gate_up.to(device), move(self.b1), self.down.to(device), move(self.b2),
                        self.swiglu_limit, self.swiglu_alpha)


class StoredMatrix:
    """A 2-D weight [N, K] kept in host memory in its stored form (BF16 words, ggml blocks...),
    for the CPU: multiplied and row-gathered by the native kernels, never widened whole, so a
    resident 20b holds its dense weights in 2.6 GB, not 7."""

    def __init__(self, format: str, shape: tuple[int, int], data: np.ndarray, activations: str = "float32",
                 mapped: bool = False):
        self.format, self.shape, self.data, self.activations = format, shape, data, activations
        self._pages_in = not mapped  # a file's pages are mapped in at the first product, not for row lookups

    def _map_in(self) -> None:
        if not self._pages_in:
            map_in([self.data])
            self._pages_in = True

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] @ W.T, float32 [T, N]."""
        self._map_in()
        return native.matmul(native.library(), self.format, self.data, None, self.shape, x, self.activations)

    @cached_property
    def stored_rows(self) -> StoredRows:
        """Its rows as native.matrices takes them, pages mapped in."""
        self._map_in()
        return StoredRows(self.format, self.data)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """W[ids] as float32 [len(ids), K] (the embedding's lookup)."""
        picked = self.data[ids.cpu().numpy()]
        return native.expand(native.library(), self.format, picked, None, (len(picked), self.shape[1]))


def stored_matrix(t: Tensor, activations: str = "float32", mapped: bool = False) -> StoredMatrix | None:
    """`t` as a StoredMatrix, where the native kernels take its format on this machine: read into
    memory, or with `mapped` left in the file's pages (for a matrix used once, not worth a copy)."""
    fmt = t.format  # the kernels' names are the formats' own (MXFP4: only experts, in the HF layout)
    lib = native.for_format(fmt) if len(t.shape) == 2 and fmt != "MXFP4" else None
    expected = native.row_bytes(lib, fmt, t.shape[1]) if lib is not None else -1
    if expected < 0:  # (a row length the format cannot have: the numpy path says so)
        return None
    data = np.ascontiguousarray(t.mapped() if mapped else t.read())
    if data.nbytes != expected * t.shape[0]:
        raise OssConvertError(f"{t.where}: {t.stored_name} holds {data.nbytes} bytes, not {t.shape[0]} rows of "
                              f"{expected}")
    return StoredMatrix(fmt, t.shape, data.view(np.uint8).reshape(t.shape[0], expected), activations, mapped)


def as_float32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def float_tensor(t: Tensor) -> torch.Tensor:
    return as_float32(t.values())


def mapped_experts(t: Tensor, activations: str = "float32") -> MappedExperts:
    """An expert stack [E, N, K] left in its file, each expert put in its packed form when used."""
    if len(t.shape) != 3:
        raise OssConvertError(f"{t.where}: {t.stored_name} has shape {list(t.shape)}, not [experts, rows, columns]")
    E, N, K = t.shape
    if t.format == "MXFP4":
        def packed(e: int):
            blocks, scales = t.hf_mxfp4(t.view(e))
            return blocks.reshape(N, K // 2), scales
        return MappedExperts("MXFP4", t.shape, t.nbytes, packed, in_place(t), activations)
    if t.format in FLOAT_FORMATS:
        return MappedExperts("F32", t.shape, t.nbytes, lambda e: (t.decode(t.view(e)).reshape(N, K), None))
    if not decodable(t.ggml_type):
        raise OssConvertError(f"{t.where}: {t.stored_name} is {t.format}, which has no dequantizer here")
    return MappedExperts(t.format, t.shape, t.nbytes, lambda e: (t.view(e), None), in_place(t), activations)


def _in_place_format(t: Tensor) -> str | None:
    if t.ggml_type == T.MXFP4:
        return "MXFP4_GGML"
    # (Ollama's MXFP4 layout is neither: it goes through HF's)
    return t.format if t.ggml_type is not None and t.format in native.FORMATS and t.format != "MXFP4" else None


def in_place(t: Tensor) -> Callable[[int], list[StoredRows]] | None:
    """Expert e of a GGUF tensor as the rows its file holds, for the native kernels: ggml's MXFP4
    blocks without HF's reordering, GGUF's gate and up apart instead of copied interleaved."""
    parts = t.interleaved or (t,)
    formats = [_in_place_format(p) for p in parts]
    if None in formats:
        return None
    return lambda e: [StoredRows(f, p.view(e)) for f, p in zip(formats, parts)]


def load_layer(ckpt: Checkpoint, layer: int, activations: str = "float32") -> MoELayer:
    """Layer `layer`'s MoE block from any checkpoint, experts left in the file's pages (and
    multiplied on the CPU with `activations`, native.ACTIVATIONS)."""
    cfg = ckpt.require_config()
    tensor = lambda name: ckpt.tensor(f"model.layers.{layer}.{name}")  # noqa: E731
    floats_of = lambda name: float_tensor(tensor(name))  # noqa: E731
    return MoELayer(layer, cfg.experts_per_token, floats_of("post_attention_layernorm.weight"),
                    floats_of("mlp.router.weight"), floats_of("mlp.router.bias"),
                    mapped_experts(tensor("mlp.experts.gate_up_proj"), activations),
                    floats_of("mlp.experts.gate_up_proj_bias"),
                    mapped_experts(tensor("mlp.experts.down_proj"), activations), floats_of("mlp.experts.down_proj_bias"),
                    cfg.swiglu_limit, cfg.swiglu_alpha)
