"""`oss-convert inspect`: which tensors are MXFP4, which BF16/F32/quantized, and what follows."""

from .render import render_inspect
from .document import inspect_document

__all__ = ["inspect_document", "render_inspect"]
