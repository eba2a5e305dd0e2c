"""The base of every numpy codec: rows of float32 values to rows of ggml blocks and back, the row
splitting done here once, the block arithmetic by each codec (as gguf-py's `quants.py` does).

A subclass names its ggml type (`class Q4_0(Codec, ggml_type=T.Q4_0)`); its block size and bytes
come from gguf-py's GGML_QUANT_SIZES. It implements `dequantize_blocks`, and `quantize_blocks`
where it has a quantizer (bit-exact with ggml's reference quantizer).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T


class Codec:
    ggml_type: ClassVar[int]  # a GGMLQuantizationType, or a type code gguf-py does not know (Ollama's)
    block: ClassVar[int]  # values per block
    block_bytes: ClassVar[int]
    quantizes: ClassVar[bool]  # whether it has a quantizer

    def __init_subclass__(cls, ggml_type: int | None = None, block: tuple[int, int] | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if ggml_type is not None:
            cls.ggml_type = ggml_type
            cls.block, cls.block_bytes = block or GGML_QUANT_SIZES[T(ggml_type)]
        cls.quantizes = (cls.quantize_blocks is not Codec.quantize_blocks
                         or cls.quantize.__func__ is not Codec.quantize.__func__)  # type: ignore[attr-defined]

    @classmethod
    def quantize(cls, values: np.ndarray) -> np.ndarray:
        """float32 rows [..., n] (n a multiple of the block) -> bytes [..., n / block * block_bytes]."""
        x = np.asarray(values, np.float32)
        return cls.quantize_blocks(x.reshape(-1, cls.block)).reshape(x.shape[:-1] + (-1,))

    @classmethod
    def dequantize(cls, data: np.ndarray) -> np.ndarray:
        """bytes [..., blocks * block_bytes] -> float32 [..., blocks * block]."""
        raw = np.asarray(data).view(np.uint8)
        return cls.dequantize_blocks(raw.reshape(-1, cls.block_bytes)).reshape(raw.shape[:-1] + (-1,))

    @staticmethod
    def quantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """float32 blocks [N, block] -> bytes [N, block_bytes]."""
        raise NotImplementedError("no quantizer for this format")

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        """bytes [N, block_bytes] -> float32 [N, block]."""
        raise NotImplementedError


class ScaleAndCodes(Codec):
    """A block format of one fp16 scale and 32 codes (Q8_0, Q4_0, Q5_0), its quantizer in two
    steps: the scale and the codes, then their bytes (formats/mxfp4_requant.py builds on both)."""

    @staticmethod
    def scales_and_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 blocks [N, 32] -> (d float32 [N], codes [N, 32])."""
        raise NotImplementedError

    @staticmethod
    def pack(d: np.ndarray, q: np.ndarray) -> np.ndarray:
        """(d [N], codes [N, 32]) -> bytes [N, block_bytes]."""
        raise NotImplementedError

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return cls.pack(*cls.scales_and_codes(blocks))
