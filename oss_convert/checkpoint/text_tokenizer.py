"""A checkpoint's tokenizer as the `tokenizers` package runs it (from its tokenizer.json, or the
one a GGUF's vocabulary makes), its chat template applied with jinja2, and token ids checked
against its vocabulary. Both packages are optional: the commands that need text say so."""

from __future__ import annotations

from typing import Any

from ..errors import OssConvertError
from .checkpoint import Checkpoint

STOP_TOKENS = ("<|return|>", "<|end|>", "<|call|>", "<|endoftext|>")


def load_tokenizer(ckpt: Checkpoint, instead: str = "") -> Any:
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


def chat_prompt(ckpt: Checkpoint, message: str) -> str:
    """One user message framed by the checkpoint's chat template, ready for the assistant's turn."""
    try:
        import jinja2
    except ImportError:
        raise OssConvertError("the chat template needs the 'jinja2' package (pip install jinja2, or the 'text' "
                              "extra)") from None
    template = ckpt.vocab().chat_template
    if not template:
        raise OssConvertError(f"{ckpt.where}: has no chat template")
    return jinja2.Environment().from_string(template).render(messages=[{"role": "user", "content": message}],
                                                             add_generation_prompt=True)


def check_token_ids(ckpt: Checkpoint, tokens: list[int]) -> None:
    """Every id is inside the checkpoint's vocabulary (its config's, else its embedding's rows)."""
    vocab_size = ckpt.require_config().vocab_size or ckpt.tensor("model.embed_tokens.weight").shape[0]
    if max(tokens) >= vocab_size:
        raise OssConvertError(f"token id {max(tokens)} is outside the vocabulary of {ckpt.where} ({vocab_size})")
