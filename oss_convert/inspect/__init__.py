"""`oss-convert inspect`: which tensors are MXFP4, which BF16/F32/quantized, and what follows."""

from .render import render_report
from .report import inspect_report

__all__ = ["inspect_report", "render_report"]
