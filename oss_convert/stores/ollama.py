"""Ollama's model store: manifests naming content-addressed blobs, as Ollama's own source lays them out.

`$OLLAMA_MODELS` (else `~/.ollama/models`, else the Linux service's `/usr/share/ollama/.ollama/models`)
holds `manifests/HOST/NAMESPACE/MODEL/TAG` (JSON: schemaVersion 2, a config layer and layers of
`digest`, `mediaType`, `size`) and `blobs/sha256-HEX`, each blob the bytes whose sha256 is HEX
(envconfig.Models, manifest/paths.go, types/model/name.go in ollama/ollama). A model is either
- one GGUF layer, `application/vnd.ollama.image.model` (what `ollama pull gpt-oss:20b` gives), or
- per-tensor layers, `application/vnd.ollama.image.tensor` with the tensor's name in `name` (or in
  the media type's `name=` parameter, the form manifest.go once documented), each blob a
  safetensors file (x/create/writer.go), with `application/vnd.ollama.image.json` layers for
  config.json and the tokenizer's files.
The second form is opened as a safetensors checkpoint through a folder of links to the blobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import OssConvertError
from ..files.atomic import atomic_path
from ..user_cache import cache_folder
from .similar import hint

DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MODEL_LAYER = "application/vnd.ollama.image.model"
TENSOR_LAYER = "application/vnd.ollama.image.tensor"
JSON_LAYER = "application/vnd.ollama.image.json"
DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
BLOB_NAME = re.compile(r"^sha256-([0-9a-f]{64})$")
PART = re.compile(r"^[A-Za-z0-9][\w.-]{0,127}$")
MAX_MANIFEST_BYTES = 4 << 20


def model_dirs() -> list[Path]:
    """Where Ollama keeps models on this machine, in the order Ollama itself would look."""
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.environ["OLLAMA_MODELS"]).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> OllamaName:
        """`[HOST/][NAMESPACE/]MODEL[:TAG]`, the defaults filled in as Ollama's ParseName does."""
        rest, tag = text, DEFAULT_TAG
        if rest.rfind(":") > rest.rfind("/"):
            rest, tag = rest.rsplit(":", 1)
        parts = rest.split("/")
        if len(parts) > 3:
            raise OssConvertError(f"ollama:{text}: not an Ollama model name ([HOST/][NAMESPACE/]MODEL[:TAG])")
        host, namespace, model = [DEFAULT_HOST, DEFAULT_NAMESPACE][:3 - len(parts)] + parts
        for part in (host, namespace, model, tag):
            if not PART.match(part):
                raise OssConvertError(f"ollama:{text}: not an Ollama model name ([HOST/][NAMESPACE/]MODEL[:TAG])")
        return cls(host, namespace, model, tag)

    def __str__(self) -> str:
        """The short form `ollama list` shows."""
        front = "" if self.host == DEFAULT_HOST else f"{self.host}/"
        front += "" if self.namespace == DEFAULT_NAMESPACE and not front else f"{self.namespace}/"
        return f"{front}{self.model}:{self.tag}"

    def relative(self) -> Path:
        return Path(self.host, self.namespace, self.model, self.tag)


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str  # the hex sha256
    size: int
    name: str | None  # a tensor's or a config file's name

    @property
    def kind(self) -> str:
        return self.media_type.split(";")[0].strip()


@dataclass(frozen=True)
class Manifest:
    name: OllamaName
    path: Path
    models_dir: Path
    layers: list[Layer]

    def blob(self, layer: Layer) -> Path:
        return self.models_dir / "blobs" / f"sha256-{layer.digest}"

    def gguf_layers(self) -> list[Layer]:
        return [lay for lay in self.layers if lay.kind == MODEL_LAYER]

    def tensor_layers(self) -> list[Layer]:
        return [lay for lay in self.layers if lay.kind == TENSOR_LAYER]


def _media_parameter(media_type: str, key: str) -> str | None:
    for part in media_type.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k == key:
            return v.strip()
    return None


def read_manifest(path: Path, name: OllamaName, models_dir: Path) -> Manifest:
    """A manifest, treated as hostile: every field checked, one error naming the file."""
    def bad(why: str) -> OssConvertError:
        return OssConvertError(f"{path}: not an Ollama manifest ({why})")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise bad(f"larger than {MAX_MANIFEST_BYTES >> 20} MB")
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise bad(f"{type(e).__name__}: {e}"[:200]) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("layers"), list):
        raise bad("no layers list")
    layers = []
    for entry in raw["layers"] + ([raw["config"]] if isinstance(raw.get("config"), dict) else []):
        if not isinstance(entry, dict):
            raise bad("a layer is not an object")
        media, digest, size = entry.get("mediaType"), entry.get("digest"), entry.get("size")
        m = DIGEST.match(digest) if isinstance(digest, str) else None
        if not isinstance(media, str) or m is None or not isinstance(size, int) or isinstance(size, bool) \
                or size < 0:
            raise bad(f"layer {str(digest)[:80]!r} lacks a media type, a sha256 digest or a size")
        layer_name = entry.get("name") if isinstance(entry.get("name"), str) else _media_parameter(media, "name")
        layers.append(Layer(media, m[1], size, layer_name))
    return Manifest(name, path, models_dir, layers)


def find_manifest(text: str) -> Manifest:
    """The manifest of `ollama:TEXT`, from the first store that holds it."""
    name = OllamaName.parse(text)
    searched = []
    for models in model_dirs():
        path = models / "manifests" / name.relative()
        if path.is_file():
            return read_manifest(path, name, models)
        searched.append(str(models))
    held = [str(n) for n, _, _ in manifest_paths()]
    raise OssConvertError(f"ollama:{text}: no such model in Ollama's store (searched {', '.join(searched)})"
                          + hint(str(name), held))


def manifest_paths() -> list[tuple[OllamaName, Path, Path]]:
    """(name, manifest file, models folder) of every manifest in every store."""
    found = []
    for models in model_dirs():
        root = models / "manifests"
        if not root.is_dir():
            continue
        for path in sorted(root.glob("*/*/*/*")):
            if path.is_file():
                found.append((OllamaName(*path.relative_to(root).parts), path, models))
    return found


def check_blob(manifest: Manifest, layer: Layer) -> Path:
    """The blob of a layer, present and of the size the manifest says (its digest is checked
    where its bytes are read whole: verify)."""
    blob = manifest.blob(layer)
    if not blob.is_file():
        raise OssConvertError(f"ollama:{manifest.name}: layer sha256:{layer.digest[:12]} points at a missing blob "
                              f"({blob})")
    size = blob.stat().st_size
    if size != layer.size:
        raise OssConvertError(f"{blob}: blob holds {size:,} bytes, its manifest says {layer.size:,} "
                              "(cut short or replaced)")
    return blob


def resolve(text: str) -> Path:
    """A local path for `ollama:TEXT`: the GGUF blob, or a folder of links to the per-tensor blobs."""
    return model_path(find_manifest(text))


def model_path(manifest: Manifest) -> Path:
    ggufs = manifest.gguf_layers()
    if ggufs:
        return check_blob(manifest, ggufs[0])
    if manifest.tensor_layers():
        return tensor_view(manifest)
    raise OssConvertError(f"ollama:{manifest.name}: {manifest.path} has no model layer "
                          f"({MODEL_LAYER}) and no tensor layers ({TENSOR_LAYER})")


def tensor_view(manifest: Manifest) -> Path:
    """A checkpoint folder for a per-tensor manifest: `config.json` and the tokenizer's files,
    and each tensor blob as a safetensors shard, all links to the blobs (nothing copied). Made
    once per manifest content; its blobs are checked each time."""
    links: dict[str, Path] = {}
    for i, layer in enumerate(manifest.tensor_layers()):
        links[f"tensors-{i:05d}.safetensors"] = check_blob(manifest, layer)
    for layer in manifest.layers:
        if layer.kind == JSON_LAYER and layer.name and re.fullmatch(r"[\w.-]+\.json", layer.name):
            links[layer.name] = check_blob(manifest, layer)
    digest = hashlib.sha256(manifest.path.read_bytes()).hexdigest()[:16]
    # the folder's name is the model's: what general.name is made from
    view = cache_folder("ollama-views") / digest / manifest.name.model
    if view.is_dir():
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(view, directory=True) as tmp:
        for link, blob in links.items():
            (tmp / link).symlink_to(blob.resolve())
    return view


def named_blobs(paths) -> list[tuple[Path, str]]:
    """(blob, the sha256 its name says) of each file among `paths` that is an Ollama blob or a
    link to one."""
    found = []
    for path in paths:
        blob = Path(path).resolve()
        m = BLOB_NAME.match(blob.name)
        if m:
            found.append((blob, m[1]))
    return found


def check_digests(blobs: list[tuple[Path, str]]) -> None:
    """Hash each blob against its digest; an error names the first that does not match."""
    for blob, want in blobs:
        sha = hashlib.sha256()
        try:
            with open(blob, "rb") as f:
                while chunk := f.read(1 << 24):
                    sha.update(chunk)
        except OSError as e:
            raise OssConvertError(f"{blob}: cannot read ({e.strerror or e})") from None
        if sha.hexdigest() != want:
            raise OssConvertError(f"{blob}: blob's bytes do not match its digest (sha256 "
                                  f"{sha.hexdigest()[:16]}..., named sha256:{want[:16]}...): the blob is corrupt")
