"""A GPT-OSS model stored as GGUF: llama.cpp's `gpt-oss` layout or Ollama's older `gptoss`."""

from __future__ import annotations

from pathlib import Path

from ..files.gguf import GGUFFile, read_gguf
from .config import GptOssConfig
from .names import classify_gguf
from .tensors import LogicalTensor

# Ollama's older gpt-oss GGUFs store MXFP4 as ggml type 4 (a code since retired from ggml)
# with the scale byte first and the HF nibble order.
OLLAMA_MXFP4_TYPE = 4


class GGUFCheckpoint:
    kind = "gguf"

    def __init__(self, gguf: GGUFFile):
        self.gguf = gguf
        self.files = gguf.paths
        self.root = gguf.paths[0].parent
        self.architecture = gguf.get("general.architecture")
        self.layout = {"gpt-oss": "gpt-oss", "gptoss": "gptoss"}.get(self.architecture, "other")
        self.metadata = {k: v.value for k, v in gguf.metadata.items()}
        self.config = (GptOssConfig.from_gguf(self.metadata, self.architecture)
                       if self.layout != "other" else None)
        self.tensors = [self._logical(t) for t in gguf.tensors.values()]

    def _logical(self, t) -> LogicalTensor:
        role, layer = classify_gguf(t.name)
        fmt = t.type_name
        if self.layout == "gptoss" and t.type == OLLAMA_MXFP4_TYPE and role.is_expert_weight:
            fmt = "MXFP4"
        return LogicalTensor(t.name, role, layer, fmt, t.shape, t.nbytes, {"data": t}, ggml_order=True)

    @property
    def layout_description(self) -> str:
        return {"gpt-oss": "llama.cpp gpt-oss", "gptoss": "Ollama gptoss (older)"}.get(self.layout, "other")

    def expert_tensors(self) -> list[LogicalTensor]:
        return [t for t in self.tensors if t.role.is_expert_weight]


def open_gguf(path: Path) -> GGUFCheckpoint:
    return GGUFCheckpoint(read_gguf(path))

