"""ggml's own quantizers, called through ctypes in the libggml-base that llama-cpp-python ships."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


def load():
    import llama_cpp  # noqa: F401  (the shared libraries live in its package)
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_validate_row_data.restype = ctypes.c_bool
    lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return lib


class GGMLQuantizer:
    def __init__(self):
        self.lib = load()

    def quantize(self, qtype: GGMLQuantizationType, values: np.ndarray) -> np.ndarray:
        """float32 [rows, n_per_row] -> the bytes ggml writes (no importance matrix)."""
        x = np.ascontiguousarray(values, dtype=np.float32)
        rows, n = x.shape
        block, size = GGML_QUANT_SIZES[qtype]
        out = np.zeros((rows, n // block * size), np.uint8)
        self.lib.ggml_quantize_init(int(qtype))
        written = self.lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, n, None)
        assert written == out.nbytes
        return out

    def dequantize(self, qtype: GGMLQuantizationType, data: np.ndarray) -> np.ndarray:
        """Rows of ggml blocks [rows, bytes] -> float32 [rows, values], by ggml's own to_float."""
        raw = np.ascontiguousarray(data, dtype=np.uint8)
        block, size = GGML_QUANT_SIZES[qtype]
        out = np.zeros((raw.shape[0], raw.shape[1] // size * block), np.float32)
        to_float = TO_FLOAT(self.lib.ggml_get_type_traits(int(qtype)).contents.to_float)
        to_float(raw.ctypes.data, out.ctypes.data, out.size)
        return out

    def validates(self, qtype: GGMLQuantizationType, data: np.ndarray) -> bool:
        """ggml_validate_row_data: what llama-quantize checks in every row it writes."""
        raw = np.ascontiguousarray(data).view(np.uint8)
        return bool(self.lib.ggml_validate_row_data(int(qtype), raw.ctypes.data, raw.nbytes))
