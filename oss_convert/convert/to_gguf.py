"""safetensors checkpoint -> GGUF file, streamed tensor by tensor into a temporary file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..checkpoint import SafetensorsCheckpoint, open_checkpoint
from ..errors import OssConvertError
from ..files.atomic import atomic_path
from ..files.gguf import TensorToWrite, Value, ValueType, write_gguf
from .lossless import PlannedTensor, plan_lossless
from .metadata import FILE_TYPES, model_metadata
from .requantize import RequantPlan, cost_report, plan_requantized
from .vocab import find_tokenizer_dir, read_vocab


def open_source(src, if_gguf: str = "is already a GGUF; convert takes a safetensors checkpoint "
                                    "(or a GGUF with --to safetensors)") -> SafetensorsCheckpoint:
    """The original GPT-OSS checkpoint at src; a GGUF there is refused with `if_gguf`."""
    ckpt = open_checkpoint(src)
    if not isinstance(ckpt, SafetensorsCheckpoint):
        raise OssConvertError(f"{src}: {if_gguf}")
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
    return convert_plan_lossless(ckpt, plan_lossless(ckpt, outtype), out, outtype=outtype, force=force,
                                 show_progress=show_progress)


def convert_plan_lossless(ckpt: SafetensorsCheckpoint, plan: list[PlannedTensor], out: Path, *, outtype: str,
                          force: bool = False, show_progress: bool | None = None) -> dict:
    metadata = gguf_metadata(ckpt, plan, lossless_file_type(outtype))
    size = write_plan(out, metadata, plan, force=force, show_progress=show_progress)
    return {"output": str(out), "bytes": size, "tensors": len(plan),
            "mxfp4_tensors": sum(p.type.name == "MXFP4" for p in plan)}


def requantized_metadata(ckpt: SafetensorsCheckpoint, plan: RequantPlan) -> dict[str, Value]:
    """The converter's metadata as llama-quantize rewrites it: every key copied, then
    general.quantization_version and general.file_type removed and appended anew."""
    meta = gguf_metadata(ckpt, plan_lossless(ckpt), lossless_file_type("bf16"))
    version = meta.pop("general.quantization_version")
    meta.pop("general.file_type")
    meta["general.quantization_version"] = version
    meta["general.file_type"] = Value(ValueType.UINT32, plan.file_type)
    return meta


def prepare_requantized(src, mixture: str, keep_mxfp4_experts: bool = False, threads: int | None = None):
    ckpt = open_source(src)
    plan = plan_requantized(ckpt, mixture, keep_mxfp4_experts, threads)
    return ckpt, plan


def convert_requantized(ckpt: SafetensorsCheckpoint, plan: RequantPlan, out: Path, *, force: bool = False,
                        show_progress: bool | None = None) -> dict:
    size = write_plan(out, requantized_metadata(ckpt, plan), plan.tensors, force=force,
                      show_progress=show_progress)
    return {"output": str(out), "bytes": size, "tensors": len(plan.tensors), "cost": cost_report(plan)}
