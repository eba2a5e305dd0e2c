"""`oss-convert compare`: two artifacts run side by side on our runtime, MoE block by block
(moe.py) or whole on a text (full.py)."""

from .full import compare_full, render_full
from .moe import compare_moe, parse_layers, render_comparison

__all__ = ["compare_full", "compare_moe", "parse_layers", "render_comparison", "render_full"]
