"""`oss-convert generate`: the model runs on a prompt (greedy.py)."""

from .greedy import generate

__all__ = ["generate"]
