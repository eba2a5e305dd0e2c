"""safetensors checkpoint -> GGUF file, streamed tensor by tensor into a temporary file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..checkpoint import SafetensorsCheckpoint, open_checkpoint
from ..errors import OssConvertError
from ..files.atomic import atomic_path
from ..files.gguf import TensorToWrite, Value, write_gguf
from .lossless import PlannedTensor, plan_lossless
from .metadata import FILE_TYPES, model_metadata
from .vocab import find_tokenizer_dir, read_vocab


def open_source(src) -> SafetensorsCheckpoint:
    ckpt = open_checkpoint(src)
    if not isinstance(ckpt, SafetensorsCheckpoint):
        raise OssConvertError(f"{src}: is already a GGUF; convert takes a safetensors checkpoint "
                              "(or a GGUF with --to safetensors)")
    if not any(t.format == "MXFP4" for t in ckpt.tensors):
        raise OssConvertError(f"{src}: has no MXFP4 expert tensors; not an original GPT-OSS checkpoint")
    return ckpt


def model_name(ckpt: SafetensorsCheckpoint) -> str:
    """Our naming rule: the checkpoint folder's name (the repo's, for an original/ folder)."""
    root = ckpt.root.parent if ckpt.layout == "original" and ckpt.root.name == "original" else ckpt.root
    return root.resolve().name


def gguf_metadata(ckpt: SafetensorsCheckpoint, plan: list[PlannedTensor], file_type: int) -> dict[str, Value]:
    tok_dir = find_tokenizer_dir(ckpt.root)
    cfg_path = tok_dir / "config.json"
    hf_config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    vocab = read_vocab(tok_dir, ckpt.config.vocab_size, hf_config)
    shapes = [(p.name, tuple(reversed(p.shape))) for p in plan]
    return model_metadata(ckpt.config, vocab, name=model_name(ckpt), file_type=file_type, tensors=shapes)


def lossless_file_type(outtype: str) -> int:
    # llama.cpp labels any float output of an MXFP4 checkpoint MOSTLY_MXFP4_MOE.
    return FILE_TYPES["Q8_0"] if outtype == "q8_0" else FILE_TYPES["MXFP4_MOE"]


def write_plan(out: Path, metadata: dict[str, Value], plan: list[PlannedTensor], *, force: bool,
               show_progress: bool | None = None) -> int:
    """Write the planned tensors to `out` atomically; returns the file size."""
    tensors = [TensorToWrite(p.name, int(p.type), p.shape, p.produce) for p in plan]
    total = sum(t.nbytes for t in tensors)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    with atomic_path(out, force) as tmp, open(tmp, "wb") as f, \
            tqdm(total=total, unit="B", unit_scale=True, desc=out.name, disable=not show_progress) as bar:
        write_gguf(f, metadata, tensors, on_bytes=bar.update)
        size = f.tell()
    return size


def convert_lossless(src, out: Path, *, outtype: str = "bf16", force: bool = False,
                     show_progress: bool | None = None) -> dict:
    ckpt = open_source(src)
    plan = plan_lossless(ckpt, outtype)
    metadata = gguf_metadata(ckpt, plan, lossless_file_type(outtype))
    size = write_plan(out, metadata, plan, force=force, show_progress=show_progress)
    return {"output": str(out), "bytes": size, "tensors": len(plan),
            "mxfp4_tensors": sum(p.type.name == "MXFP4" for p in plan)}
