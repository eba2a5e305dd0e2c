"""The apps' model stores, laid out on disk as each app lays them out, for tests.

- Ollama (ollama/ollama: envconfig.Models, manifest/{manifest,layer,paths}.go, types/model/name.go,
  x/create/writer.go): `models/manifests/HOST/NAMESPACE/MODEL/TAG` (schemaVersion 2 JSON), blobs
  `models/blobs/sha256-HEX` holding the bytes of that digest; a GGUF `image.model` layer, or
  per-tensor `image.tensor` layers (each blob a safetensors file, its tensor named in `name`) with
  `image.json` layers for config.json and the tokenizer.
- LM Studio (lmstudio.ai/docs, "Import Models"): `~/.lmstudio/models/PUBLISHER/REPO/FILE.gguf`.
- llama.cpp 0.3.36 (common/common.cpp fs_get_cache_directory, arg.cpp): flat files in
  `LLAMA_CACHE`, named `OWNER_REPO_FILE.gguf`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from oss_convert.files.safetensors import SafetensorsWriteTensor, read_header, write_file

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"


class OllamaStore:
    def __init__(self, models: Path):
        self.models = models
        (models / "blobs").mkdir(parents=True, exist_ok=True)

    def blob(self, data: bytes | Path, media_type: str, name: str | None = None) -> dict:
        raw = data.read_bytes() if isinstance(data, Path) else data
        digest = hashlib.sha256(raw).hexdigest()
        (self.models / "blobs" / f"sha256-{digest}").write_bytes(raw)
        layer = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(raw)}
        if name is not None:
            layer["name"] = name
        return layer

    def manifest(self, name: str, layers: list[dict], host: str = "registry.ollama.ai",
                 namespace: str = "library") -> Path:
        model, tag = name.split(":") if ":" in name else (name, "latest")
        config = self.blob(json.dumps({"model_format": "gguf", "model_family": "gpt-oss"}).encode(), DOCKER_CONFIG)
        path = self.models / "manifests" / host / namespace / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest."
                                    "v2+json", "config": config, "layers": layers}))
        return path

    def add_gguf(self, name: str, gguf: Path, **where) -> Path:
        """What `ollama pull` or `ollama create` from a GGUF leaves: the model layer, a template
        and parameters."""
        layers = [self.blob(gguf, "application/vnd.ollama.image.model"),
                  self.blob(b"{{ .Prompt }}", "application/vnd.ollama.image.template"),
                  self.blob(b'{"temperature": 1}', "application/vnd.ollama.image.params")]
        return self.manifest(name, layers, **where)

    def add_tensors(self, name: str, checkpoint: Path, scratch: Path) -> Path:
        """A safetensors checkpoint as per-tensor layers: each logical tensor (an MXFP4 pair
        together) one safetensors blob, every .json file as a JSON layer (chat_template.jinja
        is not kept: Ollama reads it for capabilities only)."""
        scratch.mkdir(parents=True, exist_ok=True)
        layers = []
        for shard in sorted(checkpoint.glob("*.safetensors")):
            header = read_header(shard)
            groups: dict[str, list] = {}
            for t in header.tensors.values():
                groups.setdefault(t.name.removesuffix("_blocks").removesuffix("_scales"), []).append(t)
            for base, members in groups.items():
                out = scratch / f"{base}.safetensors"
                with open(out, "wb") as f:
                    write_file(f, [SafetensorsWriteTensor(t.name, t.dtype, t.shape,
                                                          lambda t=t: np.ascontiguousarray(t.array()).view(np.uint8))
                                   for t in members], {"format": "pt"})
                layers.append(self.blob(out, "application/vnd.ollama.image.tensor", base))
        for file in sorted(checkpoint.glob("*.json")):  # every .json but the index, as x/create/pipeline.go
            if file.name != "model.safetensors.index.json":
                layers.append(self.blob(file, "application/vnd.ollama.image.json", file.name))
        return self.manifest(name, layers)


def lmstudio_add(models: Path, publisher: str, repo: str, gguf: Path, name: str | None = None) -> Path:
    folder = models / publisher / repo
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(gguf, folder / (name or gguf.name)))


def llama_cache_add(cache: Path, owner: str, repo: str, gguf: Path, file: str) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(gguf, cache / f"{owner}_{repo}_{file}"))


def other_gguf(path: Path) -> Path:
    """A small GGUF of another architecture (llama), as the stores also hold."""
    import gguf
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
