"""The one table of formats: for each way oss-convert stores a weight's values, every fact the rest
of the package needs about it, declared once. Each list of formats elsewhere (the codecs by
type, llama-quantize's row check, the CPU kernels' numbers and their Q8_0 formats, what torch
expands on a GPU, what the runtime keeps in its stored form) is derived from here.

- block, block_bytes: from the codec (gguf-py's GGML_QUANT_SIZES); MXFP4 in HF's layout counts
  its 16 code bytes and its scale byte, which lies in a tensor of its own (scales_apart).
- codec: our numpy codec; `codec.quantizes` where it has a quantizer (bit-exact with ggml's).
  ggml types without a row here are dequantized by gguf-py (oss_convert.formats.registry).
- kernel: the number the CPU kernels (runtime/kernels/native/kernels.h) give the format, where
  they multiply it in its stored form; q8: and against activations rounded to Q8_0, as
  llama.cpp's CPU backend multiplies it (its vec_dot_type is Q8_0).
- torch: the runtime expands an expert stored in it in torch, on the expert's device (a GPU),
  not on the host (experts in float formats are widened to float32 as they are read).
- fp16_scales: byte offsets of each block's fp16 scales, which llama-quantize's row check
  (ggml_validate_row_data) requires to be finite.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType as T

from . import floats, iq4, mxfp4, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0
from .codec import Codec


@dataclass(frozen=True)
class Format:
    name: str  # as the runtime and the kernels name it (a ggml type name, or MXFP4 in a layout)
    ggml_type: int | None  # the GGUF type code; None for HF's MXFP4 pair
    codec: type[Codec] | None
    kernel: int | None = None
    q8: bool = False
    torch: bool = False
    fp16_scales: tuple[int, ...] = ()
    block: int = 0
    block_bytes: int = 0
    scales_apart: bool = False

    def __post_init__(self):
        if self.codec is not None and not self.block:
            object.__setattr__(self, "block", self.codec.block)
            object.__setattr__(self, "block_bytes", self.codec.block_bytes)

    @property
    def quantizes(self) -> bool:
        return self.codec is not None and self.codec.quantizes


FORMATS: tuple[Format, ...] = (
    Format("F32", T.F32, floats.F32Codec, kernel=0),
    Format("BF16", T.BF16, floats.BF16Codec, kernel=1),
    Format("F16", T.F16, floats.F16Codec, kernel=2),
    # HF's layout (safetensors `_blocks`/`_scales`), and the runtime's packed form of every MXFP4
    Format("MXFP4", None, None, kernel=3, q8=True, torch=True, block=32, block_bytes=17, scales_apart=True),
    Format("MXFP4_GGML", T.MXFP4, mxfp4.MXFP4Codec, kernel=8, q8=True),
    Format("MXFP4_OLLAMA", mxfp4.OLLAMA_MXFP4, mxfp4.OllamaMXFP4Codec),
    Format("Q8_0", T.Q8_0, q8_0.Q8_0Codec, kernel=4, q8=True, torch=True, fp16_scales=(0,)),
    Format("Q5_0", T.Q5_0, q5_0.Q5_0Codec, kernel=5, q8=True, torch=True, fp16_scales=(0,)),
    Format("Q4_0", T.Q4_0, q4_0.Q4_0Codec, kernel=6, q8=True, torch=True, fp16_scales=(0,)),
    Format("Q5_1", T.Q5_1, q5_1.Q5_1Codec, kernel=7, torch=True, fp16_scales=(0, 2)),
    Format("Q4_1", T.Q4_1, q4_1.Q4_1Codec, fp16_scales=(0, 2)),
    Format("Q4_K", T.Q4_K, q4_k.Q4_KCodec, kernel=9, torch=True, fp16_scales=(0, 2)),
    Format("Q5_K", T.Q5_K, q5_k.Q5_KCodec, torch=True, fp16_scales=(0, 2)),
    Format("Q6_K", T.Q6_K, q6_k.Q6_KCodec, torch=True, fp16_scales=(208,)),
    Format("Q2_K", T.Q2_K, q2_k.Q2_KCodec, fp16_scales=(80, 82)),
    Format("Q3_K", T.Q3_K, q3_k.Q3_KCodec, fp16_scales=(108,)),
    Format("IQ4_NL", T.IQ4_NL, iq4.IQ4_NLCodec, fp16_scales=(0,)),
    Format("IQ4_XS", T.IQ4_XS, iq4.IQ4_XSCodec, fp16_scales=(0,)),
)

BY_NAME = {f.name: f for f in FORMATS}
BY_TYPE = {f.ggml_type: f for f in FORMATS if f.ggml_type is not None}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)


def by_type(ggml_type: int | None) -> Format | None:
    return BY_TYPE.get(ggml_type) if ggml_type is not None else None


def kernel_formats() -> dict[str, int]:
    """Name -> number of every format the CPU kernels multiply in its stored form."""
    return {f.name: f.kernel for f in FORMATS if f.kernel is not None}


def q8_formats() -> frozenset[str]:
    """The formats the CPU kernels also multiply against Q8_0 activations."""
    return frozenset(f.name for f in FORMATS if f.q8)


def quantizers() -> dict[int, type[Codec]]:
    """ggml type -> the codec that quantizes to it, bit for bit as ggml does."""
    return {f.ggml_type: f.codec for f in FORMATS if f.ggml_type is not None and f.codec is not None
            and f.quantizes and f.ggml_type not in FLOAT_TYPES}


def torch_expanded() -> frozenset[str]:
    """The formats the runtime expands in torch on the tensor's device."""
    return frozenset(f.name for f in FORMATS if f.torch)


def in_place(ggml_type: int | None, format: str) -> Format | None:
    """The format the CPU kernels read a tensor's stored bytes as, in place, or None: a GGUF
    tensor's by its type, a safetensors tensor's float format by name. (HF's MXFP4 pair is
    repacked, never read in place: its scales lie in another tensor.)"""
    row = by_type(ggml_type) if ggml_type is not None else BY_NAME.get(format)
    if row is None or row.kernel is None or row.ggml_type is None:
        return None
    return row
