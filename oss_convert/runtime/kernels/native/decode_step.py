"""A decode step's blocks in C (decoder.c): one layer's attention in one call, its MoE block in two
(the routing, then the chosen experts), each layer described to the library once.

The matrices come as stored rows (the runtime's StoredRows: a `format`, the `addresses` of its
data and scales, its `data` and `scales`), in the order the C side takes them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

from .abi import FORMATS, AttentionLayerStruct, MoeLayerStruct, check, q8_flag
from .products import row_bytes


class Rows(Protocol):
    format: str
    data: np.ndarray
    scales: np.ndarray | None

    @property
    def addresses(self) -> tuple[int | None, int | None]: ...


class Matrices(NamedTuple):
    """Stored matrices as the C side takes a list of them: parallel arrays of their formats,
    pointers and Q8_0 flags (`held`: what the pointers point into, kept alive with them)."""
    formats: ctypes.Array
    data: ctypes.Array
    scales: ctypes.Array
    q8: ctypes.Array
    held: Sequence


def matrices(stored: Sequence[Rows], activations: str) -> Matrices:
    count = len(stored)
    addresses = [p.addresses for p in stored]
    return Matrices((ctypes.c_int * count)(*(FORMATS[p.format] for p in stored)),
                    (ctypes.c_void_p * count)(*(a[0] for a in addresses)),
                    (ctypes.c_void_p * count)(*(a[1] for a in addresses)),
                    (ctypes.c_int * count)(*(q8_flag(activations, p.format) for p in stored)), stored)


def _float32_vectors(tensors) -> bool:
    return all(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu" for t in tensors)


class NativeAttention:
    """One layer's attention block as the library takes it, for a token at a time."""

    def __init__(self, lib: ctypes.CDLL, stored: Sequence[Rows], activations: str, biases: list[torch.Tensor],
                 norm: torch.Tensor, sinks: torch.Tensor, next_norm: torch.Tensor, heads: int, kv_heads: int,
                 head_dim: int, window: int, eps: float):
        """`stored`: q, k, v and o; `biases` theirs; `norm` the attention's RMSNorm weight,
        `next_norm` the MoE block's; `window`: the positions a query sees (0: all)."""
        hidden = norm.numel()
        rows = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim, hidden)
        vectors = [*biases, norm, sinks, next_norm]
        if not _float32_vectors(vectors) or [b.numel() for b in biases] != list(rows) or sinks.numel() != heads \
                or next_norm.numel() != hidden or len(stored) != 4 or any(p.scales is not None for p in stored) \
                or [(p.data.shape[0], p.data.nbytes // max(1, p.data.shape[0])) for p in stored] \
                != [(n, row_bytes(lib, p.format, k)) for p, n, k in zip(stored, rows, (hidden,) * 3 + (rows[0],))]:
            raise ValueError("NativeAttention: float32 contiguous vectors of the layer's sizes, four matrices without "
                             "separate scales")
        m = matrices(stored, activations)
        self.lib = lib
        self.layer = AttentionLayerStruct(hidden, heads, kv_heads, head_dim, window, eps, norm.data_ptr(), m.formats,
                                          m.data, m.q8, (ctypes.c_void_p * 4)(*(b.data_ptr() for b in biases)),
                                          sinks.data_ptr(), next_norm.data_ptr())
        self.held = (m, vectors)  # what the struct's pointers point into

    def one_token(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                  values: torch.Tensor, position: int, next_h: torch.Tensor) -> None:
        """x [1, hidden] += o(attention(rms_norm(x))) + o's bias, in place; its k and v written at
        `position` of keys and values [capacity, kv heads, head_dim], which hold the earlier
        positions'; next_h [1, hidden] = the MoE block's RMSNorm of the new x. cos and sin
        [1, head_dim]: the position's rotation."""
        layer = self.layer
        kv = layer.kv_heads * layer.head_dim
        tensors = [x, cos, sin, keys, values, next_h]
        if any(t.dtype != torch.float32 or not t.is_contiguous() for t in tensors) or x.numel() != layer.hidden \
                or next_h.numel() != layer.hidden or cos.numel() != layer.head_dim or sin.numel() != layer.head_dim \
                or keys.shape != values.shape or keys[0].numel() != kv or not 0 <= position < keys.shape[0]:
            raise ValueError("NativeAttention: float32 contiguous tensors of the layer's sizes, room at the position")
        check(self.lib.oss_attention_one_token(ctypes.byref(layer), x.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                                               keys.data_ptr(), values.data_ptr(), position, next_h.data_ptr(),
                                               torch.get_num_threads()),
              "attention_one_token")


class NativeMoe:
    """One layer's MoE block as the library takes it, for a token at a time: made once, with room
    for every expert's matrices; `add` puts an expert's in at its first use."""

    def __init__(self, lib: ctypes.CDLL, top_k: int, router_w: torch.Tensor, router_b: torch.Tensor,
                 b1: torch.Tensor, b2: torch.Tensor, limit: float, alpha: float):
        (experts, hidden), inter = router_w.shape, b1.shape[1] // 2
        vectors = (router_w, router_b, b1, b2)
        if not _float32_vectors(vectors) or router_b.numel() != experts or b1.shape != (experts, 2 * inter) \
                or b2.shape != (experts, hidden) or not 0 < top_k <= experts:
            raise ValueError("NativeMoe: float32 contiguous router and biases of the layer's sizes")
        # room for two first matrices per expert (GGUF's gate and up); `parts` is set by the first `add`
        arrays = [(t * (experts * n))() for n in (2, 1)
                  for t in (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)]
        self.lib = lib
        self.layer = MoeLayerStruct(experts, top_k, hidden, inter, 0, limit, alpha, *(t.data_ptr() for t in vectors),
                                    *map(ctypes.addressof, arrays))
        self.held: tuple = (vectors, arrays)  # what the struct's pointers point into
        self.known: set[int] = set()
        self.ids, self.weights = (ctypes.c_int64 * top_k)(), (ctypes.c_float * top_k)()

    def add(self, e: int, first: Sequence[Rows], second: Sequence[Rows], activations: str) -> None:
        """Expert e's matrices: its first ones (1, or GGUF's gate and up, as every expert's), its
        second one."""
        if len(first) not in (1, 2) or self.layer.parts not in (0, len(first)) or len(second) != 1 \
                or not 0 <= e < self.layer.experts:
            raise ValueError(f"NativeMoe: expert {e} with {len(first)} first and {len(second)} second matrices")
        self.layer.parts = len(first)
        for at, rows in ((e * self.layer.parts + p, r) for p, r in enumerate(first)):
            self._put(0, at, rows, activations)
        self._put(4, e, second[0], activations)
        self.known.add(e)
        self.held += (first, second)

    def _put(self, first_array: int, at: int, rows: Rows, activations: str) -> None:
        formats, ws, scales, q8 = self.held[1][first_array:first_array + 4]
        formats[at], (ws[at], scales[at]) = FORMATS[rows.format], rows.addresses
        q8[at] = q8_flag(activations, rows.format)

    def route(self, h: torch.Tensor) -> list[int]:
        """The experts h [1, hidden] is routed to, in ascending order (their weights kept for `run`)."""
        if h.dtype != torch.float32 or not h.is_contiguous() or h.numel() != self.layer.hidden:
            raise ValueError("NativeMoe: a float32 contiguous token of the layer's size")
        check(self.lib.oss_moe_route(ctypes.byref(self.layer), h.data_ptr(), self.ids, self.weights), "moe_route")
        return list(self.ids)

    def run(self, h: torch.Tensor, x: torch.Tensor) -> None:
        """x [1, hidden] += the MoE block on h, after `route` and `add` of the experts it chose."""
        if x.dtype != torch.float32 or not x.is_contiguous() or x.numel() != self.layer.hidden \
                or not self.known.issuperset(self.ids):
            raise ValueError("NativeMoe: a float32 contiguous x of the layer's size, the chosen experts added")
        check(self.lib.oss_moe_experts(ctypes.byref(self.layer), h.data_ptr(), self.ids, self.weights, x.data_ptr(),
                                       torch.get_num_threads()),
              "moe_experts")
