"""Hugging Face Hub repo ids wherever a path is taken: `owner/name[@revision][:path]`; and,
through oss_convert.stores, the names of models the apps keep (`ollama:`, `lmstudio:`, ...).

`inspect` reads headers only, by HTTP range requests (kilobytes for a safetensors repo, the
header's few MB for a GGUF). The other commands download what they need into the standard
Hugging Face cache (or --local-dir), through huggingface_hub: resumable, with progress,
HF_TOKEN and HF_HUB_OFFLINE honoured.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .checkpoint import Checkpoint, gguf_checkpoint, open_checkpoint, open_safetensors_files
from .errors import OssConvertError
from .files.gguf import gguf_models, read_gguf, split_names
from .stores import locate, store_name

SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^:@]+))?(?::(?P<path>.+))?$")
# What a HF-layout conversion needs; never original/ or metal/ unless asked for.
HF_PATTERNS = ["*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
               "chat_template.json"]
SKIPPED = ["original/*", "metal/*"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json", "special_tokens_map.json"]


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None
    path: str | None  # a file (a .gguf) or a folder (original) inside the repo

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "") + (f":{self.path}" if self.path else "")


def parse(spec) -> HubRef | None:
    """A Hub reference, or None where `spec` is (or names) a local path.

    A local path wins, and so does anything whose folder exists here (`models/typo` is a
    mistyped path, not a repo of a user called `models`)."""
    text = str(spec)
    if text.startswith((".", "/", "~")) or Path(text).exists() or store_name(text):
        return None
    owner_folder = Path(text.split(":")[0].split("@")[0]).parent
    if owner_folder != Path(".") and owner_folder.is_dir():
        return None
    m = SPEC.match(text)
    if not m:
        return None
    _quiet_hub_logs()
    return HubRef(m["repo"], m["rev"], m["path"].strip("/") if m["path"] else None)


def _quiet_hub_logs() -> None:
    """huggingface_hub logs each retry as a warning; our errors say what went wrong in one line."""
    from huggingface_hub.utils import logging
    logging.set_verbosity_error()


@contextlib.contextmanager
def hub_errors(ref: HubRef):
    """The Hub's failures as one clear line each."""
    from huggingface_hub import errors
    try:
        yield
    except errors.GatedRepoError:
        raise OssConvertError(f"{ref.repo_id}: gated or private repo; accept its terms on the Hub and set HF_TOKEN") \
            from None
    except errors.RepositoryNotFoundError:
        raise OssConvertError(f"{ref.repo_id}: no such local path, and no such repo on the Hub (or it is private: "
                              "set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise OssConvertError(f"{ref.repo_id}: no revision {ref.revision!r}") from None
    except errors.EntryNotFoundError:
        raise OssConvertError(f"{ref}: no such file in the repo") from None
    except (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError):
        raise OssConvertError(f"{ref}: not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE is "
                              "set, or there is no network)") from None
    except errors.HfHubHTTPError as e:
        raise OssConvertError(f"{ref}: the Hub answered {str(e).splitlines()[0]}") from None
    except OSError as e:  # connection errors
        raise OssConvertError(f"{ref}: cannot reach the Hub ({e})") from None
    except Exception as e:  # httpx transport errors do not derive from OSError
        if type(e).__module__.startswith(("httpx", "httpcore")):
            raise OssConvertError(f"{ref}: cannot reach the Hub ({type(e).__name__}: {e})") from None
        raise


def _api():
    from huggingface_hub import HfApi
    return HfApi()


def repo_files(ref: HubRef) -> list[str]:
    with hub_errors(ref):
        return _api().list_repo_files(ref.repo_id, revision=ref.revision)


def _ggufs(files: list[str], ref: HubRef) -> list[str]:
    """The GGUF models of the repo (a split model once, by its first part), or the one named."""
    if ref.path and ref.path.endswith(".gguf"):
        if ref.path not in files:
            raise OssConvertError(f"{ref}: no such file in the repo")
        return [split_names(ref.path)[0]]
    return gguf_models(files)


# ------------------------------------------------------------------------------ downloads

def local_path(spec) -> Path:
    """The local path `spec` names: itself, or where an app's store keeps the model named."""
    located = locate(spec)
    return Path(spec) if located is None else located


def download(spec, local_dir: Path | None = None) -> Path:
    """A local path for `spec`: itself if local, else the repo's needed files downloaded."""
    ref = parse(spec)
    if ref is None:
        return local_path(spec)
    from huggingface_hub import constants, hf_hub_download, snapshot_download

    def file(name: str) -> Path:
        return Path(hf_hub_download(ref.repo_id, name, revision=ref.revision, local_dir=local_dir))

    def files_matching(allow: list[str], ignore: list[str] | None = None) -> Path:
        return Path(snapshot_download(ref.repo_id, allow_patterns=allow, ignore_patterns=ignore,
                                      revision=ref.revision, local_dir=local_dir))
    if constants.HF_HUB_OFFLINE:  # no listing: take what the cache holds
        with hub_errors(ref):
            if ref.path and ref.path.endswith(".gguf"):
                return file(ref.path)
            if ref.path:
                return files_matching([f"{ref.path}/*"] + TOKENIZER_FILES) / ref.path
            return files_matching(HF_PATTERNS, SKIPPED)
    files = repo_files(ref)
    with hub_errors(ref):
        ggufs = _ggufs(files, ref)
        if ref.path and ref.path.endswith(".gguf") or (not ref.path and ggufs and not any(
                f.endswith(".safetensors") for f in files)):
            if len(ggufs) != 1 and not (ref.path and ref.path.endswith(".gguf")):
                raise OssConvertError(f"{ref}: the repo has {len(ggufs)} GGUF files; name one as "
                                      f"{ref.repo_id}:FILE.gguf ({', '.join(ggufs[:4])}...)")
            paths = [file(name) for name in split_names(ggufs[0])]
            return paths[0]
        if ref.path:  # a folder such as original/, plus the tokenizer at the root
            return files_matching([f"{ref.path}/*"] + TOKENIZER_FILES) / ref.path
        if not any(fnmatch.fnmatch(f, "*.safetensors") and "/" not in f for f in files):
            raise OssConvertError(f"{ref}: not a GPT-OSS checkpoint (no safetensors or GGUF files at its root)")
        return files_matching(HF_PATTERNS, SKIPPED)


# ------------------------------------------------------------------------------ headers only

class RemoteFile:
    """Byte ranges of a file in a Hub repo, fetched with HTTP range requests."""

    first_read = 64 << 10  # a GGUF's header grows from here by 4x; gpt-oss's tokenizer makes it a few MB

    def __init__(self, ref: HubRef, path: str):
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        self.ref, self.path_in_repo = ref, path
        self.bytes_read = 0  # what the range requests transferred
        self.name = f"{ref.repo_id}/{path}"
        self.url = hf_hub_url(ref.repo_id, path, revision=ref.revision)
        with hub_errors(HubRef(ref.repo_id, ref.revision, path)):
            size = get_hf_file_metadata(self.url).size
        if size is None:
            raise OssConvertError(f"{self.name}: the Hub does not say the file's size")
        self.size: int = size

    def read(self, offset: int, n: int) -> bytes:
        from huggingface_hub.utils import build_hf_headers, get_session
        if n <= 0:
            return b""
        headers = {**build_hf_headers(), "Range": f"bytes={offset}-{offset + n - 1}"}
        with hub_errors(self.ref):
            response = get_session().get(self.url, headers=headers, follow_redirects=True)
            response.raise_for_status()
        self.bytes_read += len(response.content)
        return response.content[:n]


def open_headers_or_models(spec) -> Checkpoint | tuple[HubRef, list[str]]:
    """What `inspect` looks at, headers only (nothing of the weights is read, nothing of a
    remote repo downloaded but its config.json), from one listing of a remote repo: the
    checkpoint, or for a repo of several GGUF models (each quantization a file, a split one
    counted once) the repo and each model's first part."""
    ref = parse(spec)
    if ref is None:
        return open_checkpoint(local_path(spec))
    files = repo_files(ref)
    models = _gguf_models(ref, files)
    return models if models is not None else open_remote(spec, files)


def open_downloaded(spec, local_dir: Path | None = None) -> Checkpoint:
    """A checkpoint whose data can be read: local, or the repo's needed files downloaded first."""
    return open_checkpoint(download(spec, local_dir))


def open_remote(spec, files: list[str] | None = None) -> Checkpoint:
    """A header-only checkpoint for a Hub repo: nothing of the weights is downloaded. `files`:
    the repo's listing, where the caller has it already."""
    ref = parse(spec)
    if ref is None:
        raise OssConvertError(f"{spec}: not a Hub repo id")
    files = repo_files(ref) if files is None else files
    ggufs = _ggufs(files, ref)
    if ggufs and (ref.path or not any(f.endswith(".safetensors") for f in files)):
        if len(ggufs) != 1:
            raise OssConvertError(f"{ref}: the repo has {len(ggufs)} GGUF models; name one as {ref.repo_id}:FILE.gguf")
        return open_remote_gguf(ref, ggufs[0])[0]
    folder = ref.path or ""
    prefix = f"{folder}/" if folder else ""
    shards = sorted(f for f in files if f.startswith(prefix) and f.endswith(".safetensors")
                    and "/" not in f[len(prefix):])
    if not shards:
        raise OssConvertError(f"{ref}: not a GPT-OSS checkpoint (no safetensors files)")
    config = None
    if prefix + "config.json" in files:
        from huggingface_hub import hf_hub_download
        with hub_errors(ref):
            config = Path(hf_hub_download(ref.repo_id, prefix + "config.json", revision=ref.revision))
    return open_safetensors_files(str(ref), PurePosixPath(str(ref)), [RemoteFile(ref, s) for s in shards], config)


def open_remote_gguf(ref: HubRef, first_part: str) -> tuple[Checkpoint, list[RemoteFile]]:
    """A GGUF model of a repo (every part of a split one) from its headers, and the remote parts
    (their sizes, and the bytes their headers took)."""
    parts: list[RemoteFile] = []

    def open_part(path) -> RemoteFile:
        parts.append(RemoteFile(ref, str(path)))
        return parts[-1]
    return gguf_checkpoint(f"{ref.repo_id}:{first_part}", read_gguf(first_part, open_part=open_part)), parts


def _gguf_models(ref: HubRef, files: list[str]) -> tuple[HubRef, list[str]] | None:
    """A repo (not a file in it) without safetensors and with several GGUF models, or None."""
    if ref.path or any(f.endswith(".safetensors") for f in files):
        return None
    models = _ggufs(files, ref)
    return (ref, models) if len(models) > 1 else None


# ------------------------------------------------------------------------------ quantizations of a base model

@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str | None  # the LFS object's sha256 (the file's content), where the Hub records one


def quantization_repos(base_model: str, limit: int | None) -> list[dict]:
    """The model repos the Hub records as quantizations of `base_model` (its base_model
    relation), most downloaded first: id, author and downloads of each."""
    ref = HubRef(base_model, None, None)
    _quiet_hub_logs()
    with hub_errors(ref):
        models = _api().list_models(filter=f"base_model:quantized:{base_model}", sort="downloads", limit=limit)
        found = [{"repo": m.id, "author": m.author or m.id.split("/")[0], "downloads": m.downloads or 0}
                 for m in models]
    return sorted(found, key=lambda m: -m["downloads"])


def repo_files_with_hashes(repo_id: str) -> list[HubFile]:
    """Every file of a repo with its size and content sha256 (one request)."""
    from huggingface_hub import errors
    ref = HubRef(repo_id, None, None)
    with hub_errors(ref):
        try:
            info = _api().model_info(repo_id, files_metadata=True)
        except errors.RepositoryNotFoundError:
            raise OssConvertError(f"{repo_id}: the Hub has no such repo now (removed, renamed or made "
                                  "private since it was listed)") from None
    return [HubFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []]
