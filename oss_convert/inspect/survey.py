"""A repo of GGUF ports surveyed by their headers: one row per model file, the answer to
"which one do I download". Whether FP4 bits are really intact stays verify's proof; here a
port can only be ruled out (its experts are not MXFP4) or kept in the running."""

from __future__ import annotations

from ..checkpoint import Checkpoint
from ..checkpoint.summary import storage_summary
from ..text import human_bytes, table


def survey_row(name: str, ckpt: Checkpoint, file_bytes: int, header_bytes: int, parts: int) -> dict:
    summary = storage_summary(ckpt)
    summary.pop("data_bytes")
    return {"file": name, "parts": parts, "bytes": file_bytes, **summary,
            "file_type": ckpt.metadata.get("general.file_type"), "header_bytes_read": header_bytes}


def survey_document(repo: str, rows: list[dict]) -> dict:
    return {"repo": repo, "models": rows, "bytes_transferred": sum(r["header_bytes_read"] for r in rows),
            "note": "headers only; verify SRC PORT proves, tensor by tensor, whether the FP4 bits are intact"}


def render_survey(doc: dict) -> str:
    rows = []
    for r in doc["models"]:
        rows.append([r["file"] + (f" ({r['parts']} parts)" if r["parts"] > 1 else ""), human_bytes(r["bytes"]),
                     _names(r["expert_types"]), _names(r["other_types"]),
                     f"{r['bits_per_weight']:.2f}" if r["bits_per_weight"] else "?", r["fp4_bits"]])
    lines = [f"{doc['repo']}: {len(doc['models'])} GGUF models, surveyed from their headers "
             f"({human_bytes(doc['bytes_transferred'])} transferred)", ""]
    lines += table(rows, ["file", "size", "experts", "other tensors (by bytes)", "bits/weight", "FP4 bits"])
    lines += ["", "Exact proof, tensor by tensor: oss-convert verify SOURCE " + doc["repo"] + ":FILE.gguf"]
    return "\n".join(lines)


def _names(types: dict[str, int]) -> str:
    return ", ".join(types) or "-"
