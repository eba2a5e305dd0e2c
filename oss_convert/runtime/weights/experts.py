"""A layer's expert matrices [E, N, K] as objects that multiply one expert at a time.

Expert matrices stay packed as stored (MXFP4 as HF blocks + scales, ggml block formats as their
rows of blocks) and are multiplied from that form when used (by the C kernels; where they cannot,
expanded one expert at a time). On the CPU they are not even read: they stay in the file's
memory-mapped pages until an expert is used (MappedExperts), so the OS, not this process, holds
them (a 120b layer is 1.7 GB, the model 61 GB). GGUF's split gate/up tensors are re-interleaved
row by row where they are expanded (ggml quantizes each row on its own, so rows move intact),
giving the HF [E, 2I, H] order for every source; the C kernels instead multiply gate and up in
place and interleave the products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ...files.stream import map_in
from ..kernels import native
from .expand import dequantize_expert, expand_in_numpy
from .matrices import StoredRows
from .products import matmul

Packed = tuple[np.ndarray, np.ndarray | None]  # an expert's data, and MXFP4's E8M0 scales


@dataclass
class PackedExperts:
    """An expert matrix stack [E, N, K] in memory (on any device), in its packed form."""

    format: str  # "MXFP4" (HF's layout), a ggml block type name ("Q5_0", ...), or "F32"
    shape: tuple[int, int, int]
    data: torch.Tensor  # MXFP4: packed codes [E, N, K/2]; ggml: rows of blocks [E, N, bytes]; F32: values
    scales: torch.Tensor | None = None  # MXFP4: E8M0 bytes [E, N, K/32]
    activations: str = "float32"  # on the CPU, "q8": rounded as llama.cpp does (native.ACTIVATIONS)

    def to(self, device) -> PackedExperts:
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
        return matmul(lib, self.format, self.data[e], None if self.scales is None else self.scales[e],
                      self.shape[1:], x, self.activations)


class MappedExperts:
    """The same stack left in its file: `packed(e)` puts expert e into the packed form of
    PackedExperts (as numpy arrays) from the memory-mapped pages, when it is used.

    On the CPU it stays this way (`to("cpu")` is itself); `to(device)` elsewhere copies the
    experts into PackedExperts there, one expert at a time through host memory."""

    def __init__(self, format: str, shape: tuple[int, int, int], nbytes: int, packed: Callable[[int], Packed],
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
        """Whether the C kernels multiply these experts as they are stored (`stored`)."""
        return native.library() is not None and (self.in_place is not None or self.format in native.FORMATS)

    def stored(self, e: int) -> list[StoredRows]:
        """Expert e as the matrices the C kernels multiply (where `native`), its pages mapped in:
        the file's rows in place where the kernels read its layout (GGUF's gate and up apart: two
        matrices, whose products interleave), else its packed form."""
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
        """x [T, K] @ expert e's matrix.T, float32 [T, N], from the mapped pages: by the C kernels
        where they read the stored form (one product per interleaved part), else expanded."""
        if not self.native:
            return x.float() @ self[e].T
        parts = self.stored(e)
        n, k = self.shape[1] // len(parts), self.shape[2]
        products = [matmul(native.loaded(), p.format, p.data, p.scales, (n, k), x, self.activations) for p in parts]
        return products[0] if len(products) == 1 else torch.stack(products, dim=-1).flatten(-2)

    def to(self, device) -> MappedExperts | PackedExperts:
        device = torch.device(device)
        return self if device.type == "cpu" else self.resident(device)

    def resident(self, device) -> PackedExperts:
        """Every expert copied into memory on `device`, one expert at a time through the host."""
        out: PackedExperts | None = None
        for e in range(self.shape[0]):
            stored_data, stored_scales = self.packed(e)
            data = torch.from_numpy(np.array(stored_data))
            scales = None if stored_scales is None else torch.from_numpy(np.array(stored_scales))
            if out is None:
                stack = lambda a: a.new_empty((self.shape[0],) + a.shape, device=device)  # noqa: E731
                out = PackedExperts(self.format, self.shape, stack(data), None if scales is None else stack(scales),
                                    self.activations)
            out.data[e] = data
            if scales is not None and out.scales is not None:
                out.scales[e] = scales
        assert out is not None  # a stack of at least one expert
        return out


Experts = PackedExperts | MappedExperts
