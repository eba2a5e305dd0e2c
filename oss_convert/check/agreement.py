"""Is the app computing what the file says? Our runtime reads the same file and is fed the
app's own tokens (the prompt, then what the app generated), so that every position compares the
two models on the same context: whether our most likely next token is the app's, and, where the
app returns its top-k log-probabilities by token id (llama-server), the KL divergence over those k
tokens and the rest. An app that answers in text only is compared as greedy text.

The bounds are SPEC §6's for our runtime against llama.cpp on the same port: KL < 1e-3 where the
weights are float (F32/F16/BF16), < 5e-3 where any is quantized (llama.cpp rounds activations to
Q8_0 or Q8_K before a quantized product; we follow transformers)."""

from __future__ import annotations

import math

from ..checkpoint import Checkpoint
from ..checkpoint.text_tokenizer import load_tokenizer

FLOAT_FORMATS = {"F32", "F16", "BF16"}


def kl_bound(ckpt: Checkpoint) -> float:
    return 1e-3 if all(t.format in FLOAT_FORMATS for t in ckpt.tensors) else 5e-3


def _topk_kl(app: list[tuple[int, float]], ours_logprobs) -> float:
    """KL(app ‖ ours) over the app's top-k tokens and one bucket for all the others: a lower
    bound of the KL over the whole vocabulary (merging outcomes never raises it), which needs no
    more than the app returns."""
    ids = [i for i, _ in app]
    p = [math.exp(lp) for _, lp in app]
    q = [math.exp(float(ours_logprobs[i])) for i in ids]
    p.append(max(1.0 - sum(p), 0.0))
    q.append(max(1.0 - sum(q), 1e-30))
    return sum(pi * (math.log(pi) - math.log(max(qi, 1e-30))) for pi, qi in zip(p, q) if pi > 0)


def agreement(ckpt: Checkpoint, prompt_ids: list[int], generated: list[int],
              app_top: list[list[tuple] | None] | None, device: str = "cpu") -> dict:
    """Our runtime on the app's context, position by position."""
    import torch

    from ..runtime.execution.device import runtime_device
    from ..runtime.execution.forward import forward, load_model
    if not generated:
        return {"skipped": "the app generated no tokens"}
    dev = runtime_device(device, "float32")
    model = load_model(ckpt, dev)
    with torch.inference_mode():
        logits = forward(model, torch.tensor(prompt_ids + generated[:-1], device=dev))
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1:].float(), dim=-1).cpu()
    ours = logprobs.argmax(dim=-1).tolist()
    same = [int(o == g) for o, g in zip(ours, generated)]
    doc: dict = {"positions": len(generated), "top1_agree": sum(same), "top1_agreement": sum(same) / len(same),
                 "first_difference": same.index(0) if 0 in same else None}
    if app_top:
        kls = []
        for position, top in enumerate(app_top[:len(generated)]):
            if not top:  # the app gave no log-probabilities here
                continue
            kls.append(_topk_kl(top, logprobs[position]))
        if kls:
            bound = kl_bound(ckpt)
            doc |= {"top_k": max(len(t) for t in app_top if t), "kl_positions": len(kls),
                    "kl_topk_mean": sum(kls) / len(kls), "kl_topk_max": max(kls), "kl_bound": bound,
                    "within_bound": sum(kls) / len(kls) < bound}
    return doc


def text_agreement(ckpt: Checkpoint, prompt_ids: list[int], app_text: str, n_tokens: int,
                   device: str = "cpu") -> dict:
    """For an app that answers in text (which tokens made a text is not known from it): our
    greedy continuation, a few tokens longer than the app's count, against the app's text,
    character by character up to the first difference."""
    import torch

    from ..runtime.execution.device import runtime_device
    from ..runtime.execution.forward import forward, load_model, prefill
    from ..runtime.model.cache import KVCache
    dev = runtime_device(device, "float32")
    model = load_model(ckpt, dev)
    cache = KVCache(capacity=len(prompt_ids) + n_tokens)
    out: list[int] = []
    with torch.inference_mode():
        logits = prefill(model, prompt_ids, cache)
        for _ in range(n_tokens):
            out.append(int(logits[-1].argmax()))
            logits = forward(model, torch.tensor([out[-1]], device=dev), cache)
    ours = load_tokenizer(ckpt).decode(out)
    same = next((i for i, (a, b) in enumerate(zip(app_text, ours)) if a != b), min(len(app_text), len(ours)))
    compared = max(len(app_text), 1)
    return {"characters": len(app_text), "same_characters": same, "text_agreement": same / compared,
            "ours": ours, "theirs": app_text}
