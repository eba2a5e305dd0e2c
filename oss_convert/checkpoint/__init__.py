"""One model of a GPT-OSS checkpoint as logical tensors, whatever local file holds it.

Hub repos are opened above this layer (oss_convert.hub), from the same openers.
"""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import Checkpoint
from .config import GptOssConfig
from .gguf_source import gguf_checkpoint, open_gguf
from .safetensors_source import open_safetensors, open_safetensors_files
from .tensor import Role, Tensor


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint folder, a .safetensors file or a (split) .gguf, reading headers only."""
    path = Path(path)
    if path.suffix == ".gguf" or _starts_with_gguf_magic(path):
        return open_gguf(path)
    return open_safetensors(path)


def _starts_with_gguf_magic(path: Path) -> bool:
    """A GGUF under another name (an Ollama blob is named by its digest)."""
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(4) == b"GGUF"
    except OSError:
        return False


__all__ = ["Checkpoint", "GptOssConfig", "Role", "Tensor", "gguf_checkpoint", "open_checkpoint", "open_gguf",
           "open_safetensors", "open_safetensors_files"]
