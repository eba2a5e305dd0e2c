"""The human-readable form of an inspect report."""

from __future__ import annotations

from collections import defaultdict

from ..text import human_binary, human_bytes, human_count, shape_text, table


def render_inspect(doc: dict, show_tensors: bool = False) -> str:
    src, s = doc["source"], doc["summary"]
    lines = [f"{src['path']}: {src['kind']}, {src['layout']} layout, {len(src['files'])} file(s), "
             f"{s['tensors']} tensors, {human_bytes(s['bytes'])}", ""]
    tensors = doc["tensors"]
    if show_tensors:
        rows = [[t["name"], t["role"], t["format"], shape_text(t["shape"]), human_bytes(t["nbytes"])] for t in tensors]
        lines += table(rows, ["tensor", "role", "format", "shape", "bytes"])
    else:
        lines += _per_layer(tensors)
    lines += ["", "Formats"]
    total_params = s["total_params"] or 1
    rows = [[fmt, str(v["tensors"]), human_bytes(v["bytes"]), human_count(v["params"]),
             f"{100 * v['params'] / total_params:.1f}%"] for fmt, v in s["formats"].items()]
    lines += ["  " + r for r in table(rows, ["format", "tensors", "bytes", "params", "of params"])]
    lines += ["", f"Parameters: {human_count(s['total_params'])} total, "
                  f"{human_count(s['active_params']) if s['active_params'] else '?'} active per token "
                  f"({100 * s['mxfp4_param_share']:.1f}% stored as MXFP4)"]
    if s.get("hyperparameters"):
        h = s["hyperparameters"]
        lines.append(f"Architecture: {h['num_layers']} layers, {h['num_experts']} experts "
                     f"({h['experts_per_token']} per token), hidden {h['hidden_size']}, expert FFN "
                     f"{h['intermediate_size']}, {h['num_heads']} heads / {h['num_kv_heads']} KV heads "
                     f"x {h['head_dim']}, vocab {h['vocab_size']}, context {h['context_length']}, "
                     f"sliding window {h['sliding_window']}, rope theta {h['rope_theta']:g} "
                     f"(yarn x{h['rope_scaling_factor']:g})")
    k = s["kquant"]
    lines.append(f"K-quants (ne0 % 256): {k['compatible']} weight matrices fit "
                 f"({', '.join(k['compatible_tensors']) or 'none'}); {k['falls_back']} fall back "
                 + (f"(row lengths {', '.join(k['fallback_row_lengths'])}: Q4_K->Q5_0, Q6_K->Q8_0)"
                    if k["falls_back"] else ""))
    est = s.get("estimated_sizes") or {}
    if "mxfp4_gguf_tensor_bytes" in est:
        types = ", ".join(f"{n} {t}" for t, n in sorted(est["q4_k_m_tensor_types"].items(), key=lambda kv: -kv[1]))
        lines.append(f"GGUF sizes (tensor data): lossless MXFP4 {human_bytes(est['mxfp4_gguf_tensor_bytes'])}, "
                     f"Q4_K_M {human_bytes(est['q4_k_m_gguf_tensor_bytes'])} ({types})")
    lines.append(f"GPU memory for the weights: {human_bytes(s['gpu_memory_bytes'])} (as stored, MXFP4 packed)")
    if "gguf" in s:
        g = s["gguf"]
        lines.append(f"GGUF: architecture {g['architecture']!r} ({src['layout']}), file_type {g['file_type']}, "
                     f"tokenizer {g['tokenizer_model']}/{g['tokenizer_pre']} with {g['tokens']} tokens, "
                     f"chat template {'present' if g['chat_template'] else 'absent'}; "
                     f"{g['expert_tensors_mxfp4']}/{g['expert_tensors']} expert tensors MXFP4")
    if "memory" in s:
        lines += _memory_lines(s["memory"])
    return "\n".join(lines)


def _per_layer(tensors: list[dict]) -> list[str]:
    globals_ = [t for t in tensors if t["layer"] is None]
    rows = [[t["name"], t["role"], t["format"], shape_text(t["shape"]), human_bytes(t["nbytes"])] for t in globals_]
    out = table(rows, ["tensor", "role", "format", "shape", "bytes"]) if rows else []
    layers = defaultdict(list)
    for t in tensors:
        if t["layer"] is not None:
            layers[t["layer"]].append(t)
    formats = sorted({t["format"] for ts in layers.values() for t in ts})
    rows = []
    for layer in sorted(layers):
        ts = layers[layer]
        counts: defaultdict[str, int] = defaultdict(int)
        for t in ts:
            counts[t["format"]] += 1
        rows.append([str(layer), str(len(ts))] + [str(counts.get(f, "")) for f in formats]
                    + [human_bytes(sum(t["nbytes"] for t in ts))])
    if rows:
        out += ["", "Per layer (tensors by format; --tensors lists each one)"]
        out += table(rows, ["layer", "tensors"] + formats + ["bytes"])
        experts = [t for t in layers[min(layers)] if t["role"].startswith("expert_") and t["role"] != "expert_bias"]
        if experts:
            out.append("Expert weights per layer: " + ", ".join(
                f"{t['name'].split('.', 3)[-1] if t['name'].startswith('model.') else t['name']} "
                f"{t['format']} {shape_text(t['shape'])}" for t in experts))
    return out


def _memory_lines(m: dict) -> list[str]:
    if "unavailable" in m:
        return ["", f"Memory estimate: unavailable ({m['unavailable']})"]
    o = m["options"]
    settings = (f"KV cache {o['kv_type']}, {o['parallel']} sequence{'s' if o['parallel'] > 1 else ''}"
                f"{' (unified cache)' if o['kv_unified'] and o['parallel'] > 1 else ''}, ubatch {o['ubatch']}, "
                f"flash attention, sliding-window layers {'over the whole context' if o['swa_full'] else 'windowed'}")
    out = ["", f"Memory estimate ({settings}; model maximum {m['max_context']} tokens)"]
    rows = []
    for row in m["contexts"]:
        ll, rt = row["llama_cpp"], row["runtime"]
        rows.append([str(row["ctx"]), human_binary(ll["weights_bytes"]), human_binary(ll["kv_cache_bytes"]),
                     human_binary(ll["compute_bytes"] + ll["output_bytes"]), human_binary(ll["total_bytes"]),
                     human_binary(ll["gpu_bytes"]) + _fit(row.get("fits_llama_cpp")),
                     human_binary(rt["total_bytes"]) + _fit(row.get("fits_runtime"))])
    out += ["  " + r for r in table(rows, ["context", "weights", "KV cache", "compute+output", "llama.cpp total",
                                          "on a GPU", "our runtime"])]
    kv = m["contexts"][-1]["llama_cpp"]["kv_cache"]
    out.append(f"  KV cells at {m['contexts'][-1]['ctx']}: {kv['cells']} per stream in full-attention layers, "
               f"{kv['swa_cells']} in sliding-window layers, {kv['streams']} stream(s)")
    if "largest_context" in m:
        big = m["largest_context"]
        def say(n):
            if not n:
                return "none: not even 256 tokens fit"
            return f"{n} tokens" + (" (the model's maximum)" if n == m["max_context"] else "")
        out.append(f"  Largest context on {human_binary(m['gpu_memory_bytes'])} of GPU memory: llama.cpp "
                   f"{say(big['llama_cpp'])}; our runtime {say(big['runtime'])}")
    out += ["  " + n for n in m["notes"]]
    return out


def _fit(fits: bool | None) -> str:
    return "" if fits is None else (" fits" if fits else " no")
