"""A GPT-OSS checkpoint stored as safetensors (HF layout or OpenAI's original/ layout)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OssConvertError
from ..files.safetensors import StoredTensor, read_header
from .checkpoint import Checkpoint
from .config import GptOssConfig
from .names import MXFP4_SUFFIXES, classify, hf_storage_order, original_to_hf
from .shapes import check_shapes
from .tensor import Role, Tensor, row_slice
from .tokenizer import find_tokenizer_dir, read_vocab

INDEX_NAME = "model.safetensors.index.json"


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
    except (OSError, ValueError) as e:
        raise OssConvertError(f"{path}: not a usable GPT-OSS config ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise OssConvertError(f"{path}: not a usable GPT-OSS config (not a JSON object)")
    if layout == "original" or ("num_experts" in raw and "num_local_experts" not in raw):
        return GptOssConfig.from_original(raw, str(path))
    return GptOssConfig.from_hf(raw, str(path))


def open_safetensors(path: Path) -> Checkpoint:
    root, files, weight_map = _shard_files(path)
    return open_safetensors_files(path, root, files, root / "config.json", weight_map)


def open_safetensors_files(path, root, files: list, config_path: Path | None,
                           weight_map: dict[str, str] | None = None) -> Checkpoint:
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
    config = _read_config(config_path, layout) or infer_config(tensors, layout, root)
    model = tensors if layout == "hf" else _hf_view(tensors, config)
    check_shapes(model, config)

    def vocab():
        folder = find_tokenizer_dir(Path(root))
        return read_vocab(folder, config.vocab_size, _raw_config(folder / "config.json"))

    def tokenizer_json():
        path = find_tokenizer_dir(Path(root)) / "tokenizer.json"
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise OssConvertError(f"{path}: cannot read ({e})") from None

    return Checkpoint(path, "safetensors", layout, root, names, config, tensors, model, vocab, tokenizer_json)


def _raw_config(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _hf_view(tensors: list[Tensor], config: GptOssConfig) -> list[Tensor]:
    """OpenAI's original/ tensors under their HF names, the fused qkv split into q, k and v,
    in the order the HF shards store the same tensors (so both layouts convert alike)."""
    out = []
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    for t in tensors:
        names = original_to_hf(t.name)
        if len(names) == 3:
            if len(t.shape) not in (1, 2) or t.shape[0] != q + 2 * kv:
                raise OssConvertError(f"{t.where}: {t.name} has shape {list(t.shape)}, expected {q + 2 * kv} rows "
                                      "(q + k + v)")
            out += [row_slice(name, t, start, rows).renamed(name, *classify(name, "hf"))
                    for name, start, rows in zip(names, (0, q, q + kv), (q, kv, kv))]
        elif names:
            out.append(t.renamed(names[0], *classify(names[0], "hf")))
    return hf_storage_order(out)


def _detect_layout(path: Path, stored: dict[str, StoredTensor]) -> str:
    names = stored.keys()
    if any(n.startswith("model.layers.") or n == "model.embed_tokens.weight" for n in names):
        return "hf"
    if any(n.startswith("block.") or n == "embedding.weight" for n in names):
        return "original"
    raise OssConvertError(f"{path}: not a GPT-OSS checkpoint (no model.layers.* or block.* tensors)")


def _logical_tensors(stored: dict[str, StoredTensor], layout: str) -> list[Tensor]:
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
            tensors.append(_plain_tensor(name, t, layout))
    for base, t in pending.items():
        have, lack = (blocks_sfx, scales_sfx) if t.name.endswith(blocks_sfx) else (scales_sfx, blocks_sfx)
        raise OssConvertError(f"{t.path}: {base + have} has no matching {base + lack}")
    return tensors


def _plain_tensor(name: str, t: StoredTensor, layout: str) -> Tensor:
    role, layer = classify(name, layout)
    return Tensor(name, role, layer, t.dtype, t.shape, t.nbytes, str(t.path), t.read, lambda i: t.array()[i],
                  mapper=t.array)


def _mxfp4_tensor(base: str, blocks: StoredTensor, scales: StoredTensor, layout: str) -> Tensor:
    if blocks.dtype != "U8" or scales.dtype != "U8":
        raise OssConvertError(f"{blocks.path}: {base} MXFP4 parts must be U8, found {blocks.dtype}/{scales.dtype}")
    if len(blocks.shape) < 2 or blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape:
        raise OssConvertError(f"{blocks.path}: {base} blocks {list(blocks.shape)} and scales "
                              f"{list(scales.shape)} disagree (expected [..., G, 16] and [..., G])")
    role, layer = classify(base, layout)
    shape = blocks.shape[:-2] + (blocks.shape[-2] * 32,)
    return Tensor(base, role, layer, "MXFP4", shape, blocks.nbytes + scales.nbytes, str(blocks.path),
                  lambda start, stop: (blocks.read(start, stop), scales.read(start, stop)),
                  lambda i: (blocks.array()[i], scales.array()[i]))


def infer_config(tensors: list[Tensor], layout: str, root) -> GptOssConfig:
    """Hyperparameters read off the tensor shapes, for a checkpoint without config.json."""
    by_role: dict[Role, Tensor] = {}
    for t in tensors:
        by_role.setdefault(t.role, t)
    try:
        embed = by_role[Role.EMBEDDING]
        gate_up = by_role[Role.EXPERT_GATE_UP]
        sinks = by_role[Role.SINKS]
    except KeyError as e:
        raise OssConvertError(f"{root}: not a GPT-OSS checkpoint: no {e.args[0].value} tensor and no "
                              "config.json") from None
    if len(embed.shape) != 2 or len(gate_up.shape) != 3 or len(sinks.shape) != 1:
        raise OssConvertError(f"{root}: no config.json, and the tensor shapes (embedding {list(embed.shape)}, "
                              f"expert gate_up {list(gate_up.shape)}, sinks {list(sinks.shape)}) are not GPT-OSS's")
    layers = 1 + max(t.layer for t in tensors if t.layer is not None)
    heads = sinks.shape[0]
    head_dim = 64
    if layout == "original":
        qkv = next((t.shape[0] for t in tensors if t.name.endswith("attn.qkv.weight")), (heads + 16) * head_dim)
        kv_rows = (qkv - heads * head_dim) // 2
    else:
        kv_rows = next((t.shape[0] for t in tensors if t.name.endswith("k_proj.weight")), 8 * head_dim)
    if kv_rows < head_dim or kv_rows % head_dim:
        raise OssConvertError(f"{root}: no config.json, and the attention's {kv_rows} key rows are not whole "
                              f"heads of {head_dim}")
    return GptOssConfig(num_layers=layers, num_experts=gate_up.shape[0], experts_per_token=min(4, gate_up.shape[0]),
                        vocab_size=embed.shape[0], hidden_size=embed.shape[1],
                        intermediate_size=gate_up.shape[1] // 2, head_dim=head_dim,
                        num_heads=heads, num_kv_heads=kv_rows // head_dim)

