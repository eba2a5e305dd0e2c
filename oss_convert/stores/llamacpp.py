"""llama.cpp's own download cache: flat `.gguf` files in `fs_get_cache_directory()` (what
`-dr` and `-mu` download, and what `-hf` downloaded before llama.cpp moved it to the Hugging
Face layout: `OWNER_REPO_FILE.gguf`), as common/common.cpp of llama.cpp 0.3.36 computes it:
`LLAMA_CACHE`, else `$XDG_CACHE_HOME/llama.cpp`, else `~/.cache/llama.cpp` (macOS:
`~/Library/Caches/llama.cpp`; Windows: `%LOCALAPPDATA%/llama.cpp`). `-hf` downloads of 0.3.36
are in the Hub layout (see hfcache)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import OssConvertError
from ..files.gguf import gguf_models
from .similar import hint


def cache_dir() -> Path:
    if os.environ.get("LLAMA_CACHE"):
        return Path(os.environ["LLAMA_CACHE"]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "llama.cpp"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llama.cpp"
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "llama.cpp"


def list_models() -> list[tuple[str, Path]]:
    folder = cache_dir()
    if not folder.is_dir():
        return []
    return [(name, folder / name) for name in gguf_models(p.name for p in folder.glob("*.gguf") if p.is_file())]


def resolve_flat(text: str) -> Path | None:
    path = cache_dir() / text
    return path if "/" not in text and path.is_file() else None


def not_found(text: str, held: list[str]) -> OssConvertError:
    return OssConvertError(f"llamacpp:{text}: no such model in llama.cpp's cache ({cache_dir()})" + hint(text, held))
