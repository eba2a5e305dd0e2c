"""A repo of GGUF ports surveyed by their headers: one row per model file, the answer to
"which one do I download". Whether FP4 bits are really intact stays verify's proof; here a
port can only be ruled out (its experts are not MXFP4) or kept in the running."""

from __future__ import annotations

from collections import Counter

from ..checkpoint import Checkpoint
from ..text import human_bytes, table


def _types(tensors) -> dict[str, int]:
    """ggml types by bytes held, largest first."""
    held: Counter[str] = Counter()
    for t in tensors:
        held[t.format] += t.nbytes
    return dict(held.most_common())


def survey_row(name: str, ckpt: Checkpoint, file_bytes: int, header_bytes: int, parts: int) -> dict:
    experts = [t for t in ckpt.tensors if t.role.is_expert_weight]
    rest = [t for t in ckpt.tensors if not t.role.is_expert_weight]
    params = sum(t.n_params for t in ckpt.tensors)
    data = sum(t.nbytes for t in ckpt.tensors)
    expert_types = _types(experts)
    if not experts:
        fp4 = "no expert tensors found"
    elif set(expert_types) == {"MXFP4"}:
        fp4 = "can be intact (experts MXFP4; verify proves it)"
    elif "MXFP4" in expert_types:
        fp4 = "partly requantized"
    else:
        fp4 = "lost (experts requantized)"
    return {"file": name, "parts": parts, "bytes": file_bytes, "tensors": len(ckpt.tensors),
            "file_type": ckpt.metadata.get("general.file_type"), "expert_types": expert_types,
            "other_types": _types(rest), "bits_per_weight": 8 * data / params if params else None,
            "experts_mxfp4": bool(experts) and set(expert_types) == {"MXFP4"}, "fp4_bits": fp4,
            "header_bytes_read": header_bytes}


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
