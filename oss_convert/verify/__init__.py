"""`oss-convert verify`: prove, tensor by tensor, whether a GGUF port kept the source's FP4 bits."""

from __future__ import annotations

import sys
from collections import Counter

from tqdm import tqdm

from ..checkpoint import Checkpoint
from ..errors import OssConvertError
from ..text import table
from .metadata import metadata_checks
from .tensors import compare_pair, pair_tensors

STATUSES = ["bit-identical", "reference-requantized", "lossy", "missing", "extra", "shape-mismatch"]


def check_inputs(src: Checkpoint, port: Checkpoint) -> None:
    """What verify needs of its inputs, said before any tensor is read."""
    if src.kind != "safetensors":
        raise OssConvertError(f"{src.where}: is a GGUF; verify takes the source checkpoint first, then the GGUF port")
    if not src.has_mxfp4_experts():
        raise OssConvertError(f"{src.where}: has no MXFP4 expert tensors; not an original GPT-OSS checkpoint")
    if port.kind != "gguf":
        raise OssConvertError(f"{port.where}: not a GGUF file")
    if port.layout == "other":
        raise OssConvertError(f"{port.where}: architecture {port.architecture!r} is not a GPT-OSS GGUF")


def verify(src: Checkpoint, port: Checkpoint, show_progress: bool | None = None) -> dict:
    check_inputs(src, port)
    pairs, decided = pair_tensors(src, port)
    total = sum(t.nbytes for _, t in pairs)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    checks = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="verify", disable=not show_progress) as bar:
        for target, t in pairs:
            checks.append(compare_pair(target, t))
            bar.update(t.nbytes)
    checks += decided
    meta = metadata_checks(src, port)
    return {"source": src.where, "port": port.where, "layout": port.layout_description,
            "tensors": [c.to_dict() for c in checks], "metadata": meta,
            "summary": summarize(src, checks, meta)}


def summarize(src, checks, meta) -> dict:
    counts = Counter(c.status for c in checks)
    mxfp4_sources = {t.name for t in src.model_tensors if t.format == "MXFP4"}
    expert = [c for c in checks if c.source in mxfp4_sources]
    preserved = [c for c in expert if c.status == "bit-identical" and c.port_format == "MXFP4"]
    fp4_preserved = bool(expert) and len(preserved) == len(expert)
    metadata_ok = all(m["ok"] for m in meta)
    if fp4_preserved:
        verdict = f"FP4 preserved: {len(preserved)}/{len(expert)} expert tensors bit-identical"
    else:
        by_type = Counter(c.port_format for c in expert if c not in preserved and c.port_format)
        snrs = [c.details["snr_db"] for c in expert if "snr_db" in c.details and c.details["snr_db"] != float("inf")]
        kinds = ", ".join(f"{n} {t}" for t, n in by_type.most_common())
        verdict = (f"FP4 not preserved: {len(expert) - len(preserved)} of {len(expert)} expert tensors changed"
                   + (f" ({kinds})" if kinds else "")
                   + (f", mean SNR {sum(snrs) / len(snrs):.1f} dB" if snrs else ""))
    problems = counts["lossy"] + counts["missing"] + counts["shape-mismatch"]
    verdict += "; " + (f"{problems} tensor problem(s)" if problems else "all tensors accounted for") \
        + ("; metadata matches" if metadata_ok else f"; {sum(not m['ok'] for m in meta)} metadata mismatch(es)")
    return {"verdict": verdict, "fp4_preserved": fp4_preserved,
            "counts": {s: counts.get(s, 0) for s in STATUSES},
            "expert_tensors": len(expert), "expert_tensors_bit_identical": len(preserved),
            "metadata_ok": metadata_ok, "ok": problems == 0 and metadata_ok}


def exit_status(doc: dict, require_fp4: bool) -> int:
    s = doc["summary"]
    if not s["ok"] or (require_fp4 and not s["fp4_preserved"]):
        return 1
    return 0


def render(doc: dict) -> str:
    s = doc["summary"]
    lines = [s["verdict"], f"source {doc['source']}, port {doc['port']} ({doc['layout']} layout)", ""]
    counts = ", ".join(f"{n} {k}" for k, n in s["counts"].items() if n)
    lines.append(f"Tensors: {counts}")
    problems = [t for t in doc["tensors"] if t["status"] != "bit-identical"]
    if problems:
        rows = []
        for t in problems:
            detail = ""
            if "snr_db" in t:
                detail = f"SNR {t['snr_db']:.1f} dB, max err {t['max_abs_error']:.3g}, rel {t['relative_error']:.3g}"
            if len(t.get("per_expert", ())) > 1:
                worst = min(t["per_expert"], key=lambda e: e["snr_db"])
                detail += f"; worst expert {worst['expert']} ({worst['snr_db']:.1f} dB)"
            if t.get("first_differing_block"):
                fb = t["first_differing_block"]
                detail += (f"; {100 * t['fraction_blocks_differ']:.3g}% of blocks differ, first at expert "
                           f"{fb['expert']} row {fb['row']} block {fb['block']}")
            if "expected_shape" in t:
                detail = f"expected {t['expected_shape']}, found {t['found_shape']}"
            formats = f"{t['source_format'] or '-'}->{t['port_format'] or '-'}"
            rows.append([t["source"] or "-", t["port"] or "-", formats, t["status"], detail])
        lines += ["  " + r for r in table(rows, ["source", "port", "format", "status", "details"])]
    bad_meta = [m for m in doc["metadata"] if not m["ok"]]
    lines.append(f"Metadata: {len(doc['metadata']) - len(bad_meta)}/{len(doc['metadata'])} checks agree")
    for m in bad_meta:
        lines.append(f"  {m['key']}: expected {m['expected']}, found {m['found']}")
    return "\n".join(lines)
