"""The CPU runtime's matrix products on weights in their stored form (the C sources beside this file).

The C source ships with the package and is compiled on first use for the machine's own CPU
(oss_convert.cbuild: AVX-512 where it has it). Without a compiler, or with OSS_CONVERT_NATIVE=0,
`library()` is None and the runtime keeps its numpy-and-torch path.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ... import cbuild

# one library, its sources by job (kernels.h says what each holds)
SOURCES = tuple(Path(__file__).with_name(f"{stem}.c")
                for stem in ("expand", "float_products", "q8_products", "batch", "decoder"))
# MXFP4: HF's layout, codes and scales apart; MXFP4_GGML: ggml's 17-byte blocks, read in place
FORMATS = {"F32": 0, "BF16": 1, "F16": 2, "MXFP4": 3, "Q8_0": 4, "Q5_0": 5, "Q4_0": 6, "Q5_1": 7, "MXFP4_GGML": 8,
           "Q4_K": 9}
# How activations meet the weights. "float32": exactly, as transformers computes; "q8": rounded
# to Q8_0 first (per 32 values), as llama.cpp's CPU backend multiplies these formats, in integers
ACTIVATIONS = ("float32", "q8")
Q8_FORMATS = frozenset({"MXFP4", "MXFP4_GGML", "Q8_0", "Q5_0", "Q4_0"})


def build(extra_flags: tuple[str, ...] = ()) -> Path | None:
    """The compiled library (built now if the cache lacks it), or None where it cannot be built."""
    return cbuild.compiled(SOURCES, extra_flags, openmp=True)


class AttentionLayer(ctypes.Structure):
    """One layer's attention as oss_attention_one_token takes it (decoder.c's
    oss_attention_layer), made once per layer: sizes, the four matrices (q, k, v, o) and the
    float32 vectors. `held` keeps what the pointers point into alive."""
    _fields_ = [("hidden", ctypes.c_int64), ("heads", ctypes.c_int64), ("kv_heads", ctypes.c_int64),
                ("head_dim", ctypes.c_int64), ("window", ctypes.c_int64), ("eps", ctypes.c_float),
                ("norm", ctypes.c_void_p), ("formats", ctypes.c_int * 4), ("ws", ctypes.c_void_p * 4),
                ("q8", ctypes.c_int * 4), ("biases", ctypes.c_void_p * 4), ("sinks", ctypes.c_void_p),
                ("next_norm", ctypes.c_void_p)]


class MoeLayer(ctypes.Structure):
    """One layer's MoE block as oss_moe_route and oss_moe_experts take it (decoder.c's
    oss_moe_layer): sizes, the router, the biases, and per expert its matrices, NULL until
    `MoeOneToken.add` puts them in at the expert's first use."""
    _fields_ = [("experts", ctypes.c_int64), ("top_k", ctypes.c_int64), ("hidden", ctypes.c_int64),
                ("inter", ctypes.c_int64), ("parts", ctypes.c_int), ("limit", ctypes.c_float),
                ("alpha", ctypes.c_float), ("router_w", ctypes.c_void_p), ("router_b", ctypes.c_void_p),
                ("b1", ctypes.c_void_p), ("b2", ctypes.c_void_p),
                ("first_formats", ctypes.c_void_p), ("first_ws", ctypes.c_void_p), ("first_scales", ctypes.c_void_p),
                ("first_q8", ctypes.c_void_p), ("second_formats", ctypes.c_void_p), ("second_ws", ctypes.c_void_p),
                ("second_scales", ctypes.c_void_p), ("second_q8", ctypes.c_void_p)]


def load(path: Path) -> ctypes.CDLL:
    # Our OpenMP runtime must not spin between calls: its idle threads would take the cores from
    # torch's GEMM, which runs next (torch has its own copy, already set up). Passive waiting, for
    # this library's copy only, unless the user chose a policy.
    chosen = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        lib = ctypes.CDLL(str(path))
    finally:
        if chosen is None:
            del os.environ["OMP_WAIT_POLICY"]
    lib.oss_packed_matmul.restype = ctypes.c_int
    lib.oss_packed_matmul.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.oss_q8_matmul.restype = ctypes.c_int
    lib.oss_q8_matmul.argtypes = lib.oss_packed_matmul.argtypes
    lib.oss_row_bytes.restype = ctypes.c_int64
    lib.oss_row_bytes.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.oss_matmul_batch.restype = ctypes.c_int
    pointers = ctypes.POINTER(ctypes.c_void_p)
    lib.oss_matmul_batch.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), pointers, pointers,
                                     ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64), pointers, pointers,
                                     ctypes.POINTER(ctypes.c_int), ctypes.c_int64, ctypes.c_int]
    lib.oss_attention_one_token.restype = ctypes.c_int
    lib.oss_attention_one_token.argtypes = [ctypes.POINTER(AttentionLayer), ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_void_p, ctypes.c_int]
    lib.oss_moe_route.restype = ctypes.c_int
    lib.oss_moe_route.argtypes = [ctypes.POINTER(MoeLayer), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.oss_moe_experts.restype = ctypes.c_int
    lib.oss_moe_experts.argtypes = [ctypes.POINTER(MoeLayer), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_int]
    lib.oss_expand.restype = None
    lib.oss_expand.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                               ctypes.c_void_p, ctypes.c_int]
    return lib


@cache
def library() -> ctypes.CDLL | None:
    if os.environ.get("OSS_CONVERT_NATIVE", "1") == "0":
        return None
    return cbuild.library(SOURCES, "the CPU kernels", "the CPU runtime runs on numpy and torch, slower",
                          openmp=True, load=load)


def for_format(format: str) -> ctypes.CDLL | None:
    """The library, where it is built and multiplies `format` in its stored form."""
    return library() if format in FORMATS else None


def row_bytes(lib: ctypes.CDLL, format: str, k: int) -> int:
    """Bytes of one stored row of k values, as the kernels read it."""
    return lib.oss_row_bytes(FORMATS[format], k)


def address(a: np.ndarray | torch.Tensor | None) -> int | None:
    if a is None:
        return None
    return a.data_ptr() if isinstance(a, torch.Tensor) else a.ctypes.data


# Up to this many tokens the product runs in C straight from the stored form; above it the
# matrix is expanded into a reused float32 buffer and torch's GEMM multiplies. Measured on the
# 20b's shapes (2 threads, AVX-512): the C tiles win up to 128 tokens in every format, torch's
# GEMM from 256 on, its cost of expanding and packing the weights then spread over enough tokens.
FUSED_MAX_TOKENS = 128

_scratch = torch.empty(0)


def contiguous(a):
    if a is None:
        return None
    return a.contiguous() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)


def packed_matmul(lib: ctypes.CDLL, format: str, data: np.ndarray | torch.Tensor, scales, shape: tuple[int, int],
                  x: torch.Tensor, activations: str = "float32") -> torch.Tensor:
    """x [T, K] float32 @ W.T in C, W [N, K] in its stored form (`data`: its rows as stored;
    `scales`: MXFP4's E8M0 bytes [N, K/32]). Returns [T, N] float32. With activations="q8" and
    a format of Q8_FORMATS, x is rounded to Q8_0 first (any number of tokens)."""
    n, k = shape
    x, data, scales = x.float().contiguous(), contiguous(data), contiguous(scales)
    y = torch.empty((x.shape[0], n), dtype=torch.float32)
    if x.shape[0] == 0:
        return y
    product = lib.oss_q8_matmul if activations == "q8" and format in Q8_FORMATS else lib.oss_packed_matmul
    status = product(FORMATS[format], address(data), address(scales), n, k, x.data_ptr(), x.shape[0],
                     y.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise MemoryError(f"packed_matmul: status {status} for {format} [{n}, {k}]")
    return y


def _check(status: int, what: str) -> None:
    """A native call's status as an error: -1 a product the kernels cannot take, -2 out of memory."""
    if status != 0:
        raise (ValueError if status == -1 else MemoryError)(f"{what}: status {status}")


class Product(NamedTuple):
    """One product of a batch: y [T, N] = x [T, K] @ W.T, W [N, K] in its stored form (`data`,
    and MXFP4's `scales`) and y a contiguous float32 tensor to write into."""
    format: str
    data: np.ndarray | torch.Tensor
    scales: np.ndarray | torch.Tensor | None
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
    status = lib.oss_matmul_batch(
        count, (ctypes.c_int * count)(*(FORMATS[p.format] for p in products)),
        (ctypes.c_void_p * count)(*map(address, data)), (ctypes.c_void_p * count)(*map(address, scales)),
        (ctypes.c_int64 * count)(*(p.shape[0] for p in products)), (ctypes.c_int64 * count)(*(p.shape[1] for p in products)),
        (ctypes.c_void_p * count)(*(x.data_ptr() for x in xs)), (ctypes.c_void_p * count)(*(p.y.data_ptr() for p in products)),
        (ctypes.c_int * count)(*(int(activations == "q8" and p.format in Q8_FORMATS) for p in products)),
        tokens, torch.get_num_threads())
    if status != 0:
        _check(status, f"batch_matmul: {[(p.format, p.shape) for p in products]}")


class Matrices(NamedTuple):
    """Stored matrices as the C side takes a list of them: parallel arrays of their formats,
    pointers and Q8_0 flags (`held`: what the pointers point into, kept alive with them)."""
    formats: ctypes.Array
    data: ctypes.Array
    scales: ctypes.Array
    q8: ctypes.Array
    held: list


def matrices(stored: list, activations: str) -> Matrices:
    """`stored`: weights.StoredRows (their format and `addresses`), in the C side's order."""
    count = len(stored)
    addresses = [p.addresses for p in stored]
    return Matrices((ctypes.c_int * count)(*(FORMATS[p.format] for p in stored)),
                    (ctypes.c_void_p * count)(*(a[0] for a in addresses)),
                    (ctypes.c_void_p * count)(*(a[1] for a in addresses)),
                    (ctypes.c_int * count)(*(int(activations == "q8" and p.format in Q8_FORMATS) for p in stored)),
                    stored)


def attention_layer(stored: list, activations: str, biases: list[torch.Tensor], norm: torch.Tensor,
                    sinks: torch.Tensor, next_norm: torch.Tensor, heads: int, kv_heads: int, head_dim: int,
                    window: int, eps: float) -> AttentionLayer:
    """`stored`: the StoredRows of q, k, v and o; `biases` theirs; `norm` the attention's RMSNorm
    weight, `next_norm` the MoE block's; `window`: the positions a query sees (0: all)."""
    hidden = norm.numel()
    rows = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim, hidden)
    vectors = [*biases, norm, sinks, next_norm]
    if any(t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu" for t in vectors) \
            or [b.numel() for b in biases] != list(rows) or sinks.numel() != heads or next_norm.numel() != hidden \
            or len(stored) != 4 or any(p.scales is not None for p in stored) \
            or [(p.data.shape[0], p.data.nbytes // max(1, p.data.shape[0])) for p in stored] \
            != [(n, row_bytes(library(), p.format, k)) for p, n, k in zip(stored, rows, (hidden,) * 3 + (rows[0],))]:
        raise ValueError("attention_layer: float32 contiguous vectors of the layer's sizes, four matrices without "
                         "separate scales")
    m = matrices(stored, activations)
    layer = AttentionLayer(hidden, heads, kv_heads, head_dim, window, eps, norm.data_ptr(), m.formats, m.data, m.q8,
                           (ctypes.c_void_p * 4)(*(b.data_ptr() for b in biases)), sinks.data_ptr(),
                           next_norm.data_ptr())
    layer.held = (m, vectors)
    return layer


def attention_one_token(lib: ctypes.CDLL, layer: AttentionLayer, x: torch.Tensor, cos: torch.Tensor,
                        sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: int,
                        next_h: torch.Tensor) -> None:
    """One token's attention block: x [1, hidden] += o(attention(rms_norm(x))) + o's bias, in place;
    its k and v written at `position` of keys and values [capacity, kv heads, head_dim], which
    hold the earlier positions'; next_h [1, hidden] = the MoE block's RMSNorm of the new x. cos and
    sin [1, head_dim]: the position's rotation."""
    kv = layer.kv_heads * layer.head_dim
    tensors = [x, cos, sin, keys, values, next_h]
    if any(t.dtype != torch.float32 or not t.is_contiguous() for t in tensors) or x.numel() != layer.hidden \
            or next_h.numel() != layer.hidden or cos.numel() != layer.head_dim or sin.numel() != layer.head_dim \
            or keys.shape != values.shape or keys[0].numel() != kv or not 0 <= position < keys.shape[0]:
        raise ValueError("attention_one_token: float32 contiguous tensors of the layer's sizes, room at the position")
    _check(lib.oss_attention_one_token(ctypes.byref(layer), x.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                                       keys.data_ptr(), values.data_ptr(), position, next_h.data_ptr(),
                                       torch.get_num_threads()),
           "attention_one_token")


class MoeOneToken:
    """A layer's MoE block on one token in two native calls (oss_moe_route, oss_moe_experts):
    the layer's MoeLayer, made once, with room for every expert's matrices; `add` fills an
    expert's at its first use."""

    def __init__(self, top_k: int, router_w: torch.Tensor, router_b: torch.Tensor, b1: torch.Tensor,
                 b2: torch.Tensor, limit: float, alpha: float):
        (experts, hidden), inter = router_w.shape, b1.shape[1] // 2
        vectors = (router_w, router_b, b1, b2)
        if any(t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu" for t in vectors) \
                or router_b.numel() != experts or b1.shape != (experts, 2 * inter) or b2.shape != (experts, hidden) \
                or not 0 < top_k <= experts:
            raise ValueError("MoeOneToken: float32 contiguous router and biases of the layer's sizes")
        # room for two first matrices per expert (GGUF's gate and up); `parts` is set by the first `add`
        arrays = [(t * (experts * n))() for n in (2, 1)
                  for t in (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)]
        self.layer = MoeLayer(experts, top_k, hidden, inter, 0, limit, alpha, *(t.data_ptr() for t in vectors),
                              *map(ctypes.addressof, arrays))
        self.held, self.known = (vectors, arrays), set()
        self.ids, self.weights = (ctypes.c_int64 * top_k)(), (ctypes.c_float * top_k)()

    def add(self, e: int, first: list, second: list, activations: str) -> None:
        """Expert e's matrices (weights.StoredRows): its first ones (1, or GGUF's 2, as every
        expert's), its second one."""
        if len(first) not in (1, 2) or self.layer.parts not in (0, len(first)) or len(second) != 1 \
                or not 0 <= e < self.layer.experts:
            raise ValueError(f"MoeOneToken: expert {e} with {len(first)} first and {len(second)} second matrices")
        self.layer.parts = len(first)
        for at, rows in ((e * self.layer.parts + p, r) for p, r in enumerate(first)):
            self._put(0, at, rows, activations)
        self._put(4, e, second[0], activations)
        self.known.add(e)
        self.held += (first, second)

    def _put(self, first_array: int, at: int, rows, activations: str) -> None:
        formats, ws, scales, q8 = self.held[1][first_array:first_array + 4]
        formats[at], (ws[at], scales[at]) = FORMATS[rows.format], rows.addresses
        q8[at] = int(activations == "q8" and rows.format in Q8_FORMATS)

    def route(self, lib: ctypes.CDLL, h: torch.Tensor) -> list[int]:
        """The experts h [1, hidden] is routed to, in ascending order (their weights kept for `run`)."""
        if h.dtype != torch.float32 or not h.is_contiguous() or h.numel() != self.layer.hidden:
            raise ValueError("MoeOneToken: a float32 contiguous token of the layer's size")
        _check(lib.oss_moe_route(ctypes.byref(self.layer), h.data_ptr(), self.ids, self.weights), "moe_route")
        return list(self.ids)

    def run(self, lib: ctypes.CDLL, h: torch.Tensor, x: torch.Tensor) -> None:
        """x [1, hidden] += the MoE block on h, after `route` and `add` of the experts it chose."""
        if x.dtype != torch.float32 or not x.is_contiguous() or x.numel() != self.layer.hidden \
                or not self.known.issuperset(self.ids):
            raise ValueError("MoeOneToken: a float32 contiguous x of the layer's size, the chosen experts added")
        _check(lib.oss_moe_experts(ctypes.byref(self.layer), h.data_ptr(), self.ids, self.weights, x.data_ptr(),
                                   torch.get_num_threads()),
               "moe_experts")


def expand(lib: ctypes.CDLL, format: str, data, scales, shape: tuple[int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """W [N, K] as float32, expanded in C (into `out` when given)."""
    n, k = shape
    data, scales = contiguous(data), contiguous(scales)
    out = torch.empty((n, k), dtype=torch.float32) if out is None else out
    lib.oss_expand(FORMATS[format], address(data), address(scales), n, k, out.data_ptr(), torch.get_num_threads())
    return out


# the expansion buffer's size in values (64 MB): an expert fits whole, the 201088-row output
# matrix goes through it in slices
SCRATCH_VALUES = 1 << 24


def matmul(lib: ctypes.CDLL, format: str, data, scales, shape: tuple[int, int], x: torch.Tensor,
           activations: str = "float32") -> torch.Tensor:
    """x [T, K] @ W.T for W [N, K] in its stored form: in C for a few tokens (or any number with
    Q8_0 activations, whose integer products outrun float32 GEMM), else expanded (a slice of
    rows at a time) into the reused buffer and multiplied by torch."""
    if x.shape[0] <= FUSED_MAX_TOKENS or (activations == "q8" and format in Q8_FORMATS):
        return packed_matmul(lib, format, data, scales, shape, x, activations)
    global _scratch
    n, k = shape
    step = max(1, SCRATCH_VALUES // k)
    if _scratch.numel() < min(n, step) * k:
        _scratch = torch.empty(min(n, step) * k, dtype=torch.float32)
    x = x.float()
    if n <= step:
        return x @ expand(lib, format, data, scales, shape, _scratch[:n * k].view(n, k)).T
    y = torch.empty((x.shape[0], n), dtype=torch.float32)
    for first in range(0, n, step):
        rows = min(step, n - first)
        w = expand(lib, format, data[first:first + rows], None if scales is None else scales[first:first + rows],
                   (rows, k), _scratch[:rows * k].view(rows, k))
        y[:, first:first + rows] = x @ w.T
    return y
