"""The README's `models` and census output, made from the bundled model as the tests make it:
the apps' stores under a temporary HOME (tests/app_stores.py) and quantization repos on the
local Hub server. Run: python -m tests.demo_stores"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests import app_stores, gguf_edit
from tests.hub_server import HubServer

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "fixtures" / "tiny"


def oss_convert(*args, env) -> str:
    done = subprocess.run([sys.executable, "-m", "oss_convert.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name, HubServer() as hub:
        tmp = Path(tmp_name)
        home = tmp / "home"
        env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
               "LLAMA_CACHE": str(home / ".cache/llama.cpp"), "HF_ENDPOINT": hub.url,
               "HF_HUB_CACHE": str(home / ".cache/huggingface/hub"), "HF_HUB_DISABLE_XET": "1"}
        env.pop("OLLAMA_MODELS", None)
        ports = {}
        for qtype in ("mxfp4", "q4_k_m", "q8_0", "q2_k"):
            ports[qtype] = tmp / f"gpt-oss-tiny-{qtype.upper()}.gguf"
            oss_convert("convert", BUNDLED, "-o", ports[qtype], "--type", qtype, env=env)

        ollama = app_stores.OllamaStore(home / ".ollama" / "models")
        ollama.add_gguf("gpt-oss-tiny:latest", ports["mxfp4"])
        ollama.add_gguf("gpt-oss-tiny:q4_k_m", ports["q4_k_m"])
        ollama.add_gguf("llama3:8b", app_stores.other_gguf(tmp / "llama.gguf"))
        app_stores.lmstudio_add(home / ".lmstudio" / "models", "lmstudio-community", "gpt-oss-tiny-GGUF",
                                ports["mxfp4"])
        app_stores.llama_cache_add(home / ".cache/llama.cpp", "ggml-org", "gpt-oss-tiny-GGUF", ports["q8_0"],
                                   "gpt-oss-tiny-Q8_0.gguf")
        print("$ oss-convert models --ctx 8192 --gpu-memory 8GB")
        print(oss_convert("models", "--ctx", "8192", "--gpu-memory", "8GB", env=env))

        def repo(repo_id: str, downloads: int, files: dict) -> Path:
            return hub.state.publish(repo_id, tmp / "repos" / repo_id, files, base_model="openai/gpt-oss-tiny",
                                     downloads=downloads)

        repo("ggml-org/gpt-oss-tiny-GGUF", 500, {"gpt-oss-tiny-mxfp4.gguf": ports["mxfp4"]})
        unsloth = repo("unsloth/gpt-oss-tiny-GGUF", 900, {"gpt-oss-tiny-F16.gguf": ports["mxfp4"],
                                                          "gpt-oss-tiny-Q4_K_M.gguf": ports["q4_k_m"]})
        for part in gguf_edit.split(ports["q8_0"], unsloth, 2):
            part.rename(unsloth / part.name.replace("model-", "gpt-oss-tiny-Q8_0-"))
        repo("bartowski/openai_gpt-oss-tiny-GGUF", 300, {"openai_gpt-oss-tiny-Q2_K.gguf": ports["q2_k"]})
        hub.state.describe("gone/gpt-oss-tiny-GGUF", base_model="openai/gpt-oss-tiny", downloads=100)
        for run in (1, 2):
            print("$ oss-convert models --hub openai/gpt-oss-tiny" + ("   # again: from the cache" if run == 2 else ""))
            print(oss_convert("models", "--hub", "openai/gpt-oss-tiny", env=env))


if __name__ == "__main__":
    main()
