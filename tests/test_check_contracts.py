"""`check` against LM Studio and Ollama, which cannot run here: local servers answer as their API
documents say (tests/app_servers.py names the documents), and the model behind them is the
bundled one, kept in each app's store as the app keeps it."""

from __future__ import annotations

import json

import pytest

from oss_convert.check.document import PROMPT
from tests import app_servers, app_stores
from tests.cli import run_cli
from tests.greedy import greedy as greedy_continuation


@pytest.fixture
def home(monkeypatch, tmp_path, bundled_ports):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    app_stores.lmstudio_add(home / ".lmstudio" / "models", "lmstudio-community", "gpt-oss-tiny-GGUF",
                            bundled_ports["mxfp4"], "gpt-oss-tiny-MXFP4.gguf")
    app_stores.OllamaStore(home / ".ollama" / "models").add_gguf("gpt-oss-tiny:latest", bundled_ports["mxfp4"])
    return home


@pytest.fixture(scope="module")
def greedy(bundled_ports):
    """What a correct app answers: our runtime's greedy continuation of the check's prompt on the
    lossless file."""
    prompt_ids, _, text = greedy_continuation(bundled_ports["mxfp4"], PROMPT, 12)
    return {"prompt_tokens": len(prompt_ids), "text": text}


def check(url, *args, code=0) -> dict | str:
    result = run_cli("check", url, "--runs", "2", "--tokens", "12", *args, code=code)
    return json.loads(result.stdout) if "--json" in args and code == 0 else result.output


def test_lmstudio(home, greedy):
    handler = app_servers.lmstudio_handler("openai/gpt-oss-tiny", "lmstudio-community", greedy["text"],
                                           completion_tokens=12, prompt_tokens=greedy["prompt_tokens"])
    with app_servers.AppServer(handler) as server:
        doc = check(server.url, "--json", "--bandwidth", "100")
        assert doc["server"]["app"] == "LM Studio" and doc["server"]["model"] == "openai/gpt-oss-tiny"
        assert doc["file"]["name"] == "lmstudio:lmstudio-community/gpt-oss-tiny-GGUF/gpt-oss-tiny-MXFP4.gguf"
        assert doc["file"]["experts_mxfp4"]
        assert doc["server"]["facts"]["runtime"]["name"] == "llama.cpp-linux-x86_64-nvidia-cuda12-avx2"
        speed = doc["speed"]
        assert speed["decode_per_second"]["server"] == 51.4 and speed["ttft_s"]["server"] == 0.111
        assert speed["prompt_per_second"]["server"] == pytest.approx(greedy["prompt_tokens"] / 0.111)
        # the random model's tokens are often parts of a character: compared as greedy text
        assert doc["agreement"]["text_agreement"] == 1.0, doc["agreement"]
        assert doc["verdict"][0].startswith("file: experts MXFP4 kept")
        assert any(line.startswith("computing: agrees with our runtime") for line in doc["verdict"])
        assert doc["ceiling"]["bandwidth_bytes_per_s"] == 100e9 and doc["ceiling"]["bandwidth_source"] == "--bandwidth"
        # what the requests asked: greedy, the prompt as text, the tokens to make
        path, body = server.requests[-1]
        assert path == "/api/v0/completions" and body["temperature"] == 0 and body["max_tokens"] == 12
        text = check(server.url)
        assert "engine: llama.cpp-linux-x86_64-nvidia-cuda12-avx2 1.52.0" in text

    # LM Studio's CUDA 12 fault (lmstudio-bug-tracker #1841): a flood of "?"
    flood = app_servers.lmstudio_handler("openai/gpt-oss-tiny", "lmstudio-community", "?" * 12,
                                         completion_tokens=12, prompt_tokens=greedy["prompt_tokens"])
    with app_servers.AppServer(flood) as server:
        doc = check(server.url, "--json", "--bandwidth", "100")
        assert any(line.startswith("computing: DISAGREES") for line in doc["verdict"]), doc["verdict"]


def test_ollama(home, greedy):
    # streamed a character at a time, as Ollama holds back a token that ends inside a character
    handler = app_servers.ollama_handler("gpt-oss-tiny:latest", list(greedy["text"]), size=90 << 20,
                                         size_vram=90 << 20, prompt_tokens=greedy["prompt_tokens"])
    with app_servers.AppServer(handler) as server:
        doc = check(server.url, "--json", "--bandwidth", "100")
        assert doc["server"]["app"] == "Ollama" and doc["server"]["version"] == "0.13.1"
        assert doc["file"]["name"] == "ollama:gpt-oss-tiny:latest" and doc["file"]["experts_mxfp4"]
        memory = doc["memory"]
        assert memory["ollama_size_vram"] == 90 << 20 and memory["held_from"] == "Ollama's size"
        assert memory["reading"] == "weights as stored"
        speed = doc["speed"]
        assert speed["decode_per_second"]["server"] == pytest.approx(len(greedy["text"]) / 4.232710)
        assert speed["prompt_per_second"]["server"] == pytest.approx(greedy["prompt_tokens"] / 0.130079)
        assert speed["decode_per_second"]["clock"] > 0
        assert doc["agreement"]["text_agreement"] == 1.0, doc["agreement"]
        path, body = server.requests[-1]
        assert path == "/api/generate" and body["raw"] and body["options"]["temperature"] == 0


def test_a_server_that_stops_midway_and_other_bad_servers(home, greedy, tmp_path):
    handler = app_servers.ollama_handler("gpt-oss-tiny:latest", list(greedy["text"]), size=1, size_vram=0,
                                         prompt_tokens=5, stop_after=3)
    with app_servers.AppServer(handler) as server:
        line = check(server.url, code=1).strip()
        assert line.startswith("Error: ") and "midway" in line and "\n" not in line, line
        line = check(server.url, "--model", "nope:latest", code=1).strip()
        assert "Ollama has no model 'nope:latest'" in line, line
    with app_servers.AppServer(app_servers._Handler) as server:  # HTTP, but no LLM server
        line = check(server.url, code=1).strip()
        assert "not as llama-server, LM Studio or Ollama do" in line, line
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = check(f"http://127.0.0.1:{port}", code=1).strip()
    assert line == f"Error: http://127.0.0.1:{port}/props: nothing is listening there", line
    # a model that is not GPT-OSS
    other = app_stores.other_gguf(tmp_path / "llama.gguf")
    handler = app_servers.lmstudio_handler("openai/gpt-oss-tiny", "lmstudio-community", "x", completion_tokens=1,
                                           prompt_tokens=1)
    with app_servers.AppServer(handler) as server:
        line = check(server.url, "--file", other, code=1).strip()
        assert "not a GPT-OSS model" in line, line
