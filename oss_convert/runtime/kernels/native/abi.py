"""The C library's interface, mirrored once: the structs it takes, each exported function's
arguments and result, the format numbers (formats/table.py's `kernel` column) and what its
status codes mean."""

from __future__ import annotations

import ctypes

from ....formats import table

FORMATS = table.kernel_formats()  # name -> the number kernels.h gives it
Q8_FORMATS = table.q8_formats()  # the formats also multiplied against Q8_0 activations


class AttentionLayerStruct(ctypes.Structure):
    """decoder.c's oss_attention_layer: one layer's attention as oss_attention_one_token takes
    it (sizes, the four matrices q, k, v, o, and the float32 vectors)."""
    _fields_ = [("hidden", ctypes.c_int64), ("heads", ctypes.c_int64), ("kv_heads", ctypes.c_int64),
                ("head_dim", ctypes.c_int64), ("window", ctypes.c_int64), ("eps", ctypes.c_float),
                ("norm", ctypes.c_void_p), ("formats", ctypes.c_int * 4), ("ws", ctypes.c_void_p * 4),
                ("q8", ctypes.c_int * 4), ("biases", ctypes.c_void_p * 4), ("sinks", ctypes.c_void_p),
                ("next_norm", ctypes.c_void_p)]


class MoeLayerStruct(ctypes.Structure):
    """decoder.c's oss_moe_layer: one layer's MoE block as oss_moe_route and oss_moe_experts take
    it (sizes, the router, the biases, and per expert its matrices, NULL until put in)."""
    _fields_ = [("experts", ctypes.c_int64), ("top_k", ctypes.c_int64), ("hidden", ctypes.c_int64),
                ("inter", ctypes.c_int64), ("parts", ctypes.c_int), ("limit", ctypes.c_float),
                ("alpha", ctypes.c_float), ("router_w", ctypes.c_void_p), ("router_b", ctypes.c_void_p),
                ("b1", ctypes.c_void_p), ("b2", ctypes.c_void_p),
                ("first_formats", ctypes.c_void_p), ("first_ws", ctypes.c_void_p), ("first_scales", ctypes.c_void_p),
                ("first_q8", ctypes.c_void_p), ("second_formats", ctypes.c_void_p), ("second_ws", ctypes.c_void_p),
                ("second_scales", ctypes.c_void_p), ("second_q8", ctypes.c_void_p)]


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Each exported function's argument and result types (as kernels.h and decoder.c declare them)."""
    pointers, int64s = ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64)
    ints = ctypes.POINTER(ctypes.c_int)
    product = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
               ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    signatures = {
        "oss_row_bytes": (ctypes.c_int64, [ctypes.c_int, ctypes.c_int64]),
        "oss_expand": (None, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_int]),
        "oss_packed_matmul": (ctypes.c_int, product),
        "oss_q8_matmul": (ctypes.c_int, product),
        "oss_matmul_batch": (ctypes.c_int, [ctypes.c_int, ints, pointers, pointers, int64s, int64s, pointers, pointers,
                                            ints, ctypes.c_int64, ctypes.c_int]),
        "oss_attention_one_token": (ctypes.c_int, [ctypes.POINTER(AttentionLayerStruct), *[ctypes.c_void_p] * 5,
                                                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]),
        "oss_moe_route": (ctypes.c_int, [ctypes.POINTER(MoeLayerStruct), *[ctypes.c_void_p] * 3]),
        "oss_moe_experts": (ctypes.c_int, [ctypes.POINTER(MoeLayerStruct), *[ctypes.c_void_p] * 4, ctypes.c_int]),
    }
    for name, (result, arguments) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = result, arguments
    return lib


def check(status: int, what: str) -> None:
    """A call's status as an error: 0 done, -1 a product the kernels cannot take (nothing
    computed), -2 out of memory."""
    if status == -1:
        raise ValueError(f"{what}: the kernels cannot take it")
    if status != 0:
        raise MemoryError(f"{what}: out of memory (status {status})")


def q8_flag(activations: str, format: str) -> int:
    """1 where the kernels round the activations to Q8_0 for a product with `format`."""
    return int(activations == "q8" and format in Q8_FORMATS)
