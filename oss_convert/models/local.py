"""The GPT-OSS models the apps keep on this machine, one row each, from their headers."""

from __future__ import annotations

import os

from ..checkpoint import open_checkpoint
from ..checkpoint.summary import storage_summary
from ..errors import OssConvertError
from ..memory.context import ContextOptions
from ..memory.estimate import memory_estimate
from ..stores import APPS, StoredModel
from ..text import human_binary, human_bytes, table


def _file_bytes(files) -> int:
    total = 0
    for f in files:
        try:
            total += os.stat(str(f)).st_size
        except OSError:
            pass
    return total


def model_row(entry: StoredModel, options: ContextOptions, gpu_memory: int | None) -> dict | None:
    """A row for a GPT-OSS model; None for another model (counted, not listed)."""
    row: dict = {"app": APPS[entry.app], "name": entry.name, "path": str(entry.path) if entry.path else None}
    if entry.path is None:
        return row | {"error": entry.problem}
    try:
        ckpt = open_checkpoint(entry.path)
    except OssConvertError as e:
        if "not a GPT-OSS" in str(e):
            return None
        return row | {"error": str(e)}
    if ckpt.config is None:
        return None
    summary = storage_summary(ckpt)
    row |= {"bytes": _file_bytes(ckpt.files), "kind": ckpt.kind, "layout": ckpt.layout_description, **summary,
            "verify": f"oss-convert verify SOURCE {entry.name}"}
    try:
        plan = memory_estimate(ckpt, options, gpu_memory=gpu_memory)
        at = plan["contexts"][0]
        row["memory"] = {"ctx": at["ctx"], "llama_cpp_gpu_bytes": at["llama_cpp"]["gpu_bytes"],
                         "llama_cpp_total_bytes": at["llama_cpp"]["total_bytes"],
                         "runtime_bytes": at["runtime"]["total_bytes"]}
        if gpu_memory is not None:
            row["memory"] |= {"fits_llama_cpp": at["fits_llama_cpp"],
                              "largest_context_llama_cpp": plan["largest_context"]["llama_cpp"]}
    except OssConvertError as e:
        row["memory"] = {"unavailable": str(e)}
    return row


def local_document(entries: list[StoredModel], options: ContextOptions, gpu_memory: int | None = None,
                   progress=None) -> dict:
    rows, skipped = [], 0
    for entry in (progress(entries) if progress else entries):
        row = model_row(entry, options, gpu_memory)
        if row is None:
            skipped += 1
        else:
            rows.append(row)
    rows.sort(key=lambda r: (r["app"], r["name"]))
    return {"models": rows, "other_models_skipped": skipped, "ctx": options.ctx, "kv_type": options.kv_type,
            "gpu_memory_bytes": gpu_memory,
            "note": "headers only: the experts' types say whether FP4 can be intact; verify SOURCE NAME proves it"}


def _types(types: dict[str, int]) -> str:
    return ", ".join(types) or "-"


def experts_cell(row: dict) -> str:
    if row["experts_mxfp4"]:
        return "MXFP4 kept"
    return "requantized: " + _types(row["expert_types"]) if row["expert_types"] else "none found"


def render_local(doc: dict) -> str:
    if not doc["models"]:
        lines = ["No GPT-OSS model in Ollama's, LM Studio's, llama.cpp's or the Hugging Face cache's folders"]
    else:
        header = ["app", "name", "size", "layout", "experts", "other tensors", "bits/weight",
                  f"llama.cpp at {doc['ctx']}"]
        cells = []
        for r in doc["models"]:
            if "error" in r:
                cells.append([r["app"], r["name"], "-", "-", "unreadable: " + r["error"][:60], "", "", ""])
                continue
            memory = r["memory"]
            mem = human_binary(memory["llama_cpp_gpu_bytes"]) if "llama_cpp_gpu_bytes" in memory else "?"
            if "fits_llama_cpp" in memory:
                mem += " fits" if memory["fits_llama_cpp"] else " does not fit"
            cells.append([r["app"], r["name"], human_bytes(r["bytes"]), r["layout"], experts_cell(r),
                          _types(r["other_types"]), f"{r['bits_per_weight']:.2f}" if r["bits_per_weight"] else "?",
                          mem])
        lines = [f"{len(doc['models'])} GPT-OSS model(s) on this machine, from their headers", ""]
        lines += table(cells, header)
    if doc["other_models_skipped"]:
        lines += ["", f"{doc['other_models_skipped']} other model(s) skipped (not GPT-OSS)"]
    if doc["models"]:
        lines += ["", "Memory: llama.cpp's GPU buffers with every layer offloaded (KV " + doc["kv_type"] + ").",
                  "Exact proof that FP4 bits are intact: oss-convert verify SOURCE NAME (NAME as listed)"]
    return "\n".join(lines)


