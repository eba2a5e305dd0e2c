"""Whole-model comparison (logits, KL divergence, top-1 agreement, perplexity) and generation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import Checkpoint
from ..errors import OssConvertError
from ..files.stream import release_freed_memory
from ..memory.runtime import PREFILL_TOKENS
from .compare import pick_device
from .model import forward, load_model, new_cache, streamed_logits

STOP_TOKENS = ("<|return|>", "<|end|>", "<|call|>", "<|endoftext|>")


def load_tokenizer(ckpt: Checkpoint, instead: str = ""):
    """A `tokenizers.Tokenizer` for the checkpoint. `instead`: what the command offers without
    one, for the error where tokenizers is missing."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise OssConvertError("tokenizing text needs the 'tokenizers' package (pip install tokenizers, or the "
                              f"'text' extra){instead}") from None
    try:
        return Tokenizer.from_str(ckpt.tokenizer_json())
    except Exception as e:  # tokenizers raises its own Exception subclass for a bad file
        raise OssConvertError(f"{ckpt.where}: its tokenizer does not load ({e})") from None


def chat_template(ckpt: Checkpoint) -> str:
    template = ckpt.vocab().chat_template
    if not template:
        raise OssConvertError(f"{ckpt.where}: has no chat template")
    return template


def read_tokens_file(path: Path) -> list[int]:
    try:
        return [int(t) for t in Path(path).read_text().split()]
    except (OSError, ValueError) as e:
        raise OssConvertError(f"{path}: expected whitespace-separated token ids ({e})") from None


def read_text_file(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OssConvertError(f"{path}: not a readable UTF-8 text file ({e})") from None


def read_text_inputs(prompt: str | None, text_file: Path | None,
                     tokens_file: Path | None) -> tuple[str | None, list[int] | None]:
    """(text, token ids) from whichever of --prompt, --text-file and --tokens-file was given."""
    if text_file is not None:
        prompt = read_text_file(text_file)
    return prompt, read_tokens_file(tokens_file) if tokens_file is not None else None


@torch.no_grad()
def check_tokens(ckpt: Checkpoint, tokens: list[int]) -> None:
    vocab_size = ckpt.require_config().vocab_size or ckpt.tensor("model.embed_tokens.weight").shape[0]
    if max(tokens) >= vocab_size:
        raise OssConvertError(f"token id {max(tokens)} is outside the vocabulary of {ckpt.where} ({vocab_size})")


@torch.inference_mode()  # no autograd bookkeeping on any operation: 10-15% of a decode step's Python
def model_logits(ckpt: Checkpoint, tokens: list[int], ctx: int, device, activations: str = "float32") -> np.ndarray:
    """Logits [len(tokens), V] float32, the text evaluated in windows of `ctx` tokens, one
    layer in memory at a time."""
    check_tokens(ckpt, tokens)
    windows = [torch.tensor(tokens[start:start + ctx]) for start in range(0, len(tokens), ctx)]
    with tqdm(total=ckpt.config.num_layers, unit="layer", desc=Path(ckpt.where).name,
              disable=not sys.stderr.isatty()) as bar:
        logits = streamed_logits(ckpt, windows, device, progress=lambda _: bar.update(), activations=activations)
    if len(logits) == 1:  # not copied: [positions, vocab] float32 is 412 MB at 512 positions
        return logits[0].cpu().numpy()
    return np.concatenate([t.cpu().numpy() for t in logits])


METRIC_ROWS = 32  # positions whose float64 log-probabilities exist at once (26 MB each on a 201k vocabulary)


def logit_metrics(a: np.ndarray, b: np.ndarray, tokens: list[int], ctx: int) -> dict:
    kl, top1, max_diff, nll_a, nll_b = [], [], [], [], []
    for start in range(0, len(tokens), METRIC_ROWS):
        stop = min(start + METRIC_ROWS, len(tokens))
        la, lb = torch.from_numpy(a[start:stop]).double(), torch.from_numpy(b[start:stop]).double()
        pa, pb = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
        kl.append((pa.exp() * (pa - pb)).sum(-1).clamp(min=0))
        top1.append((la.argmax(-1) == lb.argmax(-1)).double())
        max_diff.append((la - lb).abs().amax(-1))
        nxt = torch.tensor(tokens[start + 1:stop + 1])  # the token each position predicts, where there is one
        nll_a.append(-pa[:len(nxt)].gather(1, nxt[:, None]).squeeze(1))
        nll_b.append(-pb[:len(nxt)].gather(1, nxt[:, None]).squeeze(1))
        del la, lb, pa, pb
        release_freed_memory()
    kl, top1, max_diff, nll_a, nll_b = (torch.cat(v) for v in (kl, top1, max_diff, nll_a, nll_b))
    return {
        "positions": len(tokens),
        "kl_mean": float(kl.mean()), "kl_p99": float(torch.quantile(kl, 0.99)), "kl_max": float(kl.max()),
        "top1_agreement": float(top1.mean()),
        "max_logit_diff": float(max_diff.max()),
        "perplexity_a": float(nll_a.mean().exp()) if len(nll_a) else None,
        "perplexity_b": float(nll_b.mean().exp()) if len(nll_b) else None,
        "per_position": [{"position": i, "window": i // ctx, "token": tokens[i], "kl": float(kl[i]),
                          "top1_same": bool(top1[i]),
                          "max_logit_diff": float(max_diff[i])} for i in range(len(tokens))],
    }


def compare_full(a: Checkpoint, b: Checkpoint, *, tokens: list[int] | None = None, prompt: str | None = None,
                 ctx: int = 512, device: str = "auto", save_logits: Path | None = None,
                 activations: str = "float32") -> dict:
    dev = runtime_device(device, activations)
    if tokens is None:
        tokenizer = load_tokenizer(a, "; or pass token ids with --tokens-file")
        tokens = tokenizer.encode(prompt or "").ids
    if len(tokens) < 1:
        raise OssConvertError("nothing to evaluate: the prompt gives no tokens")
    for ckpt in (a, b):  # both checked before either runs
        check_tokens(ckpt, tokens)
    logits_a = model_logits(a, tokens, ctx, dev, activations)
    logits_b = model_logits(b, tokens, ctx, dev, activations)
    metrics = logit_metrics(logits_a, logits_b, tokens, ctx)
    if save_logits:
        save_logits.mkdir(parents=True, exist_ok=True)
        np.save(save_logits / "logits_a.npy", logits_a)
        np.save(save_logits / "logits_b.npy", logits_b)
        (save_logits / "tokens.txt").write_text(" ".join(map(str, tokens)) + "\n")
    same = metrics["max_logit_diff"] == 0
    verdict = ("identical logits at every position" if same else
               f"KL mean {metrics['kl_mean']:.3g} (p99 {metrics['kl_p99']:.3g}), top-1 agreement "
               f"{100 * metrics['top1_agreement']:.1f}%, max logit difference {metrics['max_logit_diff']:.3g}")
    return {"a": a.where, "b": b.where, "device": str(dev), "activations": activations, "ctx": ctx, "tokens": tokens,
            "summary": {"verdict": verdict, **{k: v for k, v in metrics.items() if k != "per_position"}},
            "per_position": metrics["per_position"]}


def runtime_device(device: str, activations: str) -> torch.device:
    """The device to run on: Q8_0 activations are the CPU kernels', so "auto" means the CPU there
    (load_model and streamed_logits refuse what cannot run)."""
    return pick_device("cpu" if activations == "q8" and device == "auto" else device)


def render_full(doc: dict) -> str:
    s = doc["summary"]
    arithmetic = ", activations rounded to Q8_0" if doc.get("activations") == "q8" else ""
    lines = [s["verdict"], f"A {doc['a']}, B {doc['b']}; {s['positions']} positions on {doc['device']}{arithmetic}"]
    if s["perplexity_a"] is not None:
        lines.append(f"perplexity on the text: A {s['perplexity_a']:.4g}, B {s['perplexity_b']:.4g}")
    lines.append(f"KL(A||B): mean {s['kl_mean']:.4g}, p99 {s['kl_p99']:.4g}, max {s['kl_max']:.4g}; "
                 f"top-1 agreement {100 * s['top1_agreement']:.2f}%; max |logit diff| {s['max_logit_diff']:.4g}")
    return "\n".join(lines)


def prefill(model, ids: list[int], cache) -> torch.Tensor:
    """The prompt into the cache PREFILL_TOKENS at a time (llama.cpp's micro-batch), so that the
    attention scores of a long prompt are [heads, PREFILL_TOKENS, context], not [heads, prompt,
    prompt]; the logits of the last micro-batch."""
    for start in range(0, len(ids), PREFILL_TOKENS):
        logits = forward(model, torch.tensor(ids[start:start + PREFILL_TOKENS], device=model.device), cache)
    return logits


@torch.inference_mode()
def generate(ckpt: Checkpoint, prompt: str, max_tokens: int = 64, device: str = "auto",
             activations: str = "float32") -> dict:
    try:
        import jinja2
    except ImportError:
        raise OssConvertError("the chat template needs the 'jinja2' package (pip install jinja2, or the 'text' "
                              "extra)") from None
    tokenizer = load_tokenizer(ckpt)
    text = jinja2.Environment().from_string(chat_template(ckpt)).render(
        messages=[{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    dev = runtime_device(device, activations)
    model = load_model(ckpt, dev, activations)
    stops = {tokenizer.token_to_id(t) for t in STOP_TOKENS} - {None}
    cache = new_cache(capacity=len(ids) + max_tokens)  # the context the memory plan counts
    logits = prefill(model, ids, cache)
    out = []
    for _ in range(max_tokens):
        nxt = int(logits[-1].argmax())
        if nxt in stops:
            break
        out.append(nxt)
        logits = forward(model, torch.tensor([nxt], device=dev), cache)
    return {"prompt": text, "prompt_tokens": ids, "tokens": out, "text": tokenizer.decode(out)}

