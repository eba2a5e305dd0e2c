"""MXFP4: 32 E2M1 codes sharing one E8M0 scale byte, in its three byte layouts.

- HF (safetensors `_blocks`/`_scales`): byte j of a 16-byte block holds element 2j in the
  low nibble and 2j+1 in the high nibble; the scales live in a separate tensor.
- GGML (type 39): 17-byte blocks, the scale byte first, then qs[16] where qs[j] holds
  element j in the low nibble and element j+16 in the high nibble.
- Ollama's older GGUFs (type 4): 17-byte blocks, the scale byte first, then the HF bytes.

Converting between them moves nibbles and never decodes a value.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .codec import Codec

BLOCK = 32
GGML_BLOCK_BYTES = 17
OLLAMA_MXFP4 = 4  # Ollama's older gpt-oss GGUFs: MXFP4 blocks with the HF nibble order
# E2M1 code -> value; bit 3 is the sign.
E2M1_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def hf_codes(blocks: np.ndarray) -> np.ndarray:
    """HF blocks [..., 16] -> codes [..., 32] in element order."""
    codes = np.empty(blocks.shape[:-1] + (32,), np.uint8)
    codes[..., 0::2] = blocks & 0x0F
    codes[..., 1::2] = blocks >> 4
    return codes


def hf_blocks_from_codes(codes: np.ndarray) -> np.ndarray:
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


_LOW = np.uint64(0x0F0F0F0F0F0F0F0F)
_HIGH = np.uint64(0xF0F0F0F0F0F0F0F0)
_FOUR = np.uint64(4)


def hf_to_ggml(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF blocks [..., G, 16] and scales [..., G] -> GGML bytes [..., G * 17]."""
    qs = hf_to_ggml_qs(blocks)
    out = np.empty((qs.shape[0], GGML_BLOCK_BYTES), np.uint8)
    out[:, 0] = scales.reshape(-1)
    out[:, 1:] = qs
    return out.reshape(blocks.shape[:-2] + (-1,))


def hf_to_ggml_qs(blocks: np.ndarray) -> np.ndarray:
    """HF blocks [..., 16] -> GGML's 16 code bytes per block, [N, 16].

    Byte k < 8 of an HF block holds elements 2k, 2k+1; byte 8+k holds 16+2k, 17+2k. GGML
    wants qs[2k] = (2k | 16+2k << 4) and qs[2k+1] = (2k+1 | 17+2k << 4): the low nibbles of
    bytes k and 8+k, then their high nibbles. Done eight bytes at a time on uint64 words.
    """
    words = np.ascontiguousarray(blocks).view(np.uint64).reshape(-1, 2)
    first, second = words[:, 0], words[:, 1]  # bytes 0..7 and 8..15 of each block
    even = (first & _LOW) | ((second & _LOW) << _FOUR)
    odd = ((first >> _FOUR) & _LOW) | (second & _HIGH)
    qs = np.empty((words.shape[0], 16), np.uint8)
    qs[:, 0::2] = even.view(np.uint8).reshape(-1, 8)
    qs[:, 1::2] = odd.view(np.uint8).reshape(-1, 8)
    return qs


def hf_to_ggml_columns(columns: np.ndarray) -> np.ndarray:
    """hf_to_ggml_qs for blocks stored column-wise: HF bytes [16, N] (byte j of every block)
    -> GGML bytes [16, N]. Whole rows move, so it runs on contiguous memory."""
    out = np.empty_like(columns)
    out[0::2] = (columns[:8] & 0x0F) | (columns[8:] << 4)
    out[1::2] = (columns[:8] >> 4) | (columns[8:] & 0xF0)
    return out


def ggml_to_hf(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GGML bytes [..., G * 17] -> HF blocks [..., G, 16] and scales [..., G].

    The inverse of hf_to_ggml_qs: GGML's even code bytes hold the low nibbles of HF bytes k
    and 8+k (k < 8), its odd ones their high nibbles. Done eight bytes at a time on uint64 words."""
    blocks17 = np.asarray(data).reshape(-1, GGML_BLOCK_BYTES)
    scales = np.ascontiguousarray(blocks17[:, 0]).reshape(data.shape[:-1] + (-1,))
    even = np.ascontiguousarray(blocks17[:, 1::2]).view(np.uint64).reshape(-1)  # qs[0], qs[2], ... qs[14]
    odd = np.ascontiguousarray(blocks17[:, 2::2]).view(np.uint64).reshape(-1)
    blocks = np.empty((blocks17.shape[0], 2), np.uint64)
    blocks[:, 0] = (even & _LOW) | ((odd & _LOW) << _FOUR)  # bytes 0..7: elements 0..15
    blocks[:, 1] = ((even >> _FOUR) & _LOW) | (odd & _HIGH)  # bytes 8..15: elements 16..31
    return blocks.view(np.uint8).reshape(data.shape[:-1] + (-1, 16)), scales


def ollama_to_hf(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ollama's older layout: [..., G * 17] with the scale byte first, then the HF bytes."""
    blocks17 = data.reshape(data.shape[:-1] + (-1, GGML_BLOCK_BYTES))
    return np.ascontiguousarray(blocks17[..., 1:]), np.ascontiguousarray(blocks17[..., 0])


def hf_to_ollama(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    out = np.concatenate([scales[..., None], blocks], axis=-1)
    return out.reshape(blocks.shape[:-2] + (-1,))


def _pair_table() -> np.ndarray:
    """byte -> its two E2M1 values (low nibble first) as one 8-byte word: one gather per byte."""
    pairs = np.empty((256, 2), np.float32)
    pairs[:, 0] = E2M1_VALUES[np.arange(256) & 0x0F]
    pairs[:, 1] = E2M1_VALUES[np.arange(256) >> 4]
    return pairs.view(np.uint64).reshape(256)


_PAIRS = _pair_table()


def decode_hf(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF blocks/scales -> float32 values [..., G * 32]."""
    values = _PAIRS[blocks].view(np.float32).reshape(blocks.shape[:-1] + (32,))
    # 2^(s-127) for s in 0..254 (255 is NaN in E8M0); ldexp is exact for all of them.
    factor = np.ldexp(np.float32(1), np.minimum(scales, 254).astype(np.int32) - 127).astype(np.float32)
    factor[scales == 255] = np.nan
    values *= factor[..., None]
    return values.reshape(blocks.shape[:-2] + (-1,))


class MXFP4Codec(Codec, ggml_type=T.MXFP4):
    """ggml's MXFP4 blocks (type 39). No quantizer: MXFP4 is only ever copied from the source."""

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        return decode_hf(*ggml_to_hf(blocks)).reshape(blocks.shape[0], BLOCK)


class OllamaMXFP4Codec(Codec, ggml_type=OLLAMA_MXFP4, block=(BLOCK, GGML_BLOCK_BYTES)):
    """Ollama's older MXFP4 blocks (its type 4: the scale byte, then HF's nibble order)."""

    @staticmethod
    def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
        return decode_hf(*ollama_to_hf(blocks)).reshape(blocks.shape[0], BLOCK)
