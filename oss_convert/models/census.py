"""A census of a base model's quantizations on the Hub: every GGUF model of every repo the Hub
records as a quantization of it, surveyed by its headers, ranked, with files that are the
same bytes under another name shown once.

Headers are read by HTTP range requests, a few at a time, and each model's row is kept on disk
under the sha256 of its files (the Hub's LFS hash: the content itself), so a second census
reads only what is new. A repo or file that fails becomes a row saying why; the census goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..checkpoint.summary import storage_summary
from ..errors import OssConvertError
from ..files.atomic import atomic_path
from ..files.gguf import gguf_models, split_names
from ..hub import HubFile, HubRef, open_remote_gguf, quantization_repos, repo_files_with_hashes
from ..text import human_bytes, table
from ..user_cache import cache_folder

CONCURRENT_READS = 6
CACHE_VERSION = 1


class RowCache:
    """Survey rows by the content hashes of a model's files."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            row = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return row if isinstance(row, dict) and row.get("cache_version") == CACHE_VERSION else None

    def put(self, key: str, row: dict) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(self._path(key), force=True) as tmp:
                tmp.write_text(json.dumps(row | {"cache_version": CACHE_VERSION}))
        except (OSError, OssConvertError):
            pass  # a cache that cannot be written only costs a re-read next time


def _models_of(files: list[HubFile]) -> list[tuple[str, list[HubFile]]]:
    """(first part, every part) of each GGUF model in a repo's files."""
    by_path = {f.path: f for f in files}
    return [(first, [by_path[p] for p in split_names(first) if p in by_path]) for first in gguf_models(by_path)]


def _key(parts: list[HubFile]) -> str | None:
    hashes = [p.sha256 for p in parts]
    return "-".join(h for h in hashes if h) if all(hashes) else None


def _survey(repo: str, first: str, parts: list[HubFile]) -> dict:
    """A model's row from its headers (every part of a split model)."""
    expected = len(split_names(first))
    if len(parts) != expected:
        return {"error": f"split model with {len(parts)} of its {expected} parts in the repo"}
    try:
        ckpt, remote = open_remote_gguf(HubRef(repo, None, None), first)
    except OssConvertError as e:
        return {"error": str(e), "header_bytes_read": 0}
    read = sum(p.bytes_read for p in remote)
    if ckpt.config is None:
        return {"not_gpt_oss": True, "header_bytes_read": read}
    summary = storage_summary(ckpt)
    return summary | {"file_type": ckpt.metadata.get("general.file_type"), "header_bytes_read": read}


def census_document(base_model: str, limit: int | None = None, cache: RowCache | None = None,
                    progress: Callable | None = None) -> dict:
    cache = cache or RowCache(cache_folder("census"))
    repos = quantization_repos(base_model, limit)
    failed_repos, jobs = [], []
    for repo in repos:
        try:
            files = repo_files_with_hashes(repo["repo"])
        except OssConvertError as e:
            failed_repos.append(repo | {"error": str(e)})
            continue
        jobs += [(repo, first, parts) for first, parts in _models_of(files)]

    def key_of(job) -> str:
        repo, first, parts = job
        return _key(parts) or f"{repo['repo']}:{first}"

    unique: dict[str, tuple] = {}
    for job in jobs:  # the same bytes under several names are surveyed once
        unique.setdefault(key_of(job), job)

    def run(key: str) -> tuple[dict, bool]:
        repo, first, parts = unique[key]
        cached = cache.get(key) if _key(parts) else None
        if cached is not None:
            return cached | {"header_bytes_read": 0}, True
        row = _survey(repo["repo"], first, parts)
        if _key(parts) and "error" not in row:
            cache.put(key, row)
        return row, False

    with ThreadPoolExecutor(CONCURRENT_READS) as pool:
        mapped = pool.map(run, list(unique))
        results = dict(zip(unique, progress(mapped, total=len(unique)) if progress else mapped))
    rows: dict[str, dict] = {}
    errors, skipped = [], 0
    bytes_read = sum(row.get("header_bytes_read", 0) for row, _ in results.values())
    from_cache = sum(cached for _, cached in results.values())
    for job in jobs:
        repo, first, parts = job
        key = key_of(job)
        row, _ = results[key]
        name = f"{repo['repo']}:{first}"
        if "error" in row:
            errors.append({"model": name, "error": row["error"]})
            continue
        if row.get("not_gpt_oss"):
            skipped += 1
            continue
        if key in rows:  # the same bytes under another name
            rows[key]["same_bytes_as"].append(name)
            continue
        rows[key] = {"model": name, "publisher": repo["author"], "downloads": repo["downloads"],
                     "parts": len(parts), "bytes": sum(p.size for p in parts), "same_bytes_as": [],
                     **{k: v for k, v in row.items() if k not in ("header_bytes_read", "cache_version")}}
    ranked = sorted(rows.values(), key=lambda r: (not r["experts_mxfp4"], -r["bytes"], r["model"]))
    return {"base_model": base_model, "repos": len(repos), "failed_repos": failed_repos,
            "models": ranked, "unreadable_models": errors, "other_models_skipped": skipped,
            "header_bytes_read": bytes_read, "models_from_cache": from_cache,
            "ranking": "experts MXFP4 (FP4 can be intact) first, then by size, largest (most bits) first",
            "note": "headers only; oss-convert verify SOURCE REPO:FILE.gguf proves, tensor by tensor, whether the "
                    "FP4 bits are intact"}


def render_census(doc: dict) -> str:
    cells = []
    for i, r in enumerate(doc["models"], 1):
        experts = "MXFP4 kept" if r["experts_mxfp4"] else ", ".join(r["expert_types"]) or "none found"
        model = r["model"] + (f" ({r['parts']} parts)" if r["parts"] > 1 else "")
        cells.append([str(i), model, r["publisher"], f"{r['downloads']:,}", human_bytes(r["bytes"]), experts,
                      ", ".join(r["other_types"]), f"{r['bits_per_weight']:.2f}" if r["bits_per_weight"] else "?"])
    lines = [f"Quantizations of {doc['base_model']} on the Hub: {len(doc['models'])} GPT-OSS GGUF models in "
             f"{doc['repos']} repos, from their headers ({human_bytes(doc['header_bytes_read'])} read, "
             f"{doc['models_from_cache']} from the cache)", ""]
    lines += table(cells, ["#", "model", "publisher", "downloads", "size", "experts", "other tensors",
                           "bits/weight"]) if cells else ["(none)"]
    for r in doc["models"]:
        if r["same_bytes_as"]:
            lines.append(f"  {r['model']}: same bytes as {', '.join(r['same_bytes_as'])}")
    for r in doc["failed_repos"]:
        lines.append(f"  repo {r['repo']} not surveyed: {r['error']}")
    for r in doc["unreadable_models"]:
        lines.append(f"  {r['model']} not surveyed: {r['error']}")
    if doc["other_models_skipped"]:
        lines.append(f"  {doc['other_models_skipped']} GGUF model(s) that are not GPT-OSS skipped")
    lines += ["", "Ranked: " + doc["ranking"] + ".",
              "Exact proof, tensor by tensor: oss-convert verify SOURCE REPO:FILE.gguf"]
    return "\n".join(lines)
