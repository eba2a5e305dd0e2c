"""The runtime's 2-D weights as objects that multiply themselves: float32 values on the device
(FloatMatrix), or on the CPU the stored form the file holds (StoredMatrix: BF16 words, ggml
blocks...), multiplied and row-gathered by the C kernels, never widened whole, so a resident 20b
holds its dense weights in 2.6 GB, not 7. The model's math calls `matmul` and `rows` alike."""

from __future__ import annotations

from functools import cached_property
from typing import Protocol

import numpy as np
import torch

from ...files.stream import map_in
from ..kernels import native
from ..kernels.native.products import address, contiguous, expand
from .products import matmul


class Matrix(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, K] @ W.T (+ bias), float32 [T, N]."""
        ...

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """W[ids] as float32 [len(ids), K] (an embedding's lookup)."""
        ...


class FloatMatrix:
    """W [N, K] as float32 values on its device, multiplied by torch."""

    def __init__(self, values: torch.Tensor):
        self.values = values
        self.shape = tuple(values.shape)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        w = self.values
        return x @ w.T if bias is None else torch.addmm(bias, x, w.T)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.values[ids].float()


class StoredRows:
    """A matrix's rows as its file stores them, in a format the C kernels read (MXFP4 in HF's
    layout: its E8M0 bytes apart, in `scales`)."""

    def __init__(self, format: str, data: np.ndarray, scales: np.ndarray | None = None):
        self.format, self.data, self.scales = format, data, scales

    @cached_property
    def addresses(self) -> tuple[int | None, int | None]:
        """Where the kernels read data and scales (kept, as a decode step takes the same experts'
        addresses again and again)."""
        self.data, self.scales = contiguous(self.data), contiguous(self.scales)
        return address(self.data), address(self.scales)


class StoredMatrix:
    """W [N, K] kept in host memory in its stored form, for the CPU (where the kernels are built)."""

    def __init__(self, format: str, shape: tuple[int, int], data: np.ndarray, activations: str = "float32",
                 mapped: bool = False):
        self.format, self.shape, self.data, self.activations = format, shape, data, activations
        self._pages_in = not mapped  # a file's pages are mapped in at the first product, not for row lookups

    def _map_in(self) -> None:
        if not self._pages_in:
            map_in([self.data])
            self._pages_in = True

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        self._map_in()
        y = matmul(native.loaded(), self.format, self.data, None, self.shape, x, self.activations)
        return y if bias is None else y + bias

    @cached_property
    def stored_rows(self) -> StoredRows:
        """Its rows as the decode step's C calls take them, pages mapped in."""
        self._map_in()
        return StoredRows(self.format, self.data)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        picked = self.data[ids.cpu().numpy()]
        return expand(native.loaded(), self.format, picked, None, (len(picked), self.shape[1]))
