"""The three servers people run GPT-OSS in, by their own HTTP APIs: which one answers at a URL,
the model it serves and the file behind it, and one greedy run with its timings.

- llama-server (tools/server of llama.cpp): `GET /props` (model_path, build_info, n_ctx),
  `POST /completion` streamed, token ids in and out, `n_probs` top log-probabilities and the
  server's `timings`.
- LM Studio's REST API v0 (lmstudio.ai/docs, "REST API v0"): `GET /api/v0/models` (arch,
  quantization, state, max_context_length), `POST /api/v0/completions` (`stats`: tokens_per_second,
  time_to_first_token; `model_info`; `runtime`: the llama.cpp engine it ran).
- Ollama (docs/api.md of ollama/ollama): `GET /api/version`, `GET /api/ps` (size, size_vram),
  `POST /api/show` (details, model_info), `POST /api/generate` streamed (raw prompt, eval counts
  and durations).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OssConvertError
from .http import get_json, stream

DEFAULT_URLS = ["http://127.0.0.1:8080", "http://127.0.0.1:1234", "http://127.0.0.1:11434"]


@dataclass
class Served:
    app: str  # "llama-server", "LM Studio" or "Ollama"
    url: str
    model: str  # the model's name on the server
    version: str | None = None
    file: str | None = None  # a path or a store name for the file behind the model, where known
    ctx: int | None = None
    facts: dict = field(default_factory=dict)  # what the server says of the model


@dataclass
class Run:
    prompt_tokens: int
    generated: int
    text: str
    server: dict  # prompt_per_second, decode_per_second, ttft_s where the server gives them
    clock: dict  # the same from the stream's own clock
    reported: dict  # the server's own figures, as it sent them


def recognise(url: str, model: str | None) -> Served:
    """The app at `url` and the model it serves (`model` picks one where it serves several)."""
    base = url.rstrip("/")
    props = get_json(base + "/props")
    if props.status == 200 and isinstance(props.body, dict) and "model_path" in props.body:
        body = props.body
        settings = body.get("default_generation_settings") or {}
        path = str(body["model_path"])
        return Served("llama-server", base, model or Path(path).name, str(body.get("build_info") or "") or None,
                      path, settings.get("n_ctx") or body.get("n_ctx"), {"total_slots": body.get("total_slots")})
    models = get_json(base + "/api/v0/models")
    if models.status == 200 and isinstance(models.body, dict) and isinstance(models.body.get("data"), list):
        return _lmstudio(base, models.body["data"], model)
    version = get_json(base + "/api/version")
    if version.status == 200 and isinstance(version.body, dict) and "version" in version.body:
        return _ollama(base, str(version.body["version"]), model)
    raise OssConvertError(f"{base}: answers HTTP, but not as llama-server, LM Studio or Ollama do "
                          "(no /props, /api/v0/models or /api/version)")


def _lmstudio(base: str, listed: list, model: str | None) -> Served:
    llms = [m for m in listed if isinstance(m, dict) and m.get("type") == "llm"]
    loaded = [m for m in llms if m.get("state") == "loaded"]
    if model is not None:
        chosen = [m for m in llms if m.get("id") == model]
        if not chosen:
            raise OssConvertError(f"{base}: LM Studio has no model {model!r} (it has "
                                  f"{', '.join(str(m.get('id')) for m in llms[:8]) or 'none'})")
    else:
        chosen = loaded or llms
        if len(chosen) != 1:
            raise OssConvertError(f"{base}: LM Studio has {len(chosen)} {'loaded ' if loaded else ''}models; "
                                  f"name one with --model ({', '.join(str(m.get('id')) for m in chosen[:8])})")
    m = chosen[0]
    facts = {k: m.get(k) for k in ("arch", "quantization", "compatibility_type", "state", "publisher")}
    return Served("LM Studio", base, str(m["id"]), None, _lmstudio_file(m), m.get("max_context_length"), facts)


def _lmstudio_file(m: dict) -> str | None:
    """LM Studio's models folder entry for a model of its list: PUBLISHER/REPO of its id."""
    from ..stores import lmstudio
    publisher, model_id = str(m.get("publisher") or ""), str(m.get("id") or "")
    name = model_id.split("/")[-1].lower()
    for entry, _ in lmstudio.list_models():
        pub, repo, _file = entry.split("/")
        if pub.lower() == publisher.lower() and name and (name in repo.lower() or repo.lower() in name):
            return f"lmstudio:{entry}"
    return None


def _ollama(base: str, version: str, model: str | None) -> Served:
    running = get_json(base + "/api/ps").body
    loaded = running.get("models", []) if isinstance(running, dict) else []
    if model is None:
        if len(loaded) != 1:
            raise OssConvertError(f"{base}: Ollama has {len(loaded)} models loaded; name one with --model "
                                  f"({', '.join(str(m.get('name')) for m in loaded[:8])})")
        model = str(loaded[0].get("name") or loaded[0].get("model"))
    shown = get_json(base + "/api/show", {"model": model})
    if shown.status != 200 or not isinstance(shown.body, dict):
        raise OssConvertError(f"{base}: Ollama has no model {model!r}")
    info = shown.body.get("model_info") or {}
    arch = info.get("general.architecture")
    ps: dict = next((m for m in loaded if m.get("name") == model or m.get("model") == model), {})
    facts = {"details": shown.body.get("details"), "architecture": arch, "size": ps.get("size"),
             "size_vram": ps.get("size_vram")}
    # the context it runs with (api/types.go's ProcessModelResponse), else the model's maximum
    ctx = ps.get("context_length") or (info.get(f"{arch}.context_length") if arch else None)
    return Served("Ollama", base, model, version, f"ollama:{model}", ctx, facts)


def run_once(served: Served, prompt_ids: list[int], prompt_text: str, n_predict: int, top_k: int) -> Run:
    if served.app == "llama-server":
        return _run_llama_server(served, prompt_ids, n_predict, top_k)
    if served.app == "LM Studio":
        return _run_lmstudio(served, prompt_text, n_predict)
    return _run_ollama(served, prompt_text, n_predict)


def _clock(start: float, arrivals: list[float], prompt_tokens: int) -> dict:
    if not arrivals:
        return {"ttft_s": None, "prompt_per_second": None, "decode_per_second": None}
    ttft = arrivals[0] - start
    decode = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 and arrivals[-1] > arrivals[0] \
        else None
    return {"ttft_s": ttft, "prompt_per_second": prompt_tokens / ttft if ttft > 0 else None,
            "decode_per_second": decode}


def _llama_server_payload(prompt_ids: list[int], n_predict: int, top_k: int, streamed: bool) -> dict:
    return {"prompt": prompt_ids, "n_predict": n_predict, "temperature": 0, "top_k": 1, "n_probs": top_k,
            "stream": streamed, "cache_prompt": False, "return_tokens": True, "samplers": ["top_k"]}


def _run_llama_server(served: Served, prompt_ids: list[int], n_predict: int, top_k: int) -> Run:
    """Streamed, for the clock. A token that ends inside a character is held back and sent with a
    later one, without its id (tokens_predicted counts it): the ids and log-probabilities come
    from the same request unstreamed (`token_answer`)."""
    start = time.perf_counter()
    arrivals: list[float] = []
    text: list[str] = []
    timings: dict = {}
    predicted = 0
    for event in stream(served.url + "/completion", _llama_server_payload(prompt_ids, n_predict, top_k, True)):
        d = event.data
        if d.get("tokens") or d.get("content"):
            arrivals.append(event.at)
            text.append(str(d.get("content") or ""))
        predicted = int(d.get("tokens_predicted") or predicted)
        if d.get("stop"):
            timings = d.get("timings") or {}
    server = {"ttft_s": None, "prompt_per_second": timings.get("prompt_per_second"),
              "decode_per_second": timings.get("predicted_per_second")}
    if timings.get("prompt_ms") is not None:
        server["ttft_s"] = timings["prompt_ms"] / 1000
    return Run(len(prompt_ids), int(timings.get("predicted_n") or predicted), "".join(text), server,
               _clock(start, arrivals, len(prompt_ids)), timings)


def token_answer(served: Served, prompt_ids: list[int], n_predict: int, top_k: int) -> tuple[list[int], list]:
    """llama-server's greedy tokens (every one, unstreamed) and, at each position, its top-k
    log-probabilities or None: the server gives them only for a token that completes a character
    (each entry names its token; they are placed in order on the tokens they name)."""
    reply = get_json(served.url + "/completion", _llama_server_payload(prompt_ids, n_predict, top_k, False),
                     timeout=600)
    body = reply.body if isinstance(reply.body, dict) else {}
    if reply.status != 200 or "tokens" not in body:
        raise OssConvertError(f"{served.url}/completion: answered {reply.status} without tokens")
    tokens = [int(t) for t in body["tokens"]]
    tops: list = [None] * len(tokens)
    position = 0
    for entry in body.get("completion_probabilities") or []:
        while position < len(tokens) and tokens[position] != int(entry["id"]):
            position += 1
        if position == len(tokens):
            break
        tops[position] = [(int(t["id"]), float(t["logprob"])) for t in entry.get("top_logprobs") or []]
        position += 1
    return tokens, tops


def _run_lmstudio(served: Served, prompt_text: str, n_predict: int) -> Run:
    """Not streamed: the v0 API's `stats` (tokens_per_second, time_to_first_token) come with the
    whole answer; the clock then times the request."""
    payload = {"model": served.model, "prompt": prompt_text, "temperature": 0, "max_tokens": n_predict,
               "stream": False}
    start = time.perf_counter()
    reply = get_json(served.url + "/api/v0/completions", payload, timeout=600)
    took = time.perf_counter() - start
    body = reply.body if isinstance(reply.body, dict) else None
    if reply.status != 200 or body is None or not body.get("choices"):
        raise OssConvertError(f"{served.url}: LM Studio answered {reply.status} without a completion")
    stats, usage = body.get("stats") or {}, body.get("usage") or {}
    served.facts |= {"runtime": body.get("runtime"), "model_info": body.get("model_info")}
    prompt_tokens, generated = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    ttft = stats.get("time_to_first_token")
    server = {"ttft_s": ttft, "decode_per_second": stats.get("tokens_per_second"),
              "prompt_per_second": prompt_tokens / ttft if ttft else None}
    clock = {"ttft_s": None, "prompt_per_second": None,
             "decode_per_second": generated / took if took > 0 else None, "note": "whole request, unstreamed"}
    return Run(prompt_tokens, generated, str(body["choices"][0].get("text") or ""), server, clock,
               {"stats": stats, "usage": usage})


def _run_ollama(served: Served, prompt_text: str, n_predict: int) -> Run:
    """Ollama's log-probabilities name tokens by their text, which cannot say which of our tokens
    they are (a token that ends inside a character has none of its own): not asked for; its
    answer is compared as text."""
    payload = {"model": served.model, "prompt": prompt_text, "raw": True, "stream": True,
               "options": {"temperature": 0, "top_k": 1, "num_predict": n_predict}}
    start = time.perf_counter()
    arrivals: list[float] = []
    text: list[str] = []
    final: dict = {}
    for event in stream(served.url + "/api/generate", payload):
        d = event.data
        if d.get("response"):
            arrivals.append(event.at)
            text.append(str(d["response"]))
        if d.get("done"):
            final = d
    n_prompt, n_eval = int(final.get("prompt_eval_count") or 0), int(final.get("eval_count") or 0)
    p_ns, e_ns = final.get("prompt_eval_duration"), final.get("eval_duration")
    server = {"ttft_s": p_ns / 1e9 if p_ns else None, "prompt_per_second": n_prompt / p_ns * 1e9 if p_ns else None,
              "decode_per_second": n_eval / e_ns * 1e9 if e_ns else None}
    reported = {k: final.get(k) for k in ("prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration",
                                          "load_duration", "total_duration")}
    return Run(n_prompt, n_eval, "".join(text), server, _clock(start, arrivals, n_prompt), reported)
