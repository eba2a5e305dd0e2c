"""`oss-convert generate`: greedy generation through the chat template, from any checkpoint or port."""

from __future__ import annotations

import time

import torch

from ..checkpoint import Checkpoint
from ..checkpoint.text_tokenizer import STOP_TOKENS, chat_prompt, load_tokenizer
from ..runtime.execution.device import runtime_device
from ..runtime.execution.forward import forward, load_model, prefill
from ..runtime.model.cache import KVCache


@torch.inference_mode()  # no autograd bookkeeping on any operation: 10-15% of a decode step's Python
def generate(ckpt: Checkpoint, prompt: str, max_tokens: int = 64, device: str = "auto",
             activations: str = "float32") -> dict:
    text = chat_prompt(ckpt, prompt)
    tokenizer = load_tokenizer(ckpt)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    dev = runtime_device(device, activations)
    model = load_model(ckpt, dev, activations)
    stops = {tokenizer.token_to_id(t) for t in STOP_TOKENS} - {None}
    cache = KVCache(capacity=len(ids) + max_tokens)  # the context the memory estimate counts
    start = time.perf_counter()
    logits = prefill(model, ids, cache)
    out: list[int] = []
    first = decoded = None
    for _ in range(max_tokens):
        nxt = int(logits[-1].argmax())
        if first is None:
            first = time.perf_counter()  # the first token is known: the prompt's cost, as llama.cpp counts it
        if nxt in stops:
            break
        out.append(nxt)
        logits = forward(model, torch.tensor([nxt], device=dev), cache)
        decoded = time.perf_counter()
    timings = timing_document(len(ids), len(out), start, first, decoded)
    return {"prompt": text, "prompt_tokens": ids, "tokens": out, "text": tokenizer.decode(out), "timings": timings}


def timing_document(n_prompt: int, n_out: int, start: float, first: float | None, last: float | None) -> dict:
    """llama.cpp's figures: the prompt's tokens/s (and the time to the first token), then the
    decode's, each token after the prompt counted once."""
    prompt_s = (first or start) - start
    decode_s = (last - first) if last is not None and first is not None else 0.0
    return {"prompt_n": n_prompt, "prompt_ms": 1e3 * prompt_s,
            "prompt_per_second": n_prompt / prompt_s if prompt_s > 0 else None,
            "time_to_first_token_ms": 1e3 * prompt_s,
            "predicted_n": n_out, "predicted_ms": 1e3 * decode_s,
            "predicted_per_second": n_out / decode_s if decode_s > 0 and n_out else None}
