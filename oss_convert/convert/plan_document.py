"""A plan shown before the work: per tensor group, the type chosen and why."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

from ..files.gguf import tensor_nbytes
from ..plan.lossless import PlannedTensor
from ..text import human_bytes, table

_LAYER = re.compile(r"^blk\.(\d+)\.")


def _ranges(layers: list[int]) -> str:
    """0,1,2,5,7,8 -> 0-2,5,7-8"""
    out: list[str] = []
    for n in sorted(layers):
        if out and n == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out)


def plan_groups(tensors: list[PlannedTensor]) -> list[dict]:
    groups: OrderedDict = OrderedDict()
    for p in tensors:
        m = _LAYER.match(p.name)
        pattern = _LAYER.sub("blk.N.", p.name)
        reason = re.sub(r"layer \d+", "layer N", p.reason)
        key = (pattern, p.type.name, reason)
        g = groups.setdefault(key, {"tensor": pattern, "type": p.type.name, "count": 0, "layers": [],
                                    "reason": reason, "bytes": 0})
        g["count"] += 1
        g["bytes"] += tensor_nbytes(p.type, p.shape)
        if m:
            g["layers"].append(int(m[1]))
    return list(groups.values())


def plan_document(title: str, tensors: list[PlannedTensor], warnings: Sequence[str] = ()) -> dict:
    types: dict[str, int] = {}
    for p in tensors:
        types[p.type.name] = types.get(p.type.name, 0) + 1
    return {"title": title, "tensors": len(tensors),
            "expected_tensor_bytes": sum(tensor_nbytes(p.type, p.shape) for p in tensors),
            "types": types, "groups": plan_groups(tensors),
            "per_tensor": [{"name": p.name, "type": p.type.name, "shape": list(p.shape), "source": p.source,
                            "reason": p.reason} for p in tensors],
            "warnings": list(warnings)}


def render_plan(doc: dict, groups: bool = True) -> str:
    """The plan's headline, its warnings, and (with `groups`) the table of tensor groups."""
    rows = [[g["tensor"], g["type"], str(g["count"]), _ranges(g["layers"]), g["reason"]] for g in doc["groups"]]
    types = ", ".join(f"{n} {t}" for t, n in sorted(doc["types"].items(), key=lambda kv: -kv[1]))
    head = (f"Plan: {doc['title']}: {doc['tensors']} tensors ({types}), "
            f"expected tensor data {human_bytes(doc['expected_tensor_bytes'])}")
    lines = [head] + [f"warning: {w}" for w in doc["warnings"]]
    if groups:
        lines += ["  " + r for r in table(rows, ["tensor", "type", "count", "layers", "why"])]
    return "\n".join(lines)


def render_cost(cost: dict) -> str:
    rows = [[t["name"], f"{t['from']}->{t['to']}", f"{t['rmse']:.3g}", f"{t['max_abs_error']:.3g}",
             f"{t['relative_error']:.3g}", f"{t['snr_db']:.1f}"] for t in cost["tensors"]]
    lines = ["What it cost (against the source values):"]
    lines += ["  " + r for r in table(rows, ["tensor", "type", "rmse", "max abs err", "rel err", "SNR dB"])]
    lines.append(f"  {cost['bits_per_weight']:.3f} bits per weight over {cost['params']:,} weights")
    return "\n".join(lines)
