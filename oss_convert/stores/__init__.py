"""Where the apps keep models, as names a command takes wherever it takes a path.

- `ollama:[HOST/][NAMESPACE/]MODEL[:TAG]`: Ollama's store (manifests and blobs);
- `lmstudio:PUBLISHER/REPO[/FILE.gguf]`: LM Studio's models folder;
- `llamacpp:FILE.gguf` or `llamacpp:OWNER/REPO[:FILE.gguf]`: llama.cpp's download cache;
- `hf-cache:OWNER/REPO[:FILE.gguf]`: the Hugging Face cache, with no network.
Each resolves to a local path that opens as any checkpoint does; `scan` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import OssConvertError
from . import hfcache, llamacpp, lmstudio, ollama

PREFIXES = ("ollama", "lmstudio", "llamacpp", "hf-cache")
APPS = {"ollama": "Ollama", "lmstudio": "LM Studio", "llamacpp": "llama.cpp", "hf-cache": "Hugging Face cache"}


def store_name(spec) -> tuple[str, str] | None:
    """(prefix, rest) where `spec` is a store name, else None. A path that exists wins."""
    text = str(spec)
    prefix, sep, rest = text.partition(":")
    if not sep or prefix not in PREFIXES or Path(text).exists():
        return None
    return prefix, rest


def locate(spec) -> Path | None:
    """The local path a store name stands for (None where `spec` is not one)."""
    named = store_name(spec)
    if named is None:
        return None
    prefix, rest = named
    if not rest:
        raise OssConvertError(f"{spec}: name a model after '{prefix}:'")
    if prefix == "ollama":
        return ollama.resolve(rest)
    if prefix == "lmstudio":
        return lmstudio.resolve(rest)
    if prefix == "hf-cache":
        return hfcache.resolve(rest, hfcache.hf_cache_dir(), prefix)
    flat = llamacpp.resolve_flat(rest)
    if flat is not None:
        return flat
    hub_layout = hfcache.llama_cache_dir()
    if "/" in rest and hub_layout is not None:
        return hfcache.resolve(rest, hub_layout, prefix)
    raise llamacpp.not_found(rest, [name for name, _ in llamacpp.list_models()])


@dataclass(frozen=True)
class StoredModel:
    app: str  # the prefix: ollama, lmstudio, llamacpp, hf-cache
    name: str  # the full name a command takes
    path: Path | None  # None where the entry cannot be opened (`problem` says why)
    problem: str | None = None


def scan() -> list[StoredModel]:
    """Every model every store holds on this machine, by name (not yet opened)."""
    found = []
    for ollama_name, path, models_dir in ollama.manifest_paths():
        name = f"ollama:{ollama_name}"
        try:
            found.append(StoredModel("ollama", name, ollama.model_path(
                ollama.read_manifest(path, ollama_name, models_dir))))
        except OssConvertError as e:
            found.append(StoredModel("ollama", name, None, str(e)))
    found += [StoredModel("lmstudio", f"lmstudio:{name}", path) for name, path in lmstudio.list_models()]
    found += [StoredModel("llamacpp", f"llamacpp:{name}", path) for name, path in llamacpp.list_models()]
    caches = [("hf-cache", hfcache.hf_cache_dir())]
    llama_hub_cache = hfcache.llama_cache_dir()
    if llama_hub_cache is not None:
        caches.append(("llamacpp", llama_hub_cache))
    for prefix, cache in caches:
        found += [StoredModel(prefix, f"{prefix}:{m.name}", m.path) for m in hfcache.list_models(cache)]
    return found
