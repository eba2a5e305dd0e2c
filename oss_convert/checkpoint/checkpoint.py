"""A GPT-OSS checkpoint, whatever holds it: config, tokenizer, metadata and logical tensors.

Two views of the same weights, both as `Tensor`s:
- `tensors`: as the files store them, under their own names (what `inspect` lists);
- `model_tensors`: under the Hugging Face names, the one vocabulary every command speaks
  (OpenAI's fused qkv split, GGUF's gate and up fused again), in the order the HF shards
  store them. Any source serves any command through this view.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from ..errors import OssConvertError
from .config import GptOssConfig
from .tensor import Tensor
from .tokenizer import Vocab

LAYOUT_DESCRIPTIONS = {"hf": "Hugging Face", "original": "OpenAI original/", "gpt-oss": "llama.cpp gpt-oss",
                       "gptoss": "Ollama gptoss (older)", "other": "other"}


@dataclass(eq=False)
class Checkpoint:
    path: object  # what was opened: a folder, a file or a Hub reference
    kind: str  # the container: "safetensors" or "gguf"
    layout: str  # "hf", "original", "gpt-oss" (llama.cpp), "gptoss" (Ollama's older), "other"
    root: PurePath  # the folder holding config and tokenizer files (a Hub reference when remote)
    files: list
    config: GptOssConfig | None
    tensors: list[Tensor]
    model_tensors: list[Tensor]
    read_vocab: Callable[[], Vocab] = field(repr=False)
    read_tokenizer_json: Callable[[], str] = field(repr=False)  # a `tokenizers` Tokenizer's JSON
    metadata: dict = field(default_factory=dict)  # a GGUF's key/values; empty for safetensors
    architecture: str | None = None  # a GGUF's general.architecture
    typed_metadata: dict = field(default_factory=dict, repr=False)  # the same as files.gguf.Value, to write again

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def layout_description(self) -> str:
        return LAYOUT_DESCRIPTIONS[self.layout]

    def tensor(self, hf_name: str) -> Tensor:
        """A tensor of the model under its Hugging Face name."""
        found = self._by_name.get(hf_name)
        if found is None:
            raise OssConvertError(f"{self.where}: has no tensor for {hf_name}")
        return found

    @functools.cached_property
    def _by_name(self) -> dict[str, Tensor]:
        return {t.name: t for t in self.model_tensors}

    def require_config(self) -> GptOssConfig:
        if self.config is None:
            what = f"architecture {self.architecture!r}" if self.kind == "gguf" else "no config"
            raise OssConvertError(f"{self.where}: not a GPT-OSS model ({what})")
        return self.config

    def vocab(self) -> Vocab:
        return self.read_vocab()

    def tokenizer_json(self) -> str:
        return self.read_tokenizer_json()

    def has_mxfp4_experts(self) -> bool:
        experts = [t for t in self.model_tensors if t.role.is_expert_weight]
        return bool(experts) and all(t.format == "MXFP4" for t in experts)

    def model_name(self) -> str:
        """Our naming rule for general.name: the checkpoint folder's name (the repo's, for an
        original/ folder); for a GGUF, the name it carries, else the file's stem (an Ollama blob
        is named by its digest)."""
        if self.kind == "gguf":
            carried = self.metadata.get("general.name")
            return carried if isinstance(carried, str) and carried else Path(str(self.files[0])).stem
        root = self.root.parent if self.layout == "original" and self.root.name == "original" else self.root
        return Path(root).resolve().name if isinstance(root, Path) else root.name
