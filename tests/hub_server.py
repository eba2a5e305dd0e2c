"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for driving the real
huggingface_hub client in tests.

It serves folders as model repos: repo info (/api/models/...), file trees, and files through
/{repo}/resolve/{revision}/{path} with HEAD, ETag, X-Repo-Commit, Content-Length and byte
ranges; the Hub's error codes for a missing repo, revision or file and for a gated repo.
It counts the bytes of file content it sends, per file. Model search (/api/models) answers
the base_model filter from the model cards registered with `describe`, most downloaded first;
repo info with `blobs` gives each file's size and, as the Hub does for LFS files, its sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


class HubState:
    def __init__(self):
        self.repos: dict[str, dict[str, Path]] = {}  # repo id -> revision -> folder
        self.gated: dict[str, str] = {}  # repo id -> the token that opens it
        self.bytes_sent: dict[str, int] = defaultdict(int)  # "repo/path" -> content bytes served
        self.listings: dict[str, int] = defaultdict(int)  # repo id -> file listings served
        self.cards: dict[str, dict] = {}  # repo id -> {"author", "downloads", "base_model", "relation"}
        self.lock = threading.Lock()

    def publish(self, repo_id: str, folder: Path, files: dict[str, Path], *, base_model: str,
                downloads: int) -> Path:
        """A quantization repo of `base_model`: `files` (name in the repo -> source file) copied
        into `folder`, served, and described for the search."""
        folder.mkdir(parents=True)
        for name, source in files.items():
            shutil.copy(source, folder / name)
        self.add(repo_id, folder)
        self.describe(repo_id, base_model=base_model, downloads=downloads)
        return folder

    def describe(self, repo_id: str, *, base_model: str, downloads: int, relation: str = "quantized") -> None:
        """The model card facts the search filters on: a repo described here is listed even if
        it has no files (a repo that disappears between the search and its listing)."""
        self.cards[repo_id] = {"author": repo_id.split("/")[0], "downloads": downloads, "base_model": base_model,
                               "relation": relation}

    def add(self, repo_id: str, folder: Path, revision: str = "main", gated_token: str | None = None) -> None:
        self.repos.setdefault(repo_id, {})[revision] = Path(folder)
        if gated_token:
            self.gated[repo_id] = gated_token

    def commit(self, repo_id: str, revision: str) -> str:
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    def content_bytes(self, repo_id: str) -> int:
        return sum(n for key, n in self.bytes_sent.items() if key.startswith(repo_id + "/"))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


class _Handler(BaseHTTPRequestHandler):
    state: HubState

    def log_message(self, *args):  # keep test output clean
        pass

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _repo(self, repo_id: str, revision: str):
        """(folder, commit) or None after sending the Hub's error."""
        s = self.state
        if repo_id not in s.repos:
            self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return None
        token = s.gated.get(repo_id)
        if token and self.headers.get("Authorization") != f"Bearer {token}":
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                                          "and be authenticated to access it.")
            return None
        revs = s.repos[repo_id]
        folder = revs.get(revision) or next((f for r, f in revs.items() if s.commit(repo_id, r) == revision), None)
        if folder is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        rev = revision if revision in revs else next(r for r in revs if s.commit(repo_id, r) == revision)
        return folder, s.commit(repo_id, rev)

    def do_HEAD(self):
        self._serve()

    def do_GET(self):
        self._serve()

    def _search(self, query: dict) -> None:
        """GET /api/models?filter=base_model:RELATION:BASE&sort=downloads&limit=N"""
        wanted = query.get("filter", [])
        found = []
        for repo_id, card in self.state.cards.items():
            tags = ["gguf", f"base_model:{card['base_model']}", f"base_model:{card['relation']}:{card['base_model']}"]
            if all(f in tags for f in wanted):
                found.append({"id": repo_id, "modelId": repo_id, "author": card["author"],
                              "downloads": card["downloads"], "likes": 0, "private": False, "tags": tags})
        if query.get("sort") == ["downloads"]:
            found.sort(key=lambda m: -m["downloads"])
        if query.get("limit"):
            found = found[:int(query["limit"][0])]
        self._json(found)

    def _sibling(self, folder: Path, name: str, blobs: bool) -> dict:
        if not blobs:
            return {"rfilename": name}
        file = folder / name
        size = file.stat().st_size
        entry = {"rfilename": name, "size": size, "blobId": hashlib.sha1(name.encode()).hexdigest()}
        if name.endswith((".gguf", ".safetensors")):
            with self.state.lock:  # hashed on the server's side: not content sent
                digest = hashlib.sha256(file.read_bytes()).hexdigest()
            entry["lfs"] = {"size": size, "sha256": digest, "pointerSize": 134}
        return entry

    def _serve(self):
        url = urlparse(self.path)
        path = unquote(url.path)
        if path == "/api/models":
            self._search(parse_qs(url.query))
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            found = self._repo(m[1], m[2] or "main")
            if found:
                folder, commit = found
                with self.state.lock:
                    self.state.listings[m[1]] += 1
                blobs = parse_qs(url.query).get("blobs") == ["True"] or parse_qs(url.query).get("blobs") == ["true"]
                self._json({"id": m[1], "modelId": m[1], "sha": commit, "private": False,
                            "gated": bool(self.state.gated.get(m[1])), "disabled": False, "tags": [],
                            "siblings": [self._sibling(folder, f, blobs) for f in _files(folder)]})
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m:
            found = self._repo(m[1], m[2])
            if found:
                folder, _ = found
                with self.state.lock:
                    self.state.listings[m[1]] += 1
                prefix = (m[3] or "").strip("/")
                entries = [{"type": "file", "path": f, "size": (folder / f).stat().st_size,
                            "oid": hashlib.sha1(f.encode()).hexdigest()}
                           for f in _files(folder) if not prefix or f.startswith(prefix + "/")]
                self._json(entries)
            return
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not m:
            self._error(404, "EntryNotFound", f"no route for {path}")
            return
        found = self._repo(m[1], m[2])
        if not found:
            return
        folder, commit = found
        file = folder / m[3]
        if not file.is_file():
            self._error(404, "EntryNotFound", f"{m[3]} does not exist on {m[2]}")
            return
        size = file.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            rm = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if rm:
                if rm[1]:
                    start = int(rm[1])
                    end = min(int(rm[2]), size - 1) if rm[2] else size - 1
                else:  # suffix range
                    start, end = max(0, size - int(rm[2])), size - 1
                status = 206
        length = max(0, end - start + 1)
        self.send_response(status)
        etag = hashlib.sha256(f"{file}:{size}".encode()).hexdigest()
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "GET" and length:
            with open(file, "rb") as f:
                f.seek(start)
                data = f.read(length)
            self.wfile.write(data)
            with self.state.lock:
                self.state.bytes_sent[f"{m[1]}/{m[3]}"] += len(data)


class HubServer:
    """Run with `with HubServer() as hub: hub.state.add(...); os.environ['HF_ENDPOINT'] = hub.url`."""

    def __init__(self):
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
