"""Build GGUF variants for tests: edited copies, split files, and Ollama's older layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from oss_convert.checkpoint import open_checkpoint
from oss_convert.checkpoint.names import gguf_names
from oss_convert.files.gguf import (
    GGUFWriteTensor,
    Value,
    ValueType,
    read_gguf,
    write_gguf,
)
from oss_convert.formats import floats, mxfp4
from oss_convert.plan.layout import Target, iter_chunks
from oss_convert.plan.lossless import float_type


def rewrite(src: Path, dst: Path, *, edit: dict | None = None, drop=(), meta: dict | None = None) -> Path:
    """Copy a GGUF; `edit` maps tensor name -> fn(raw bytes array) -> new raw bytes."""
    g = read_gguf(src)
    metadata = dict(g.metadata)
    for key, value in (meta or {}).items():
        metadata[key] = Value(metadata[key].type, value)
    tensors = []
    for name, t in g.tensors.items():
        if name in drop:
            continue
        fn = (edit or {}).get(name)
        produce = (lambda t=t, fn=fn: fn(np.array(t.raw()))) if fn else (lambda t=t: t.raw())
        tensors.append(GGUFWriteTensor(name, t.type, t.shape, produce))
    with open(dst, "wb") as f:
        write_gguf(f, metadata, tensors)
    return dst


def split(src: Path, out_dir: Path, parts: int) -> list[Path]:
    """gguf-split's layout: every part has split.* keys, the first also all metadata."""
    g = read_gguf(src)
    names = list(g.tensors)
    chunks = [names[i::parts] for i in range(parts)]
    paths = []
    for i, chunk in enumerate(chunks):
        meta = dict(g.metadata) if i == 0 else {}
        meta |= {"split.no": Value(ValueType.UINT16, i), "split.count": Value(ValueType.UINT16, parts),
                 "split.tensors.count": Value(ValueType.INT32, len(names))}
        path = out_dir / f"model-{i + 1:05d}-of-{parts:05d}.gguf"
        with open(path, "wb") as f:
            write_gguf(f, meta, [GGUFWriteTensor(n, g.tensors[n].type, g.tensors[n].shape,
                                               lambda t=g.tensors[n]: t.raw()) for n in chunk])
        paths.append(path)
    return paths


def ollama_layout(checkpoint: Path, lossless: Path, dst: Path) -> Path:
    """Ollama's older gpt-oss GGUF, built from the spec: architecture `gptoss`, MXFP4 as
    type 4 (scale byte first, HF nibble order), fused gate_up, its own tensor names."""
    ckpt = open_checkpoint(checkpoint)
    base = read_gguf(lossless).metadata
    meta = {}
    for key, value in base.items():
        if key == "gpt-oss.expert_feed_forward_length":
            continue
        if key == "general.architecture":
            value = Value(ValueType.STRING, "gptoss")
        meta[key.replace("gpt-oss.", "gptoss.")] = value
    tensors = []
    for hf in ckpt.model_tensors:
        (name,) = gguf_names(hf.name, "gptoss")
        target = Target(name.gguf, hf, name.part)
        if hf.format == "MXFP4":
            produce = lambda t=target: (mxfp4.hf_to_ollama(b, s) for b, s in iter_chunks(t, 1 << 26))  # noqa: E731
            tensors.append(GGUFWriteTensor(name.gguf, 4, target.ggml_shape, produce))
            continue
        qtype, _ = float_type(target, T.BF16)
        convert = (lambda c: c) if qtype == T.BF16 else (lambda c: floats.bf16_to_float32(c))
        tensors.append(GGUFWriteTensor(name.gguf, int(qtype), target.ggml_shape,
                                     lambda t=target, cv=convert: (cv(c) for c in iter_chunks(t, 1 << 26))))
    with open(dst, "wb") as f:
        write_gguf(f, meta, tensors)
    return dst
