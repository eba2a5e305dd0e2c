"""A checkpoint's storage at a glance, from its headers: the experts' types and the rest's,
bits per weight, and what that allows one to say about the FP4 bits (verify proves it)."""

from __future__ import annotations

from collections import Counter

from .checkpoint import Checkpoint


def types_by_bytes(tensors) -> dict[str, int]:
    """Storage formats by the bytes they hold, largest first."""
    held: Counter[str] = Counter()
    for t in tensors:
        held[t.format] += t.nbytes
    return dict(held.most_common())


def storage_summary(ckpt: Checkpoint) -> dict:
    experts = [t for t in ckpt.tensors if t.role.is_expert_weight]
    rest = [t for t in ckpt.tensors if not t.role.is_expert_weight]
    params = sum(t.n_params for t in ckpt.tensors)
    data = sum(t.nbytes for t in ckpt.tensors)
    expert_types = types_by_bytes(experts)
    if not experts:
        fp4 = "no expert tensors found"
    elif set(expert_types) == {"MXFP4"}:
        fp4 = "can be intact (experts MXFP4; verify proves it)"
    elif "MXFP4" in expert_types:
        fp4 = "partly requantized"
    else:
        fp4 = "lost (experts requantized)"
    return {"tensors": len(ckpt.tensors), "expert_types": expert_types, "other_types": types_by_bytes(rest),
            "bits_per_weight": 8 * data / params if params else None, "data_bytes": data,
            "experts_mxfp4": bool(experts) and set(expert_types) == {"MXFP4"}, "fp4_bits": fp4}
