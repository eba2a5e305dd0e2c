"""IQ4_NL (ggml type 20): blocks of 32, fp16 d and 16 bytes of 4-bit level indices (see iq4)."""

from .iq4 import dequantize_nl as dequantize
from .iq4 import quantize_nl as quantize

__all__ = ["dequantize", "quantize"]
