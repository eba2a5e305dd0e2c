"""One model of a GPT-OSS checkpoint as logical tensors, whatever file holds it."""

from __future__ import annotations

import os
from pathlib import Path

from .gguf_source import GGUFCheckpoint, open_gguf
from .safetensors_source import SafetensorsCheckpoint, open_safetensors
from .tensors import LogicalTensor, Role

Checkpoint = SafetensorsCheckpoint | GGUFCheckpoint


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint folder, a .safetensors file, a (split) .gguf or a Hub repo id
    (owner/name[@revision][:path]), reading headers only."""
    from ..hub import open_remote, parse
    if parse(path) is not None:
        return open_remote(path)
    path = Path(path)
    if path.suffix == ".gguf":
        return open_gguf(path)
    return open_safetensors(path)


__all__ = ["Checkpoint", "GGUFCheckpoint", "LogicalTensor", "Role", "SafetensorsCheckpoint",
           "open_checkpoint", "open_gguf", "open_safetensors"]
