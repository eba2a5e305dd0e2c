"""`oss-convert inspect`: which tensors are MXFP4, which BF16/F32/quantized, and what follows."""

from .document import inspect_document
from .render import render_inspect

__all__ = ["inspect_document", "render_inspect"]
