"""Where oss-convert keeps what it can make again (compiled kernels, census rows, Ollama views):
`$XDG_CACHE_HOME/oss-convert`, else `~/.cache/oss-convert`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "oss-convert" / name
