"""A GPT-OSS model stored as GGUF: llama.cpp's `gpt-oss` layout or Ollama's older `gptoss`."""

from __future__ import annotations

import functools

import numpy as np
from gguf import GGMLQuantizationType as T

from ..errors import OssConvertError
from ..files.gguf import GGUFFile, GGUFTensor, read_gguf
from ..formats.mxfp4 import OLLAMA_MXFP4
from .checkpoint import Checkpoint
from .config import GptOssConfig
from .names import classify, classify_gguf, gguf_names, hf_names, hf_storage_order
from .shapes import check_shapes
from .tensor import Tensor, fused_gate_up
from .tokenizer import tokenizer_files, vocab_from_gguf

LAYOUTS = {"gpt-oss": "gpt-oss", "gptoss": "gptoss"}
_VIEWS: dict[int, type] = {T.F32: np.float32, T.F16: np.float16, T.BF16: np.uint16, T.F64: np.float64, T.I8: np.int8,
          T.I16: np.int16, T.I32: np.int32, T.I64: np.int64}


def open_gguf(path) -> Checkpoint:
    return gguf_checkpoint(path, read_gguf(path))


def gguf_checkpoint(path, gguf: GGUFFile) -> Checkpoint:
    where = str(gguf.paths[0])
    architecture = gguf.get("general.architecture")
    if architecture is not None and not isinstance(architecture, str):
        raise OssConvertError(f"{where}: metadata general.architecture must be a string, found {architecture!r}"[:300])
    layout = LAYOUTS.get(architecture, "other") if architecture is not None else "other"
    metadata = {k: v.value for k, v in gguf.metadata.items()}
    tensors = [_tensor(t, layout) for t in gguf.tensors.values()]
    config, model = None, []
    if architecture is not None and layout != "other":
        config = GptOssConfig.from_gguf(metadata, architecture, where)
        model = _hf_view({t.name: t for t in tensors}, layout, config.num_layers)
        check_shapes(model, config)
    vocab = functools.partial(vocab_from_gguf, metadata, where)
    return Checkpoint(path, "gguf", layout, gguf.paths[0].parent, gguf.paths, config, tensors, model, vocab,
                      lambda: tokenizer_files(vocab())["tokenizer.json"], metadata, architecture,
                      dict(gguf.metadata))


def _tensor(t: GGUFTensor, layout: str) -> Tensor:
    role, layer = classify_gguf(t.name)
    if t.type == OLLAMA_MXFP4 and not (layout == "gptoss" and role.is_expert_weight):
        raise OssConvertError(f"{t.path}: tensor {t.name!r} has ggml type 4, retired from ggml; only the expert "
                              "weights of Ollama's gptoss files use it (as MXFP4)")
    fmt = "MXFP4" if t.type in (T.MXFP4, OLLAMA_MXFP4) else t.type_name
    stored = functools.partial(_stored_form, t.type)
    shape = tuple(reversed(t.shape))

    def read(start: int, stop: int):
        if len(shape) > 1:
            return stored(t.read(start, stop))
        whole = stored(t.read())
        return whole if (start, stop) == (0, shape[0]) else whole[start:stop]

    return Tensor(t.name, role, layer, fmt, shape, t.nbytes, str(t.path), read, lambda i: stored(t.raw()[i]), t.type,
                  mapper=lambda: stored(t.raw()))


def _stored_form(type_code: int, raw: np.ndarray):
    """GGUF bytes, rows along the last axis, in the stored form `Tensor` promises: plain
    numbers as their numpy type, blocks as bytes."""
    view = _VIEWS.get(type_code)
    return raw if view is None else np.ascontiguousarray(raw).view(view)


def _hf_view(by_name: dict[str, Tensor], layout: str, num_layers: int) -> list[Tensor]:
    """The tensors under their HF names: renamed, or gate and up fused into gate_up."""
    out = []
    for hf in hf_names(num_layers):
        parts = gguf_names(hf, layout)
        found = [by_name[p.gguf] for p in parts if p.gguf in by_name]
        if not parts or len(found) < len(parts):
            continue
        role, layer = classify(hf, "hf")
        if len(found) == 2:
            assert layer is not None  # gate and up are a layer's
            out.append(fused_gate_up(hf, role, layer, *found))
        else:
            out.append(found[0].renamed(hf, role, layer))
    return hf_storage_order(out)
