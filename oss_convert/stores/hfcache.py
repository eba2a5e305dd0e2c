"""Hub caches in the Hugging Face layout (`models--OWNER--REPO/snapshots/COMMIT/...`): the
Hugging Face cache, and llama.cpp's `-hf` cache, which 0.3.36 keeps in the same layout
(common/hf-cache.cpp: `LLAMA_CACHE`, else the Hugging Face cache itself). Read through
huggingface_hub's `scan_cache_dir`, never by walking its folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import OssConvertError
from ..files.gguf import gguf_models, split_names
from .similar import hint


@dataclass(frozen=True)
class CachedModel:
    name: str  # OWNER/REPO, or OWNER/REPO:FILE.gguf
    path: Path  # the snapshot folder, or the file in it
    size: int


def hf_cache_dir() -> Path:
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def llama_cache_dir() -> Path | None:
    """llama.cpp's own `-hf` cache, where it is not the Hugging Face cache."""
    value = os.environ.get("LLAMA_CACHE")
    return Path(value).expanduser() if value else None


def list_models(cache: Path) -> list[CachedModel]:
    """Each GGUF model (a split one once) and each safetensors checkpoint at a snapshot's root,
    from the newest revision of each model repo."""
    if not cache.is_dir():
        return []
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda r: r.last_modified)
        files = {str(f.file_path.relative_to(revision.snapshot_path)): f for f in revision.files}
        for name in gguf_models(files):
            parts = [n for n in split_names(name) if n in files]
            found.append(CachedModel(f"{repo.repo_id}:{name}", revision.snapshot_path / name,
                                     sum(files[n].size_on_disk for n in parts)))
        shards = [f for f in files if f.endswith(".safetensors") and "/" not in f]
        if shards and "config.json" in files:
            found.append(CachedModel(repo.repo_id, revision.snapshot_path, sum(files[n].size_on_disk for n in shards)))
    return found


def resolve(text: str, cache: Path, prefix: str) -> Path:
    """The path of `PREFIX:OWNER/REPO[:FILE]` in `cache`, with no network: the file named, or
    the repo's one model."""
    models = list_models(cache)
    exact = [m for m in models if m.name == text]
    repo = text.split(":")[0]
    held = [m for m in models if m.name.split(":")[0] == repo]
    if exact:
        return exact[0].path
    if ":" not in text and len(held) == 1:
        return held[0].path
    if held:
        names = ", ".join(m.name for m in held[:5])
        why = f"not in the cache, which holds {names}" if ":" in text else \
            f"the cache holds {len(held)} models of {repo}; name one ({names})"
        raise OssConvertError(f"{prefix}:{text}: {why}")
    raise OssConvertError(f"{prefix}:{text}: no such model in {cache}" + hint(text, [m.name for m in models]))
