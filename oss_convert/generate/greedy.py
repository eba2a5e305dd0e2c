"""`oss-convert generate`: greedy generation through the chat template, from any checkpoint or port."""

from __future__ import annotations

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
    logits = prefill(model, ids, cache)
    out: list[int] = []
    for _ in range(max_tokens):
        nxt = int(logits[-1].argmax())
        if nxt in stops:
            break
        out.append(nxt)
        logits = forward(model, torch.tensor([nxt], device=dev), cache)
    return {"prompt": text, "prompt_tokens": ids, "tokens": out, "text": tokenizer.decode(out)}
