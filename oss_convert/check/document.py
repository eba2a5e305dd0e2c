"""The check's document: what the server runs, at what speed, holding what, computing what,
and one verdict line for each, saying what it rests on."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from ..checkpoint import Checkpoint
from ..checkpoint.summary import storage_summary
from ..errors import OssConvertError
from ..memory.context import ContextOptions
from ..memory.estimate import memory_estimate
from ..text import human_binary
from . import ceiling, process
from .apps import Run, Served, run_once, token_answer

PROMPT = ("The history of the printing press begins in the fifteenth century, when movable type made books "
          "cheaper to produce. Within a few decades, presses spread across Europe, and")
# The server's own code and buffers beyond the plan's (a CUDA context alone is a few hundred MiB).
MEMORY_ALLOWANCE = 512 << 20
WIDENED_SHARE = 0.5  # held beyond the plan by half the weights again or more: they were widened
# Without log-probabilities: the share of positions that must have the same most likely token, and
# of the greedy text that must match ours before the first difference. A faulty backend (a flood
# of "?", garbage) matches almost none; rounding flips a near-tie now and then, after which two
# correct greedy texts part ways for good, hence the lower share for text.
TOP1_AGREEMENT = 0.9
TEXT_AGREEMENT = 0.5


def _median(values) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def speeds(runs: list[Run]) -> dict:
    out: dict = {}
    for key in ("prompt_per_second", "decode_per_second", "ttft_s"):
        out[key] = {"server": _median(r.server.get(key) for r in runs),
                    "clock": _median(r.clock.get(key) for r in runs)}
    out["runs"] = [{"prompt_tokens": r.prompt_tokens, "generated": r.generated, "server": r.server, "clock": r.clock,
                    "reported": r.reported} for r in runs]
    return out


def memory_section(served: Served, ckpt: Checkpoint, ctx: int, kv_type: str) -> dict:
    plan = memory_estimate(ckpt, ContextOptions(ctx, kv_type))["contexts"][0]["llama_cpp"]
    weights = sum(t.nbytes for t in ckpt.tensors)
    doc: dict = {"plan_bytes": plan["total_bytes"], "plan_gpu_bytes": plan["gpu_bytes"], "ctx": ctx,
                 "kv_type": kv_type, "weight_bytes": weights}
    pid = process.listening_pid(served.url)
    gpu, gpu_name = process.gpu_processes()
    if pid is not None:
        doc |= {"pid": pid, "process": process.process_name(pid), "resident_bytes": process.resident_bytes(pid)}
        if pid in gpu:
            doc["gpu_bytes"] = gpu[pid]
    if gpu_name:
        doc["gpu_name"] = gpu_name
    if served.facts.get("size") is not None:  # Ollama's own account of the loaded model
        doc |= {"ollama_size": served.facts["size"], "ollama_size_vram": served.facts.get("size_vram")}
    held = doc.get("gpu_bytes") or doc.get("ollama_size") or doc.get("resident_bytes")
    source = ("GPU memory (NVML)" if doc.get("gpu_bytes") else "Ollama's size" if doc.get("ollama_size")
              else "resident memory (/proc)" if doc.get("resident_bytes") else None)
    if held is None:
        doc["reading"] = "unknown: the server's process is not on this machine (or not readable), and it says nothing"
        return doc
    # a GPU holds what the plan puts there (all but the token embedding and the output buffer)
    planned = plan["gpu_bytes"] if doc.get("gpu_bytes") else plan["total_bytes"]
    excess = held - planned
    doc |= {"held_bytes": held, "held_from": source, "compared_with_bytes": planned, "ratio": held / planned}
    if excess <= MEMORY_ALLOWANCE:
        reading = "weights as stored" if held >= 0.5 * planned else \
            "below the plan: the file is memory-mapped and only the pages read so far count"
    elif excess >= WIDENED_SHARE * weights:
        reading = "weights widened: it holds the plan plus at least half the weights again"
    else:
        reading = "above the plan by more than the server's own buffers, but less than widened weights would take"
    doc["reading"] = reading
    return doc


def ceiling_section(ckpt: Checkpoint, memory: dict, length: int, kv_type: str, decode: float | None,
                    bandwidth: float | None) -> dict:
    step = ceiling.step_bytes(ckpt, length, kv_type)
    as_mxfp4 = ceiling.step_bytes(ckpt, length, kv_type, experts_mxfp4=True)
    if bandwidth is not None:
        where, source = "as given", "--bandwidth"
    elif memory.get("gpu_bytes") and memory.get("gpu_name") and ceiling.gpu_bandwidth(memory["gpu_name"]):
        bandwidth, source = ceiling.gpu_bandwidth(memory["gpu_name"])  # type: ignore[misc]
        where = memory["gpu_name"]
    else:
        bandwidth, where, source = ceiling.cpu_read_bandwidth(), "this machine's memory", "a read measured here"
    assert bandwidth is not None
    top = bandwidth / step["total_bytes"]
    doc = {"step_bytes": step, "bandwidth_bytes_per_s": bandwidth, "bandwidth_of": where, "bandwidth_source": source,
           "length": length, "ceiling_tokens_per_s": top,
           "ceiling_with_mxfp4_experts_tokens_per_s": bandwidth / as_mxfp4["total_bytes"]}
    if decode:
        doc["share_of_ceiling"] = decode / top
    return doc


def check_document(served: Served, ckpt: Checkpoint, file_name: str, *, runs: int = 3, n_predict: int = 32,
                   top_k: int = 10, kv_type: str = "f16", bandwidth: float | None = None,
                   agreement: Callable | None = None, no_agreement: str | None = None, progress=None) -> dict:
    """`agreement`: our runtime's comparison (None where it is not installed); `no_agreement`:
    why it is not to be run at all."""
    cfg = ckpt.require_config()
    from ..checkpoint.text_tokenizer import load_tokenizer
    tokenizer = load_tokenizer(ckpt)
    prompt_ids = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    done = [run_once(served, prompt_ids, PROMPT, n_predict, top_k) for _ in (progress or range)(runs)]
    summary = storage_summary(ckpt)
    file = {"name": file_name, "path": ckpt.where, "layout": ckpt.layout_description, **summary}
    speed = speeds(done)
    ctx = int(served.ctx or cfg.context_length or 4096)
    memory = memory_section(served, ckpt, ctx, kv_type)
    decode = speed["decode_per_second"]["server"] or speed["decode_per_second"]["clock"]
    length = len(prompt_ids) + n_predict // 2
    top = ceiling_section(ckpt, memory, length, kv_type, decode, bandwidth)
    last = done[-1]
    generated, tops = None, None  # a text API's tokens are not known: text cannot say which tokens made it
    if served.app == "llama-server" and agreement is not None and no_agreement is None:
        generated, tops = token_answer(served, prompt_ids, n_predict, top_k)
    if no_agreement is not None:
        agree = {"skipped": no_agreement}
    elif agreement is None:
        agree = {"skipped": "our runtime is not installed here (pip install 'oss-convert[runtime]')"}
    else:
        from .agreement import text_agreement
        try:
            agree = agreement(ckpt, prompt_ids, generated, tops) if generated is not None else \
                text_agreement(ckpt, prompt_ids, last.text, last.generated + 8)
        except OssConvertError as e:
            agree = {"skipped": str(e)}
    server = {"app": served.app, "url": served.url, "model": served.model, "version": served.version,
              "ctx": served.ctx, "facts": served.facts}
    doc = {"server": server, "file": file, "prompt": {"text": PROMPT, "tokens": len(prompt_ids)},
           "n_predict": n_predict, "speed": speed, "memory": memory, "ceiling": top, "agreement": agree}
    doc["verdict"] = verdict(doc)
    return doc


def verdict(doc: dict) -> list[str]:
    f, m, c, a, s = doc["file"], doc["memory"], doc["ceiling"], doc["agreement"], doc["speed"]
    lines = []
    if f["experts_mxfp4"]:
        lines.append(f"file: experts MXFP4 kept ({f['bits_per_weight']:.2f} bits/weight; from its headers, "
                     f"verify proves the bits)")
    else:
        lines.append(f"file: experts requantized to {', '.join(f['expert_types']) or '?'} "
                     f"({f['bits_per_weight']:.2f} bits/weight; from its headers)")
    if "held_bytes" in m:
        lines.append(f"memory: holds {human_binary(m['held_bytes'])}, plan {human_binary(m['compared_with_bytes'])} at "
                     f"{m['ctx']} tokens: {m['reading']} (from {m['held_from']})")
    else:
        lines.append(f"memory: {m['reading']}")
    decode = s["decode_per_second"]["server"] or s["decode_per_second"]["clock"]
    if decode and "share_of_ceiling" in c:
        lines.append(f"speed: decode {decode:.1f} tokens/s, {100 * c['share_of_ceiling']:.0f}% of the ceiling, "
                     f"{c['ceiling_tokens_per_s']:.0f} tokens/s ({human_binary(c['step_bytes']['total_bytes'])} a "
                     f"token at {c['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, {c['bandwidth_of']}: "
                     f"{c['bandwidth_source']})")
    if "skipped" in a:
        lines.append(f"computing: not compared ({a['skipped']})")
    elif "kl_topk_mean" in a:
        ok = "agrees with" if a["within_bound"] else "DISAGREES with"
        lines.append(f"computing: {ok} our runtime on this file: KL over its top {a['top_k']} and the rest "
                     f"{a['kl_topk_mean']:.2g} (bound {a['kl_bound']:g}), same next token at {a['top1_agree']} of "
                     f"{a['positions']} positions")
    elif "text_agreement" in a:
        ok = "agrees with" if a["text_agreement"] >= TEXT_AGREEMENT else "DISAGREES with"
        lines.append(f"computing: {ok} our runtime on this file: the same greedy text for {a['same_characters']} "
                     f"of its {a['characters']} characters")
    else:
        ok = "agrees with" if a["top1_agreement"] >= TOP1_AGREEMENT else "DISAGREES with"
        lines.append(f"computing: {ok} our runtime on this file: same next token at {a['top1_agree']} of "
                     f"{a['positions']} positions (the app gives no log-probabilities)")
    return lines


def render_check(doc: dict) -> str:
    sv, s, c = doc["server"], doc["speed"], doc["ceiling"]
    lines = [*doc["verdict"], "",
             f"{sv['app']} at {sv['url']}" + (f" ({sv['version']})" if sv["version"] else "")
             + f": model {sv['model']}, context {sv['ctx'] or '?'}",
             f"file: {doc['file']['name']} ({doc['file']['layout']})"]
    runtime = (sv["facts"] or {}).get("runtime")
    if runtime:
        lines.append(f"engine: {runtime.get('name')} {runtime.get('version') or ''}".rstrip())

    def pair(key: str, unit: str, scale: float = 1.0) -> str:
        v = s[key]
        parts = [f"server {v['server'] * scale:.1f}" if v["server"] is not None else None,
                 f"stream clock {v['clock'] * scale:.1f}" if v["clock"] is not None else None]
        return ", ".join(p for p in parts if p) + f" {unit}" if any(parts) else "not measured"
    step = {k: human_binary(v) for k, v in c["step_bytes"].items()}
    lines += [f"prompt: {pair('prompt_per_second', 'tokens/s')}; decode: {pair('decode_per_second', 'tokens/s')}; "
              f"first token: {pair('ttft_s', 'ms', 1000)} (median of {len(s['runs'])} runs, "
              f"{doc['prompt']['tokens']}-token prompt, {doc['n_predict']} tokens)",
              f"a decode step streams {step['total_bytes']} (dense {step['dense_bytes']}, experts "
              f"{step['expert_bytes']}, KV {step['kv_bytes']}); at {c['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s: "
              f"{c['ceiling_tokens_per_s']:.0f} tokens/s, {c['ceiling_with_mxfp4_experts_tokens_per_s']:.0f} with "
              "the experts MXFP4"]
    return "\n".join(lines)
