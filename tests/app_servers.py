"""Local HTTP servers answering as LM Studio and Ollama answer, for the apps that cannot run here.

Each response follows the app's own API documentation, field for field:
- LM Studio: lmstudio-ai/docs, 1_developer/2_rest/endpoints.mdx ("REST API v0"): `GET /api/v0/models`
  and `POST /api/v0/completions` with `usage`, `stats`, `model_info` and `runtime`.
- Ollama: ollama/ollama docs/api.md ("Generate a completion", "Show Model Information", "List
  Running Models", "Version") and api/types.go (/api/ps's `context_length`, newer than the
  document's example): a stream of JSON
  objects, one a line, the last with the counts and durations in nanoseconds.
The answer text is given by the test (what a correct app would say, or a faulty one).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class AppServer:
    def __init__(self, handler_class):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.requests: list[tuple[str, dict | None]] = []
        handler_class.app = self

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    app: AppServer

    def log_message(self, *args):
        pass

    def _body(self) -> dict | None:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else None

    def _json(self, payload, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.app.requests.append((self.path, None))
        self.route(self.path, None)

    def do_POST(self):
        body = self._body()
        self.app.requests.append((self.path, body))
        self.route(self.path, body)

    def route(self, path: str, body: dict | None) -> None:
        self._json({"error": "not found"}, 404)


def lmstudio_handler(model_id: str, publisher: str, answer: str, *, completion_tokens: int, prompt_tokens: int,
                     runtime: str = "llama.cpp-linux-x86_64-nvidia-cuda12-avx2"):
    class LMStudio(_Handler):
        def route(self, path, body):
            if path == "/api/v0/models":
                self._json({"object": "list", "data": [
                    {"id": model_id, "object": "model", "type": "llm", "publisher": publisher, "arch": "gpt-oss",
                     "compatibility_type": "gguf", "quantization": "MXFP4", "state": "loaded",
                     "max_context_length": 131072},
                    {"id": "text-embedding-nomic-embed-text-v1.5", "object": "model", "type": "embeddings",
                     "publisher": "nomic-ai", "arch": "nomic-bert", "compatibility_type": "gguf",
                     "quantization": "Q4_0", "state": "not-loaded", "max_context_length": 2048}]})
            elif path == "/api/v0/completions":
                time.sleep(0.01)
                self._json({"id": "cmpl-p9rtxv6fky2v9k8jrd8cc", "object": "text_completion", "created": 1731990488,
                            "model": model_id,
                            "choices": [{"index": 0, "text": answer, "logprobs": None, "finish_reason": "length"}],
                            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                      "total_tokens": prompt_tokens + completion_tokens},
                            "stats": {"tokens_per_second": 51.4, "time_to_first_token": 0.111,
                                      "generation_time": 0.954, "stop_reason": "maxPredictedTokensReached"},
                            "model_info": {"arch": "gpt-oss", "quant": "MXFP4", "format": "gguf",
                                           "context_length": 131072},
                            "runtime": {"name": runtime, "version": "1.52.0", "supported_formats": ["gguf"]}})
            else:
                super().route(path, body)
    return LMStudio


def ollama_handler(model: str, answer_tokens: list[str], *, size: int, size_vram: int, prompt_tokens: int,
                   stop_after: int | None = None):
    class Ollama(_Handler):
        def route(self, path, body):
            details = {"parent_model": "", "format": "gguf", "family": "gpt-oss", "families": ["gpt-oss"],
                       "parameter_size": "20.9B", "quantization_level": "MXFP4"}
            if path == "/api/version":
                self._json({"version": "0.13.1"})
            elif path == "/api/ps":
                self._json({"models": [{"name": model, "model": model, "size": size, "digest": "2ae6f6dd" * 8,
                                        "details": details, "expires_at": "2026-12-07T14:38:31.83753-07:00",
                                        "size_vram": size_vram, "context_length": 4096}]})
            elif path == "/api/show":
                if body is None or body.get("model") != model:
                    self._json({"error": f"model '{body and body.get('model')}' not found"}, 404)
                    return
                self._json({"modelfile": f"FROM {model}\n", "parameters": "", "template": "{{ .Prompt }}",
                            "details": details, "capabilities": ["completion", "thinking"],
                            "model_info": {"general.architecture": "gpt-oss", "general.file_type": 38,
                                           "gpt-oss.context_length": 131072, "gpt-oss.block_count": 24}})
            elif path == "/api/generate":
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                for i, token in enumerate(answer_tokens):
                    if stop_after is not None and i == stop_after:
                        self.wfile.flush()
                        self.connection.shutdown(2)  # the server goes away midway
                        return
                    chunk = {"model": model, "created_at": "2026-12-07T08:52:19.385406455-07:00", "response": token,
                             "done": False}
                    self.wfile.write((json.dumps(chunk) + "\n").encode())
                    self.wfile.flush()
                    time.sleep(0.002)
                self.wfile.write((json.dumps({
                    "model": model, "created_at": "2026-12-07T19:22:45.499127Z", "response": "", "done": True,
                    "total_duration": 10706818083, "load_duration": 6338219291, "prompt_eval_count": prompt_tokens,
                    "prompt_eval_duration": 130079000, "eval_count": len(answer_tokens),
                    "eval_duration": 4232710000}) + "\n").encode())
            else:
                super().route(path, body)
    return Ollama
