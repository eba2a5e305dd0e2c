"""`oss-convert report`: verify, the MoE comparison and, with a text, the whole-model comparison
of a port against its source, as one self-contained HTML page (and the same data as JSON)."""

from .gather import build_report, describe
from .page import render_page

__all__ = ["build_report", "describe", "render_page"]
