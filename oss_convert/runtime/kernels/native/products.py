"""Matrix products in C on weights in their stored form: one product, several as one batch, and a
matrix expanded to float32. W [N, K] is given as its stored rows (`data`) and, for MXFP4 in HF's
layout, its E8M0 bytes [N, K/32] (`scales`); x and y are float32 torch tensors on the CPU."""

from __future__ import annotations

import ctypes
from typing import NamedTuple, TypeAlias

import numpy as np
import torch

from .abi import FORMATS, check, q8_flag

Array: TypeAlias = "np.ndarray | torch.Tensor"


def row_bytes(lib: ctypes.CDLL, format: str, k: int) -> int:
    """Bytes of one stored row of k values, as the kernels read it (-1: no such row)."""
    return lib.oss_row_bytes(FORMATS[format], k)


def address(a: Array | None) -> int | None:
    if a is None:
        return None
    return a.data_ptr() if isinstance(a, torch.Tensor) else a.ctypes.data


def contiguous(a):
    if a is None:
        return None
    return a.contiguous() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)


def packed_matmul(lib: ctypes.CDLL, format: str, data: Array, scales: Array | None, shape: tuple[int, int],
                  x: torch.Tensor, activations: str = "float32") -> torch.Tensor:
    """x [T, K] float32 @ W.T, W [N, K] in its stored form. Returns [T, N] float32. With
    activations="q8" and a format of Q8_FORMATS, x is rounded to Q8_0 first (any number of tokens)."""
    n, k = shape
    x, data, scales = x.float().contiguous(), contiguous(data), contiguous(scales)
    y = torch.empty((x.shape[0], n), dtype=torch.float32)
    if x.shape[0] == 0:
        return y
    product = lib.oss_q8_matmul if q8_flag(activations, format) else lib.oss_packed_matmul
    check(product(FORMATS[format], address(data), address(scales), n, k, x.data_ptr(), x.shape[0], y.data_ptr(),
                  torch.get_num_threads()),
          f"packed_matmul of {format} [{n}, {k}]")
    return y


class Product(NamedTuple):
    """One product of a batch: y [T, N] = x [T, K] @ W.T, W [N, K] in its stored form (`data`,
    and MXFP4's `scales`) and y a contiguous float32 tensor to write into."""
    format: str
    data: Array
    scales: Array | None
    shape: tuple[int, int]
    x: torch.Tensor
    y: torch.Tensor


def batch_matmul(lib: ctypes.CDLL, products: list[Product], activations: str = "float32") -> None:
    """Every product of the list, into its y: the same floats as `packed_matmul` gives each alone.
    At one token the rows of all of them are shared among the threads at once (a decode step's
    q, k and v, or its experts), instead of one short parallel product after another."""
    count = len(products)
    tokens = products[0].x.shape[0]
    xs = [p.x.float().contiguous() for p in products]
    data = [contiguous(p.data) for p in products]
    scales = [contiguous(p.scales) for p in products]
    for p, x in zip(products, xs):
        if x.shape != (tokens, p.shape[1]) or p.y.shape != (tokens, p.shape[0]) or not p.y.is_contiguous() \
                or p.y.dtype != torch.float32:
            raise ValueError(f"batch_matmul: {p.format} {p.shape} with x {tuple(x.shape)}, y {tuple(p.y.shape)}")
    ints, int64s, pointers = ctypes.c_int * count, ctypes.c_int64 * count, ctypes.c_void_p * count
    check(lib.oss_matmul_batch(
        count, ints(*(FORMATS[p.format] for p in products)), pointers(*map(address, data)),
        pointers(*map(address, scales)), int64s(*(p.shape[0] for p in products)),
        int64s(*(p.shape[1] for p in products)), pointers(*(x.data_ptr() for x in xs)),
        pointers(*(p.y.data_ptr() for p in products)), ints(*(q8_flag(activations, p.format) for p in products)),
        tokens, torch.get_num_threads()),
        f"batch_matmul of {[(p.format, p.shape) for p in products]}")


def expand(lib: ctypes.CDLL, format: str, data: Array, scales: Array | None, shape: tuple[int, int],
           out: torch.Tensor | None = None) -> torch.Tensor:
    """W [N, K] as float32, expanded in C (into `out` when given)."""
    n, k = shape
    data, scales = contiguous(data), contiguous(scales)
    out = torch.empty((n, k), dtype=torch.float32) if out is None else out
    lib.oss_expand(FORMATS[format], address(data), address(scales), n, k, out.data_ptr(), torch.get_num_threads())
    return out
