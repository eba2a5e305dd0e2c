"""The tokenizer of a checkpoint, as GGUF stores it: read from a Hugging Face checkpoint's
tokenizer files or from GGUF metadata, and written back as Hugging Face tokenizer files.

Reading the HF files follows what llama.cpp's converter does for a GPT-2-style BPE (`get_vocab_base`,
`gguf.SpecialVocab`), without needing transformers: ids without a token become
`[PADi]` (UNUSED), added tokens that look special are CONTROL, merges are
"left right" strings, special ids come from tokenizer_config.json then config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OssConvertError

# gguf TokenType values
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
GPT_OSS_PRE_TOKENIZER = "gpt-4o"
# The pre-tokenizer regex of GPT-OSS's o200k_harmony tokenizer (llama.cpp's "gpt-4o").
O200K_PATTERN = (
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
ADDED_TOKEN_FIELDS = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")


@dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)  # in the order llama.cpp sets them
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: str | None = None


def _looks_special(token: str) -> bool:
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OssConvertError(f"{path}: cannot read ({e})") from None


def find_tokenizer_dir(root: Path) -> Path:
    """The folder with tokenizer.json: the checkpoint's own, or the repo root above original/."""
    for folder in (root, root.parent):
        if (folder / "tokenizer.json").is_file():
            return folder
    raise OssConvertError(f"{root}: no tokenizer.json here or in its parent folder; "
                          "a GGUF needs the tokenizer")


def read_vocab(folder: Path, vocab_size: int | None, config: dict | None = None) -> Vocab:
    tok = _load_json(folder / "tokenizer.json")
    model = tok.get("model") if isinstance(tok, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict) \
            or not all(isinstance(i, int) for i in model["vocab"].values()):
        raise OssConvertError(f"{folder / 'tokenizer.json'}: not a BPE tokenizer (GPT-OSS uses byte-level BPE)")
    added = tok.get("added_tokens") or []
    if not isinstance(added, list) or not all(
            isinstance(a, dict) and isinstance(a.get("id"), int) and isinstance(a.get("content"), str) for a in added):
        raise OssConvertError(f"{folder / 'tokenizer.json'}: added_tokens must be a list of {{id, content}} objects")
    by_id = {i: t for t, i in model["vocab"].items()}
    added_by_id = {}
    for a in added:
        by_id[a["id"]] = a["content"]
        added_by_id[a["id"]] = a
    if vocab_size is None:
        vocab_size = len(by_id)
    if by_id and max(by_id) >= vocab_size:
        raise OssConvertError(f"{folder}: tokenizer has id {max(by_id)} but vocab_size is {vocab_size}")

    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added_by_id:
            if added_by_id[i].get("special") or _looks_special(token):
                types.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(USER_DEFINED)
            tokens.append(token)
        else:
            tokens.append(token)
            types.append(NORMAL)

    vocab = Vocab(tokens, types, _merges(model.get("merges") or [], folder))
    _special_tokens(vocab, tok, folder, added, config if isinstance(config, dict) else {})
    return vocab


def _merges(merges: list, folder: Path) -> list[str]:
    if not merges:
        return []
    if not isinstance(merges, list):
        raise OssConvertError(f"{folder / 'tokenizer.json'}: merges must be a list")
    if all(isinstance(m, str) for m in merges):
        return list(merges)
    if all(isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m) for m in merges):
        # Pairs may contain spaces; GGUF's "a b" form encodes them as U+0120, as llama.cpp does.
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    raise OssConvertError(f"{folder / 'tokenizer.json'}: unknown merges format")


def _special_tokens(vocab: Vocab, tok: dict, folder: Path, added: list, config: dict) -> None:
    cfg_path = folder / "tokenizer_config.json"
    tok_config = _load_json(cfg_path) if cfg_path.is_file() else None
    if not isinstance(tok_config, dict):
        tok_config = None
    post = tok.get("post_processor")
    if isinstance(post, dict):
        processors = post.get("processors", [post])
        for processor in processors if isinstance(processors, list) else []:
            if isinstance(processor, dict) and processor.get("type") == "ByteLevel":
                vocab.add_special.setdefault("bos", False)
                vocab.add_special.setdefault("eos", False)
    if tok_config:
        template = tok_config.get("chat_template")
        if template is None:
            for name in ("chat_template.jinja", "chat_template.json"):
                path = folder / name
                if path.is_file():
                    text = path.read_text(encoding="utf-8")
                    template = text if name.endswith(".jinja") else json.loads(text).get("chat_template")
                    break
        if isinstance(template, str):
            vocab.chat_template = template
        for typ in SPECIAL_TYPES:
            add = tok_config.get(f"add_{typ}_token")
            if isinstance(add, bool) and typ not in vocab.add_special:
                vocab.add_special[typ] = add
            entry = tok_config.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if not isinstance(content, str):
                continue
            tid = next((a.get("id") for a in added if a.get("content") == content), None)
            if isinstance(tid, int):
                vocab.special_ids.setdefault(typ, tid)
    for typ in SPECIAL_TYPES:
        tid = config.get(f"{typ}_token_id")
        if isinstance(tid, int):
            vocab.special_ids.setdefault(typ, tid)


def tokenizer_json(vocab: dict[str, int], merges: list[list[str]], added: list[dict]) -> dict:
    """A Hugging Face tokenizer.json for a GPT-OSS-style byte-level BPE."""
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def added_tokens_decoder(added: list[dict]) -> dict:
    """tokenizer_config.json's view of the added tokens."""
    return {str(t["id"]): {k: t[k] for k in ADDED_TOKEN_FIELDS} for t in added}


# ------------------------------------------------------------------------ GGUF metadata

# Where GGUF keeps each special token id (tokenizer.ggml.<key>), by our short names
GGUF_SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                     "sep": "seperator_token_id", "pad": "padding_token_id", "cls": "cls_token_id",
                     "mask": "mask_token_id"}


def vocab_from_gguf(meta: dict, where: str) -> Vocab:
    """The vocabulary a GGUF carries in its tokenizer.ggml.* keys."""
    def checked(key: str, check, want: str, default=None):
        value = meta.get(key, default)
        if value is None or not check(value):
            raise OssConvertError(f"{where}: metadata {key} must be {want}")
        return value

    tokens = checked("tokenizer.ggml.tokens", lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
                   "a list of strings")
    types = checked("tokenizer.ggml.token_type", lambda v: isinstance(v, list) and len(v) == len(tokens)
                  and all(isinstance(t, int) for t in v), f"a list of {len(tokens)} integers")
    merges = checked("tokenizer.ggml.merges", lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
                   "a list of strings", [])
    vocab = Vocab(list(tokens), list(types), list(merges))
    for typ, key in GGUF_SPECIAL_KEYS.items():
        tid = meta.get(f"tokenizer.ggml.{key}")
        if tid is not None:
            vocab.special_ids[typ] = checked(f"tokenizer.ggml.{key}", lambda v: isinstance(v, int) and
                                           0 <= v < len(tokens), f"a token id below {len(tokens)}")
        add = meta.get(f"tokenizer.ggml.add_{typ}_token")
        if isinstance(add, bool):
            vocab.add_special[typ] = add
    template = meta.get("tokenizer.chat_template")
    vocab.chat_template = template if isinstance(template, str) else None
    return vocab


# ------------------------------------------------------------------------ HF tokenizer files

def tokenizer_files(vocab: Vocab) -> dict[str, str]:
    """tokenizer.json, tokenizer_config.json, generation_config.json (and chat_template.jinja)
    for a vocabulary: what a Hugging Face checkpoint of it carries."""
    by_token, added = {}, []
    for i, (tok, typ) in enumerate(zip(vocab.tokens, vocab.token_types)):
        if typ == UNUSED:
            continue
        if typ in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": typ == CONTROL})
        elif typ == NORMAL:
            by_token[tok] = i
    merges = [m.split(" ") for m in vocab.merges]
    tokenizer = tokenizer_json(by_token, merges, added)

    def content(typ):
        tid = vocab.special_ids.get(typ)
        return vocab.tokens[tid] if tid is not None else None

    tok_config = {"added_tokens_decoder": added_tokens_decoder(added),
                  "bos_token": content("bos"), "clean_up_tokenization_spaces": False, "eos_token": content("eos"),
                  "model_input_names": ["input_ids", "attention_mask"], "pad_token": content("pad"),
                  "tokenizer_class": "PreTrainedTokenizerFast"}
    generation = {"bos_token_id": vocab.special_ids.get("bos"), "do_sample": True,
                  "eos_token_id": vocab.special_ids.get("eos"), "pad_token_id": vocab.special_ids.get("pad")}
    files = {"tokenizer.json": json.dumps(tokenizer, indent=2, ensure_ascii=False) + "\n",
             "tokenizer_config.json": json.dumps(tok_config, indent=2) + "\n",
             "generation_config.json": json.dumps(generation, indent=2) + "\n"}
    if vocab.chat_template is not None:
        files["chat_template.jinja"] = vocab.chat_template
    return files
