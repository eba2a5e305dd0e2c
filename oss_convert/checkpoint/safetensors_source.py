"""A GPT-OSS checkpoint stored as safetensors (HF layout or OpenAI's original/ layout)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import OssConvertError
from ..files.safetensors import StoredTensor, read_header
from .config import GptOssConfig
from .names import MXFP4_SUFFIXES, classify, original_to_hf
from .tensors import LogicalTensor, Role

INDEX_NAME = "model.safetensors.index.json"


@dataclass
class HFTensor:
    """A tensor under its Hugging Face name, read from whichever layout holds it.

    `parts` are the stored tensors ("data", or "blocks" and "scales" for MXFP4); for a
    q/k/v slice of OpenAI's fused qkv, `row_offset` and the shape select its rows.
    """

    name: str
    format: str  # "MXFP4" or a safetensors dtype
    shape: tuple[int, ...]  # logical shape
    parts: dict[str, StoredTensor]
    row_offset: int = 0

    def read(self, start: int = 0, stop: int | None = None):
        """Slices [start, stop) of the first axis: an array, or (blocks, scales) for MXFP4."""
        stop = self.shape[0] if stop is None else stop
        if self.format == "MXFP4":
            return self.parts["blocks"].read(start, stop), self.parts["scales"].read(start, stop)
        return self.parts["data"].read(self.row_offset + start, self.row_offset + stop)

    def mapped(self):
        """What read() returns, as read-only memory-mapped views: nothing is read until used."""
        if self.format == "MXFP4":
            return self.parts["blocks"].array(), self.parts["scales"].array()
        return self.parts["data"].array()[self.row_offset:self.row_offset + self.shape[0]]


class SafetensorsCheckpoint:
    kind = "safetensors"

    def __init__(self, root: Path, files: list[Path], layout: str, tensors: list[LogicalTensor],
                 config: GptOssConfig | None, config_path: Path | None):
        self.root = root  # folder holding config and tokenizer files
        self.files = files
        self.layout = layout  # "hf" or "original"
        self.tensors = tensors
        self.config = config
        self.config_path = config_path

    def hf_tensors(self) -> list[HFTensor]:
        """Every tensor under its HF name, fused qkv split.

        HF checkpoints keep their file order; OpenAI's layout is put in the order the HF
        shards store the same tensors (by name, an MXFP4 pair at its `_scales` part), so
        both layouts convert to the same file.
        """
        out = []
        for t in self.tensors:
            names = [t.name] if self.layout == "hf" else original_to_hf(t.name)
            if len(names) == 3:
                out.extend(self._split_qkv(t, names))
            elif names:
                out.append(HFTensor(names[0], t.format, t.shape, t.parts))
        if self.layout == "original":
            out.sort(key=lambda h: h.name + "_scales" if h.format == "MXFP4" else h.name)
        return out

    def _split_qkv(self, t: LogicalTensor, names: list[str]) -> Iterator[HFTensor]:
        cfg = self.config
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        if t.shape[0] != q + 2 * kv:
            raise OssConvertError(f"{t.name}: has {t.shape[0]} rows, expected q+k+v = {q + 2 * kv}")
        for name, start, rows in zip(names, (0, q, q + kv), (q, kv, kv)):
            yield HFTensor(name, t.format, (rows,) + t.shape[1:], t.parts, row_offset=start)


def _shard_files(path: Path) -> tuple[Path, list[Path], dict[str, str] | None]:
    """The folder, shard files and (if any) index weight map of a checkpoint path."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise OssConvertError(f"{path}: not a .safetensors file, .gguf file or checkpoint folder")
        return path.parent, [path], None
    if not path.is_dir():
        raise OssConvertError(f"{path}: no such file or directory")
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise OssConvertError(f"{index}: not a valid safetensors index (no weight_map object)") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise OssConvertError(f"{index}: names shard(s) that do not exist: {', '.join(missing)}")
        return path, [path / s for s in shards], weight_map
    files = sorted(path.glob("*.safetensors"))
    if not files:
        hint = " (its original/ folder holds OpenAI's layout)" if (path / "original").is_dir() else ""
        raise OssConvertError(f"{path}: not a GPT-OSS checkpoint (no .safetensors files){hint}")
    return path, files, None


def _read_config(path: Path | None, layout: str) -> GptOssConfig | None:
    if path is None or not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        if layout == "original" or ("num_experts" in raw and "num_local_experts" not in raw):
            return GptOssConfig.from_original(raw)
        return GptOssConfig.from_hf(raw)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OssConvertError(f"{path}: not a usable GPT-OSS config ({type(e).__name__}: {e})") from None


def open_safetensors(path: Path) -> SafetensorsCheckpoint:
    root, files, weight_map = _shard_files(path)
    return open_safetensors_files(root, files, root / "config.json", weight_map)


def open_safetensors_files(root, files: list, config_path: Path | None,
                           weight_map: dict[str, str] | None = None) -> SafetensorsCheckpoint:
    """A checkpoint from its shard files (local paths or byte sources), index and config.json."""
    stored: dict[str, StoredTensor] = {}
    names = []
    for f in files:
        header = read_header(f)
        names.append(header.path)
        for name, t in header.tensors.items():
            if name in stored:
                raise OssConvertError(f"{header.path}: tensor {name!r} also appears in {stored[name].path}")
            stored[name] = t
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(stored))
        if absent:
            raise OssConvertError(f"{root / INDEX_NAME}: lists {len(absent)} tensor(s) that no shard holds, "
                                  f"first {absent[0]!r}")
    layout = _detect_layout(root, stored)
    tensors = _logical_tensors(stored, layout)
    config = _read_config(config_path, layout) or infer_config(tensors, layout)
    return SafetensorsCheckpoint(root, names, layout, tensors, config,
                                 config_path if config_path is not None and config_path.is_file() else None)


def _detect_layout(path: Path, stored: dict[str, StoredTensor]) -> str:
    names = stored.keys()
    if any(n.startswith("model.layers.") or n == "model.embed_tokens.weight" for n in names):
        return "hf"
    if any(n.startswith("block.") or n == "embedding.weight" for n in names):
        return "original"
    raise OssConvertError(f"{path}: not a GPT-OSS checkpoint (no model.layers.* or block.* tensors)")


def _logical_tensors(stored: dict[str, StoredTensor], layout: str) -> list[LogicalTensor]:
    """Logical tensors in file order; an MXFP4 pair takes the place of its later part."""
    blocks_sfx, scales_sfx = MXFP4_SUFFIXES[layout]
    tensors, pending = [], {}
    for name, t in stored.items():
        if name.endswith(blocks_sfx) or name.endswith(scales_sfx):
            base = name[: -len(blocks_sfx)] if name.endswith(blocks_sfx) else name[: -len(scales_sfx)]
            if base not in pending:
                pending[base] = t
                continue
            pending.pop(base)
            tensors.append(_mxfp4_tensor(base, stored[base + blocks_sfx], stored[base + scales_sfx], layout))
        else:
            role, layer = classify(name, layout)
            tensors.append(LogicalTensor(name, role, layer, t.dtype, t.shape, t.nbytes, {"data": t}))
    for base, t in pending.items():
        have, lack = (blocks_sfx, scales_sfx) if t.name.endswith(blocks_sfx) else (scales_sfx, blocks_sfx)
        raise OssConvertError(f"{t.path}: {base + have} has no matching {base + lack}")
    return tensors


def _mxfp4_tensor(base: str, blocks: StoredTensor, scales: StoredTensor, layout: str) -> LogicalTensor:
    if blocks.dtype != "U8" or scales.dtype != "U8":
        raise OssConvertError(f"{blocks.path}: {base} MXFP4 parts must be U8, found {blocks.dtype}/{scales.dtype}")
    if len(blocks.shape) < 2 or blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape:
        raise OssConvertError(f"{blocks.path}: {base} blocks {list(blocks.shape)} and scales "
                              f"{list(scales.shape)} disagree (expected [..., G, 16] and [..., G])")
    role, layer = classify(base, layout)
    shape = blocks.shape[:-2] + (blocks.shape[-2] * 32,)
    return LogicalTensor(base, role, layer, "MXFP4", shape, blocks.nbytes + scales.nbytes,
                         {"blocks": blocks, "scales": scales})


def infer_config(tensors: list[LogicalTensor], layout: str) -> GptOssConfig:
    """Hyperparameters read off the tensor shapes, for a checkpoint without config.json."""
    by_role = {}
    for t in tensors:
        by_role.setdefault(t.role, t)
    try:
        embed = by_role[Role.EMBEDDING]
        gate_up = by_role[Role.EXPERT_GATE_UP]
        sinks = by_role[Role.SINKS]
    except KeyError as e:
        raise OssConvertError(f"not a GPT-OSS checkpoint: no {e.args[0].value} tensor and no config.json") from None
    layers = 1 + max(t.layer for t in tensors if t.layer is not None)
    heads = sinks.shape[0]
    k_rows = next((t.shape[0] for t in tensors if t.name.endswith(("k_proj.weight",))), None)
    head_dim = 64
    if layout == "original":
        qkv = next(t for t in tensors if t.name.endswith("attn.qkv.weight"))
        kv_heads = (qkv.shape[0] - heads * head_dim) // (2 * head_dim)
    else:
        kv_heads = (k_rows or 8 * head_dim) // head_dim
    return GptOssConfig(num_layers=layers, num_experts=gate_up.shape[0], experts_per_token=4,
                        vocab_size=embed.shape[0], hidden_size=embed.shape[1],
                        intermediate_size=gate_up.shape[1] // 2, head_dim=head_dim,
                        num_heads=heads, num_kv_heads=kv_heads)

