"""`oss-convert compare --full`: two artifacts run whole on the same text, their logits compared
(KL divergence, top-1 agreement, logit differences, each one's perplexity)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import Checkpoint
from ..checkpoint.text_tokenizer import check_token_ids, load_tokenizer
from ..errors import OssConvertError
from ..files.stream import release_freed_memory
from ..runtime.execution.device import runtime_device
from ..runtime.execution.forward import streamed_logits


@torch.inference_mode()  # no autograd bookkeeping on any operation: 10-15% of a decode step's Python
def model_logits(ckpt: Checkpoint, tokens: list[int], ctx: int, device, activations: str = "float32") -> np.ndarray:
    """Logits [len(tokens), V] float32, the text evaluated in windows of `ctx` tokens, one
    layer in memory at a time."""
    check_token_ids(ckpt, tokens)
    windows = [torch.tensor(tokens[start:start + ctx]) for start in range(0, len(tokens), ctx)]
    with tqdm(total=ckpt.require_config().num_layers, unit="layer", desc=Path(ckpt.where).name,
              disable=not sys.stderr.isatty()) as bar:
        logits = streamed_logits(ckpt, windows, device, progress=lambda _: bar.update(), activations=activations)
    if len(logits) == 1:  # not copied: [positions, vocab] float32 is 412 MB at 512 positions
        return logits[0].cpu().numpy()
    return np.concatenate([t.cpu().numpy() for t in logits])


METRIC_ROWS = 32  # positions whose float64 log-probabilities exist at once (26 MB each on a 201k vocabulary)


def logit_metrics(a: np.ndarray, b: np.ndarray, tokens: list[int], ctx: int) -> dict:
    kl_parts: list[torch.Tensor] = []
    top1_parts: list[torch.Tensor] = []
    max_diff_parts: list[torch.Tensor] = []
    nll_a_parts: list[torch.Tensor] = []
    nll_b_parts: list[torch.Tensor] = []
    for start in range(0, len(tokens), METRIC_ROWS):
        stop = min(start + METRIC_ROWS, len(tokens))
        la, lb = torch.from_numpy(a[start:stop]).double(), torch.from_numpy(b[start:stop]).double()
        pa, pb = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
        kl_parts.append((pa.exp() * (pa - pb)).sum(-1).clamp(min=0))
        top1_parts.append((la.argmax(-1) == lb.argmax(-1)).double())
        max_diff_parts.append((la - lb).abs().amax(-1))
        nxt = torch.tensor(tokens[start + 1:stop + 1])  # the token each position predicts, where there is one
        nll_a_parts.append(-pa[:len(nxt)].gather(1, nxt[:, None]).squeeze(1))
        nll_b_parts.append(-pb[:len(nxt)].gather(1, nxt[:, None]).squeeze(1))
        del la, lb, pa, pb
        release_freed_memory()
    kl, top1, max_diff = torch.cat(kl_parts), torch.cat(top1_parts), torch.cat(max_diff_parts)
    nll_a, nll_b = torch.cat(nll_a_parts), torch.cat(nll_b_parts)
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
        check_token_ids(ckpt, tokens)
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
            "summary": {"verdict": verdict, "reading": reading(metrics),
                        **{k: v for k, v in metrics.items() if k != "per_position"}},
            "per_position": metrics["per_position"]}


def reading(metrics: dict) -> str:
    """The figures in words, for someone who has never read a KL divergence."""
    n = len(metrics["per_position"])
    changed = round((1 - metrics["top1_agreement"]) * n)
    if metrics["max_logit_diff"] == 0:
        return "B predicts exactly what A predicts at every position"
    return (f"B's most likely next token differs from A's at {changed} of {n} positions "
            f"({100 * changed / max(n, 1):.1f}%); KL 0 would mean the same predictions, and the mean KL "
            f"{metrics['kl_mean']:.3g} is the information (in nats) a token loses, on average, when B's "
            "probabilities stand in for A's")


def render_full(doc: dict) -> str:
    s = doc["summary"]
    arithmetic = ", activations rounded to Q8_0" if doc.get("activations") == "q8" else ""
    lines = [s["verdict"], s["reading"],
             f"A {doc['a']}, B {doc['b']}; {s['positions']} positions on {doc['device']}{arithmetic}"]
    if s["perplexity_a"] is not None:
        lines.append(f"perplexity on the text: A {s['perplexity_a']:.4g}, B {s['perplexity_b']:.4g}")
    lines.append(f"KL(A||B): mean {s['kl_mean']:.4g}, p99 {s['kl_p99']:.4g}, max {s['kl_max']:.4g}; "
                 f"top-1 agreement {100 * s['top1_agreement']:.2f}%; max |logit diff| {s['max_logit_diff']:.4g}")
    return "\n".join(lines)
