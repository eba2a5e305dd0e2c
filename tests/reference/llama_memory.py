"""What libllama allocates when it loads a GGUF and creates a context: the buffer sizes it logs.

Run as a script (one model and context per process, so that libllama's global state and log
callback stay out of the test process); prints JSON: {"model": MiB, "kv": MiB, "output": MiB,
"compute": MiB, "lines": [...]}, summed over backends, as llama.cpp prints them (2 decimals).
"""

from __future__ import annotations

import ctypes
import json
import re
import sys

BUFFER = re.compile(r"(\S+)\s+(model|KV|output|compute) buffer size =\s*([0-9.]+) MiB")
KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}


def load(path: str, n_ctx: int, n_seq: int, kv_type: str, n_ubatch: int, n_batch: int, swa_full: bool,
         kv_unified: bool, flash_attn: bool, repack: bool = True) -> dict:
    import llama_cpp
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode(errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    mparams = llama_cpp.llama_model_default_params()
    mparams.use_extra_bufts = repack  # CPU_REPACK copies some weights out of the mapped file into anonymous memory
    model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        raise SystemExit(f"libllama could not load {path}")
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_batch
    cparams.n_ubatch = n_ubatch
    cparams.n_seq_max = n_seq
    cparams.type_k = cparams.type_v = KV_TYPES[kv_type]
    cparams.swa_full = swa_full
    cparams.kv_unified = kv_unified
    cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                               else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        raise SystemExit("libllama could not create the context:\n" + "".join(lines[-5:]))
    text = "".join(lines)
    out = {"model": 0.0, "kv": 0.0, "output": 0.0, "compute": 0.0}
    for _, kind, mib in BUFFER.findall(text):
        out[kind.lower()] += float(mib)
    out["lines"] = [line for line in text.splitlines() if "buffer size" in line or "cells" in line]
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return out


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(load(**spec)))
