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
    if path.suffix == ".gguf":
        return open_gguf(path)
    return open_safetensors(path)


__all__ = ["Checkpoint", "GptOssConfig", "Role", "Tensor", "gguf_checkpoint", "open_checkpoint", "open_gguf",
           "open_safetensors", "open_safetensors_files"]
