"""Putting a converted GGUF back into an app: where LM Studio lists it, or an Ollama Modelfile.

Ollama's GGUF import (server/create.go) infers the family from general.architecture and the
parameter count and file type from the header, but no chat template for gpt-oss (its named
templates, template/index.json, have none), and it parses harmony only where the template
holds `<|start|>` and `<|end|>` (server/routes.go, shouldUseHarmony). So the Modelfile adds one
thing: a TEMPLATE in the harmony format.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ..errors import OssConvertError
from ..files.atomic import atomic_path
from . import lmstudio

PUBLISHER = "oss-convert"  # LM Studio's publisher folder of our own
HARMONY_TEMPLATE = """<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.
Knowledge cutoff: 2024-06

Reasoning: medium

# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>
{{- range .Messages }}
{{- if eq .Role "system" }}<|start|>developer<|message|># Instructions

{{ .Content }}<|end|>
{{- else if eq .Role "user" }}<|start|>user<|message|>{{ .Content }}<|end|>
{{- else if eq .Role "assistant" }}<|start|>assistant<|channel|>final<|message|>{{ .Content }}<|end|>
{{- end }}
{{- end }}<|start|>assistant"""


def lmstudio_target(model_name: str, qtype: str) -> tuple[Path, str]:
    """(path, lmstudio: name) for a new GGUF: PUBLISHER/MODEL-GGUF/MODEL-TYPE.gguf."""
    model = re.sub(r"[^\w.-]+", "-", model_name).strip("-.") or "gpt-oss"
    repo = f"{model}-GGUF"
    file = f"{model}-{qtype.upper()}.gguf"
    folder = lmstudio.install_dir() / PUBLISHER / repo
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OssConvertError(f"{folder}: cannot create LM Studio's model folder ({e.strerror or e})") from None
    return folder / file, f"lmstudio:{PUBLISHER}/{repo}/{file}"


def ollama_name(model_name: str, qtype: str) -> str:
    model = re.sub(r"[^a-z0-9._-]+", "-", model_name.lower()).strip("-.") or "gpt-oss"
    return f"{model}:{qtype.lower()}"


def modelfile_text(gguf: Path) -> str:
    return (f"# Made by oss-convert for Ollama's GGUF import: what it infers (family, size, types) is left to it;\n"
            f"# the harmony TEMPLATE is what it would not infer for gpt-oss.\n"
            f"FROM ./{gguf.name}\n"
            f'TEMPLATE """{HARMONY_TEMPLATE}"""\n')


def modelfile_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.stem + ".Modelfile")


def install_ollama(gguf: Path, name: str, force: bool) -> dict:
    """Write the Modelfile beside the GGUF; run `ollama create` where ollama is on the PATH."""
    modelfile = modelfile_path(gguf)
    with atomic_path(modelfile, force) as tmp:
        tmp.write_text(modelfile_text(gguf), encoding="utf-8")
    command = ["ollama", "create", name, "-f", str(modelfile)]
    result = {"modelfile": str(modelfile), "name": f"ollama:{name}", "command": " ".join(command)}
    executable = shutil.which("ollama")
    if executable is None:
        return result | {"ran": False}
    done = subprocess.run([executable, *command[1:]], capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise OssConvertError(f"ollama create failed ({why[-1] if why else f'exit {done.returncode}'}); "
                              f"run it yourself: {result['command']}")
    return result | {"ran": True}
