"""Compare two GGUF files tensor by tensor and key by key (test helper)."""

from __future__ import annotations

from oss_convert.files.gguf import read_gguf

# Naming keys llama.cpp derives from paths; the issue lets us follow our own rule.
NAMING_KEYS = {"general.name", "general.basename", "general.size_label", "general.finetune"}


def gguf_differences(ours, reference, ignore_keys=NAMING_KEYS) -> list[str]:
    a, b = read_gguf(ours), read_gguf(reference)
    diffs = []
    keys_a = [k for k in a.metadata if k not in ignore_keys]
    keys_b = [k for k in b.metadata if k not in ignore_keys]
    if keys_a != keys_b:
        diffs.append(f"metadata keys differ: ours-only {sorted(set(keys_a) - set(keys_b))}, "
                     f"reference-only {sorted(set(keys_b) - set(keys_a))}, same order {keys_a == keys_b}")
    for k in set(keys_a) & set(keys_b):
        if a.metadata[k] != b.metadata[k]:
            diffs.append(f"metadata {k}: {str(a.metadata[k])[:120]} != {str(b.metadata[k])[:120]}")
    if list(a.tensors) != list(b.tensors):
        diffs.append("tensor names or order differ")
    for name in set(a.tensors) & set(b.tensors):
        ta, tb = a.tensors[name], b.tensors[name]
        if (ta.type, ta.shape) != (tb.type, tb.shape):
            diffs.append(f"{name}: {ta.type_name}{list(ta.shape)} != {tb.type_name}{list(tb.shape)}")
        elif ta.raw().tobytes() != tb.raw().tobytes():
            diffs.append(f"{name}: bytes differ")
    return diffs
