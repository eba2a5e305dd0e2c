"""Our runtime's greedy continuation of a text, each step over the whole sequence (no cache): what
a correct app answers, for the tests that compare apps and ports with it."""

from __future__ import annotations

from pathlib import Path


def greedy(ckpt_path: Path, prompt: str, n: int) -> tuple[list[int], list[int], str]:
    """(the prompt's tokens, the n tokens that follow, their text)."""
    import torch

    from oss_convert.checkpoint import open_checkpoint
    from oss_convert.checkpoint.text_tokenizer import load_tokenizer
    from oss_convert.runtime.execution.forward import forward, load_model
    ckpt = open_checkpoint(ckpt_path)
    tokenizer = load_tokenizer(ckpt)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    model = load_model(ckpt, torch.device("cpu"))
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            out.append(int(forward(model, torch.tensor(ids + out))[-1].argmax()))
    return ids, out, tokenizer.decode(out)
