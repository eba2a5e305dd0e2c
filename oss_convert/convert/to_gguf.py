"""safetensors checkpoint -> GGUF file: a plan first (types per tensor, and why), then the file,
streamed tensor by tensor into a temporary file and renamed when complete."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..checkpoint import Checkpoint
from ..checkpoint.config import DEFAULT_SWIGLU_ALPHA, DEFAULT_SWIGLU_LIMIT, GptOssConfig
from ..errors import OssConvertError
from ..files.atomic import atomic_path
from ..files.gguf import GGUFWriteTensor, Value, ValueType, write_gguf
from ..plan.lossless import LOSSLESS, OUTTYPES, PlannedTensor, plan_lossless
from ..plan.mixtures import plan_mixture
from .lossless import lossless_chunks
from .metadata import FILE_TYPES, model_metadata
from .plan_document import plan_document
from .requantize import RequantPlan, check_encoders, cost_document, requantized_chunks

QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION, which llama-quantize writes
LOSSLESS_GGUF_FORMATS = {"MXFP4", "BF16", "F16", "F32"}  # what the converter writes from the original


def require_original(ckpt: Checkpoint, if_gguf: str = "is already a GGUF; convert takes a safetensors "
                                                      "checkpoint (or a GGUF with --to safetensors)") -> Checkpoint:
    """The original GPT-OSS checkpoint (safetensors, MXFP4 experts); a GGUF is refused with `if_gguf`."""
    if ckpt.kind != "safetensors":
        raise OssConvertError(f"{ckpt.where}: {if_gguf}")
    if not ckpt.has_mxfp4_experts():
        raise OssConvertError(f"{ckpt.where}: has no MXFP4 expert tensors; not an original GPT-OSS checkpoint")
    return ckpt


def lossy_formats(ckpt: Checkpoint) -> list[str]:
    """The formats of a GGUF's weights that the converter never writes from the original."""
    return sorted({t.format for t in ckpt.model_tensors} - LOSSLESS_GGUF_FORMATS
                  | ({"experts not MXFP4"} if not ckpt.has_mxfp4_experts() else set()))


def require_convertible(ckpt: Checkpoint, qtype: str, allow_requantize: bool) -> None:
    """The original checkpoint, or a GGUF of it: lossless (llama.cpp's layout or Ollama's older
    one) for anything, lossy only to be requantized when the user says so, as llama-quantize asks."""
    if ckpt.kind != "gguf":
        require_original(ckpt)
        return
    ckpt.require_config()
    lossy = lossy_formats(ckpt)
    if not lossy:
        return
    what = f"{ckpt.where}: is a lossy port ({', '.join(lossy)})"
    if qtype == LOSSLESS:
        raise OssConvertError(f"{what}: the lossless file can only be made from the original weights or a "
                              "lossless GGUF of them")
    if not allow_requantize:
        raise OssConvertError(f"{what}; requantizing a requantization compounds the loss: convert the original "
                              "weights, or pass --allow-requantize (as llama-quantize asks)")


@dataclass
class Conversion:
    """A planned conversion: `document` says what will be written and why, `run` writes it."""

    ckpt: Checkpoint
    title: str
    tensors: list[PlannedTensor]
    metadata: dict[str, Value]
    produce: Callable[[PlannedTensor], Iterator]
    requant: RequantPlan | None = None

    @property
    def document(self) -> dict:
        return plan_document(self.title, self.tensors, llama_cpp_caveats(self.ckpt.require_config()))

    def run(self, out: Path, *, force: bool = False, show_progress: bool | None = None) -> dict:
        size = write_tensors(out, self.metadata, self.tensors, self.produce, force=force,
                             show_progress=show_progress)
        result = {"output": str(out), "bytes": size, "tensors": len(self.tensors)}
        if self.requant is None:
            return result | {"mxfp4_tensors": sum(p.type.name == "MXFP4" for p in self.tensors)}
        return result | {"cost": cost_document(self.requant)}


def plan_conversion(ckpt: Checkpoint, qtype: str = LOSSLESS, *, outtype: str = "bf16",
                    keep_mxfp4_experts: bool = False, threads: int | None = None,
                    allow_requantize: bool = False) -> Conversion:
    """Everything decided and checked before a byte is written: types, metadata, tokenizer.

    From a GGUF of llama.cpp's layout, a mixture keeps the file's own metadata, as llama-quantize
    does; the lossless file, and anything from Ollama's layout, takes the converter's."""
    require_convertible(ckpt, qtype, allow_requantize)
    if keep_mxfp4_experts and not ckpt.has_mxfp4_experts():
        raise OssConvertError(f"{ckpt.where}: --keep-mxfp4-experts: the source's experts are not MXFP4")
    base = plan_lossless(ckpt, outtype if qtype == LOSSLESS else "bf16")
    if qtype != LOSSLESS and ckpt.kind == "gguf" and ckpt.layout == "gpt-oss":
        metadata = source_metadata(ckpt)
    else:
        metadata = gguf_metadata(ckpt, base, lossless_file_type(outtype if qtype == LOSSLESS else "bf16"))
    if qtype == LOSSLESS:
        return Conversion(ckpt, f"lossless MXFP4 ({outtype} elsewhere)", base, metadata, lossless_chunks)
    tensors = plan_mixture(base, qtype, ckpt.require_config(), keep_mxfp4_experts)
    check_encoders(tensors)
    requant = RequantPlan(qtype, tensors)
    threads = threads or os.cpu_count() or 1
    title = qtype.upper() + (" with MXFP4 experts kept" if keep_mxfp4_experts else "")
    return Conversion(ckpt, title, tensors, requantized_metadata(metadata, requant.file_type),
                      lambda p: requantized_chunks(requant, p, threads), requant)


def llama_cpp_caveats(cfg: GptOssConfig) -> list[str]:
    """What the GGUF cannot carry of this config, so llama.cpp will run differently."""
    if (cfg.swiglu_limit, cfg.swiglu_alpha) == (DEFAULT_SWIGLU_LIMIT, DEFAULT_SWIGLU_ALPHA):
        return []
    return [f"the config's SwiGLU limit {cfg.swiglu_limit:g} and alpha {cfg.swiglu_alpha:g} have no GGUF key: "
            f"llama.cpp runs every gpt-oss GGUF with {DEFAULT_SWIGLU_LIMIT:g} and {DEFAULT_SWIGLU_ALPHA:g}, so its "
            "outputs will differ from transformers'"]


def gguf_metadata(ckpt: Checkpoint, plan: list[PlannedTensor], file_type: int) -> dict[str, Value]:
    shapes = [(p.name, tuple(reversed(p.shape))) for p in plan]
    return model_metadata(ckpt.require_config(), ckpt.vocab(), name=ckpt.model_name(), file_type=file_type,
                          tensors=shapes)


def source_metadata(ckpt: Checkpoint) -> dict[str, Value]:
    """A GGUF's own key/values, typed, less a split file's keys."""
    return {k: v for k, v in ckpt.typed_metadata.items() if not k.startswith("split.")}


def lossless_file_type(outtype: str) -> int:
    # llama.cpp labels any float output of an MXFP4 checkpoint MOSTLY_MXFP4_MOE.
    return FILE_TYPES["Q8_0"] if outtype == "q8_0" else FILE_TYPES["MXFP4_MOE"]


def requantized_metadata(converter_metadata: dict[str, Value], file_type: int) -> dict[str, Value]:
    """The converter's metadata as llama-quantize rewrites it: every key copied, then
    general.quantization_version and general.file_type removed and appended anew."""
    meta = dict(converter_metadata)
    version = meta.pop("general.quantization_version", Value(ValueType.UINT32, QUANTIZATION_VERSION))
    meta.pop("general.file_type", None)
    meta["general.quantization_version"] = version
    meta["general.file_type"] = Value(ValueType.UINT32, file_type)
    return meta


def write_tensors(out: Path, metadata: dict[str, Value], plan: list[PlannedTensor],
                  produce: Callable[[PlannedTensor], Iterator], *, force: bool,
                  show_progress: bool | None = None) -> int:
    """Write the planned tensors to `out` atomically; returns the file size."""
    tensors = [GGUFWriteTensor(p.name, int(p.type), p.shape, functools.partial(produce, p)) for p in plan]
    total = sum(t.nbytes for t in tensors)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    with atomic_path(out, force) as tmp, open(tmp, "wb") as f, \
            tqdm(total=total, unit="B", unit_scale=True, desc=out.name, disable=not show_progress) as bar:
        write_gguf(f, metadata, tensors, on_bytes=bar.update)
        size = f.tell()
    return size


def convert_lossless(ckpt: Checkpoint, out: Path, *, outtype: str = "bf16", force: bool = False,
                     show_progress: bool | None = None) -> dict:
    return plan_conversion(ckpt, outtype=outtype).run(out, force=force, show_progress=show_progress)


__all__ = ["Conversion", "LOSSLESS", "OUTTYPES", "convert_lossless", "plan_conversion", "require_original"]
