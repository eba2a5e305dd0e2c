"""IQ4_XS (ggml type 23): super-blocks of 256 with 6-bit block scales (see iq4)."""

from .iq4 import dequantize_xs as dequantize
from .iq4 import quantize_xs as quantize

__all__ = ["dequantize", "quantize"]
