"""How a weight in its stored form is multiplied on the CPU: in C straight from the stored form for
a few tokens (or any number with Q8_0 activations), else expanded a slice of rows at a time into
one reused float32 buffer and multiplied by torch's GEMM."""

from __future__ import annotations

import ctypes

import torch

from ..kernels.native import Q8_FORMATS
from ..kernels.native.products import Array, expand, packed_matmul

# Up to this many tokens the product runs in C straight from the stored form; above it the
# matrix is expanded into the buffer and torch's GEMM multiplies. Measured on the 20b's shapes
# (2 threads, AVX-512): the C tiles win up to 128 tokens in every format, torch's GEMM from 256
# on, its cost of expanding and packing the weights then spread over enough tokens.
FUSED_MAX_TOKENS = 128
# the buffer's size in values (64 MB): an expert fits whole, the 201088-row output matrix goes
# through it in slices
SCRATCH_VALUES = 1 << 24


class ExpansionBuffer:
    """One float32 buffer, grown as needed and reused by every expanded product (one at a time)."""

    def __init__(self) -> None:
        self.values = torch.empty(0)

    def take(self, rows: int, k: int) -> torch.Tensor:
        if self.values.numel() < rows * k:
            self.values = torch.empty(rows * k, dtype=torch.float32)
        return self.values[:rows * k].view(rows, k)


_EXPANSION = ExpansionBuffer()


def matmul(lib: ctypes.CDLL, format: str, data: Array, scales: Array | None, shape: tuple[int, int],
           x: torch.Tensor, activations: str = "float32") -> torch.Tensor:
    """x [T, K] @ W.T for W [N, K] in its stored form (`data`, and MXFP4's `scales`): [T, N] float32."""
    if x.shape[0] <= FUSED_MAX_TOKENS or (activations == "q8" and format in Q8_FORMATS):
        return packed_matmul(lib, format, data, scales, shape, x, activations)
    n, k = shape
    step = max(1, SCRATCH_VALUES // k)
    x = x.float()
    if n <= step:
        return x @ expand(lib, format, data, scales, shape, _EXPANSION.take(n, k)).T
    y = torch.empty((x.shape[0], n), dtype=torch.float32)
    for first in range(0, n, step):
        rows = min(step, n - first)
        w = expand(lib, format, data[first:first + rows], None if scales is None else scales[first:first + rows],
                   (rows, k), _EXPANSION.take(rows, k))
        y[:, first:first + rows] = x @ w.T
    return y
