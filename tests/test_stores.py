"""Models where the apps keep them: Ollama's manifests and blobs (both forms), LM Studio's
folders, llama.cpp's cache and the Hugging Face cache, each laid out as the app lays it out
(tests/app_stores.py says after which source), named wherever a path is taken."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests import app_stores
from tests.cli import run_cli
from tests.gguf_compare import gguf_differences


@pytest.fixture
def stores(monkeypatch, tmp_path, hub, bundled, bundled_ports):
    """Every store, under a HOME of its own, holding the bundled model in several forms and
    two models of another architecture."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama-cache"))
    other = app_stores.other_gguf(tmp_path / "llama-3.gguf")

    ollama = app_stores.OllamaStore(home / ".ollama" / "models")
    ollama.add_gguf("gpt-oss-tiny:mxfp4", bundled_ports["mxfp4"])
    ollama.add_gguf("gpt-oss-tiny:q4_k_m", bundled_ports["q4_k_m"])
    ollama.add_tensors("tiny:latest", bundled, tmp_path / "tensor-blobs")
    ollama.add_gguf("llama3:8b", other)
    ollama.add_gguf("gpt-oss-tiny:q8", bundled_ports["q8_0"], namespace="someone")

    lmstudio = home / ".lmstudio" / "models"
    app_stores.lmstudio_add(lmstudio, "lmstudio-community", "gpt-oss-tiny-GGUF", bundled_ports["mxfp4"],
                            "gpt-oss-tiny-MXFP4.gguf")
    app_stores.lmstudio_add(lmstudio, "bartowski", "Llama-3-GGUF", other)
    app_stores.llama_cache_add(tmp_path / "llama-cache", "ggml-org", "gpt-oss-tiny-GGUF", bundled_ports["q4_k_m"],
                               "gpt-oss-tiny-Q4_K_M.gguf")

    repo = tmp_path / "gguf-repo"
    repo.mkdir()
    shutil.copy(bundled_ports["mxfp4"], repo / "gpt-oss-tiny-MXFP4.gguf")
    hub.state.add("unsloth/gpt-oss-tiny-GGUF", repo)
    from huggingface_hub import hf_hub_download, snapshot_download
    hf_hub_download("unsloth/gpt-oss-tiny-GGUF", "gpt-oss-tiny-MXFP4.gguf")
    # llama.cpp 0.3.36's -hf downloads: the Hub's layout, in LLAMA_CACHE where it is set
    hf_hub_download("unsloth/gpt-oss-tiny-GGUF", "gpt-oss-tiny-MXFP4.gguf", cache_dir=tmp_path / "llama-cache")
    snapshot_download("openai/gpt-oss-tiny", allow_patterns=["*.safetensors", "*.json"])
    return home


NAMES = {
    "ollama:gpt-oss-tiny:mxfp4": ("gguf", True),
    "ollama:gpt-oss-tiny:q4_k_m": ("gguf", False),
    "ollama:tiny:latest": ("safetensors", True),
    "ollama:someone/gpt-oss-tiny:q8": ("gguf", False),
    "lmstudio:lmstudio-community/gpt-oss-tiny-GGUF/gpt-oss-tiny-MXFP4.gguf": ("gguf", True),
    "llamacpp:ggml-org_gpt-oss-tiny-GGUF_gpt-oss-tiny-Q4_K_M.gguf": ("gguf", False),
    "hf-cache:unsloth/gpt-oss-tiny-GGUF:gpt-oss-tiny-MXFP4.gguf": ("gguf", True),
    "llamacpp:unsloth/gpt-oss-tiny-GGUF:gpt-oss-tiny-MXFP4.gguf": ("gguf", True),
    "hf-cache:openai/gpt-oss-tiny": ("safetensors", True),
}


def test_models_lists_every_gpt_oss_model_and_skips_the_others(stores):
    doc = json.loads(run_cli("models", "--json", "--ctx", "4096", "--gpu-memory", "1GB").stdout)
    found = {r["name"]: r for r in doc["models"]}
    assert set(found) == set(NAMES), sorted(found)
    assert doc["other_models_skipped"] == 2  # Ollama's llama3 and LM Studio's Llama-3
    for name, (kind, mxfp4) in NAMES.items():
        row = found[name]
        assert row["kind"] == kind and row["experts_mxfp4"] == mxfp4, row
        assert row["memory"]["ctx"] == 4096 and row["memory"]["fits_llama_cpp"], row["memory"]
        assert row["verify"] == f"oss-convert verify SOURCE {name}"
    assert found["ollama:gpt-oss-tiny:q4_k_m"]["expert_types"].keys() <= {"Q4_K", "Q5_0", "Q5_K", "Q6_K", "Q8_0"}
    text = run_cli("models").stdout
    assert "MXFP4 kept" in text and "requantized" in text and "2 other model(s) skipped" in text


def test_every_command_takes_every_name_form(stores, bundled, bundled_ports, tmp_path):
    for name, (kind, mxfp4) in NAMES.items():
        doc = json.loads(run_cli("inspect", name, "--json").stdout)
        assert doc["source"]["kind"] == kind, name
        # a GGUF as the port, a safetensors checkpoint as the source
        pair = (bundled, name) if kind == "gguf" else (name, bundled_ports["mxfp4"])
        code = run_cli("verify", *pair, "--json", code=None)
        assert code.exit_code == 0, (name, code.output[-500:])
        assert json.loads(code.stdout)["summary"]["fp4_preserved"] == mxfp4, name
    # the model's other commands, each on a store name
    moe = json.loads(run_cli("compare", "ollama:tiny", "lmstudio:lmstudio-community/gpt-oss-tiny-GGUF",
                             "--tokens", "4", "--layers", "0", "--json").stdout)
    assert moe["summary"]["identical"], moe["summary"]
    generated = json.loads(run_cli("generate", "ollama:gpt-oss-tiny:mxfp4", "--prompt", "Hi", "--max-tokens", "3",
                                   "--json").stdout)
    same = json.loads(run_cli("generate", bundled, "--prompt", "Hi", "--max-tokens", "3", "--json").stdout)
    assert generated["tokens"] == same["tokens"]
    run_cli("report", "ollama:tiny", "llamacpp:ggml-org_gpt-oss-tiny-GGUF_gpt-oss-tiny-Q4_K_M.gguf",
            "-o", tmp_path / "r.html", "--layers", "0", "--tokens", "4")
    # convert's source: Ollama's per-tensor form is the safetensors checkpoint again, less the
    # chat_template.jinja that Ollama's import does not keep
    out = tmp_path / "from-ollama.gguf"
    run_cli("convert", "ollama:tiny", "-o", out)
    folder = shutil.copytree(bundled, tmp_path / "tiny")
    (folder / "chat_template.jinja").unlink()
    local = tmp_path / "local.gguf"
    run_cli("convert", folder, "-o", local)
    assert gguf_differences(out, local) == []


def test_lmstudio_repo_with_one_model_and_a_moved_models_folder(stores, tmp_path, bundled_ports):
    doc = json.loads(run_cli("inspect", "lmstudio:lmstudio-community/gpt-oss-tiny-GGUF", "--json").stdout)
    assert doc["source"]["path"].endswith("gpt-oss-tiny-MXFP4.gguf")
    moved = tmp_path / "elsewhere"
    app_stores.lmstudio_add(moved, "me", "tiny-q8", bundled_ports["q8_0"])
    (stores / ".lmstudio" / "settings.json").write_text(json.dumps({"downloadsFolder": str(moved)}))
    run_cli("inspect", "lmstudio:me/tiny-q8")
    names = {r["name"] for r in json.loads(run_cli("models", "--json").stdout)["models"]}
    assert "lmstudio:me/tiny-q8/tiny-q8_0.gguf" in names


def test_verify_catches_a_blob_whose_bytes_do_not_match_its_digest(stores, bundled, tiny_gguf):
    manifest = stores / ".ollama/models/manifests/registry.ollama.ai/library/gpt-oss-tiny/mxfp4"
    digest = next(lay["digest"] for lay in json.loads(manifest.read_text())["layers"]
                  if lay["mediaType"] == "application/vnd.ollama.image.model")
    blob = stores / ".ollama/models/blobs" / digest.replace(":", "-")
    raw = bytearray(blob.read_bytes())
    raw[-100] ^= 0x01  # a bit of the last tensor's data: the header still parses
    blob.write_bytes(bytes(raw))
    result = run_cli("verify", bundled, "ollama:gpt-oss-tiny:mxfp4", code=2)
    assert "do not match its digest" in result.output and digest[7:] in result.output, result.output
    # the per-tensor form too: a changed tensor blob
    tensors = stores / ".ollama/models/manifests/registry.ollama.ai/library/tiny/latest"
    layer = next(lay for lay in json.loads(tensors.read_text())["layers"]
                 if lay.get("name", "").endswith("mlp.experts.down_proj"))
    tensor_blob = stores / ".ollama/models/blobs" / layer["digest"].replace(":", "-")
    raw = bytearray(tensor_blob.read_bytes())
    raw[-1] ^= 0x10
    tensor_blob.write_bytes(bytes(raw))
    result = run_cli("verify", "ollama:tiny", tiny_gguf, code=2)
    assert layer["digest"][7:] in result.output, result.output


@pytest.mark.parametrize("name, expected", [
    ("ollama:gpt-oss-tinny:mxfp4", ["no such model in Ollama's store", "searched", "gpt-oss-tiny:mxfp4"]),
    ("lmstudio:lmstudio-community/gpt-oss-tiny", ["no such model in LM Studio's folders", "gpt-oss-tiny-GGUF"]),
    ("llamacpp:gpt-oss-tiny.gguf", ["no such model in llama.cpp's cache", "gpt-oss-tiny-Q4_K_M"]),
    ("hf-cache:unsloth/gpt-oss-tiny-GGUF:nope.gguf", ["not in the cache", "gpt-oss-tiny-MXFP4.gguf"]),
    ("ollama:a/b/c/d", ["not an Ollama model name"]),
    ("lmstudio:justone", ["not an LM Studio model name"]),
])
def test_a_name_no_store_holds(stores, name, expected):
    result = run_cli("inspect", name, code=1)
    line = result.output.strip()
    assert line.startswith("Error: ") and "\n" not in line, line
    for part in expected:
        assert part in line, line


def test_broken_stores_give_one_error_line(stores):
    base = stores / ".ollama/models"
    manifest = base / "manifests/registry.ollama.ai/library/gpt-oss-tiny/mxfp4"
    layers = json.loads(manifest.read_text())["layers"]
    blob = base / "blobs" / layers[0]["digest"].replace(":", "-")

    def fails(name: str, *parts: str) -> None:
        line = run_cli("inspect", name, code=1).output.strip()
        assert line.startswith("Error: ") and "\n" not in line and all(p in line for p in parts), line

    saved = blob.read_bytes()
    blob.write_bytes(saved[:1000])
    fails("ollama:gpt-oss-tiny:mxfp4", "cut short", str(blob))
    blob.unlink()
    fails("ollama:gpt-oss-tiny:mxfp4", "missing blob")
    blob.write_bytes(saved)
    manifest.write_text("{not json")
    fails("ollama:gpt-oss-tiny:mxfp4", "not an Ollama manifest")
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [{"digest": "sha256:xyz", "size": 1}]}))
    fails("ollama:gpt-oss-tiny:mxfp4", "not an Ollama manifest")
    # a per-tensor model whose view of links exists already: its blobs are still checked
    run_cli("inspect", "ollama:tiny")
    tensors = json.loads((base / "manifests/registry.ollama.ai/library/tiny/latest").read_text())["layers"]
    tensor_blob = base / "blobs" / tensors[0]["digest"].replace(":", "-")
    tensor_blob.write_bytes(tensor_blob.read_bytes()[:-1])
    fails("ollama:tiny", "cut short", str(tensor_blob))
    empty = stores / ".lmstudio/models/someone/empty-GGUF"
    empty.mkdir(parents=True)
    fails("lmstudio:someone/empty-GGUF", "holds no GGUF file")
    # the listing goes on past a broken manifest, and says so
    doc = json.loads(run_cli("models", "--json").stdout)
    rows = {r["name"]: r for r in doc["models"]}
    assert "ollama:gpt-oss-tiny:q4_k_m" in rows
    assert "not an Ollama manifest" in rows["ollama:gpt-oss-tiny:mxfp4"]["error"]


def test_install_into_lmstudio(stores, bundled, bundled_ports):
    result = run_cli("convert", bundled, "--type", "q4_k_m", "--install", "lmstudio", "--json")
    doc = json.loads(result.stdout)["result"]
    placed = stores / ".lmstudio/models/oss-convert/tiny-GGUF/tiny-Q4_K_M.gguf"
    assert doc["output"] == str(placed)
    assert doc["installed"]["name"] == "lmstudio:oss-convert/tiny-GGUF/tiny-Q4_K_M.gguf"
    assert placed.read_bytes() == bundled_ports["q4_k_m"].read_bytes()
    names = {r["name"] for r in json.loads(run_cli("models", "--json").stdout)["models"]}
    assert doc["installed"]["name"] in names  # where LM Studio's layout lists it
    run_cli("convert", bundled, "--type", "q4_k_m", "--install", "lmstudio", code=1)  # not over it without --force
    line = run_cli("convert", bundled, "-o", stores / "x.gguf", "--install", "lmstudio", code=2).output
    assert "leave out -o" in line


def test_install_into_ollama(stores, bundled, tmp_path, monkeypatch):
    out = tmp_path / "gpt-oss-tiny.gguf"
    monkeypatch.setenv("PATH", str(tmp_path / "no-ollama"))
    result = run_cli("convert", bundled, "-o", out, "--type", "q8_0", "--install", "ollama")
    modelfile = tmp_path / "gpt-oss-tiny.Modelfile"
    command = f"ollama create tiny:q8_0 -f {modelfile}"
    assert f"ollama is not installed here; to add it to Ollama run:\n  {command}" in result.output
    text = modelfile.read_text()
    assert "FROM ./gpt-oss-tiny.gguf\n" in text
    template = text.split('TEMPLATE """')[1].split('"""')[0]
    # what Ollama's shouldUseHarmony looks for in a gpt-oss template
    assert "<|start|>" in template and "<|end|>" in template and template.endswith("<|start|>assistant")
    instructions = re.findall(r"^(FROM|TEMPLATE|PARAMETER|SYSTEM|ADAPTER|LICENSE|MESSAGE|RENDERER|PARSER|REQUIRES)\b",
                              text, re.MULTILINE)
    assert instructions == ["FROM", "TEMPLATE"]  # nothing that Ollama's import infers itself
    # with ollama on the PATH, the command is run
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ollama-args"
    (bin_dir / "ollama").write_text(f"#!/bin/sh\necho \"$@\" > {log}\n")
    (bin_dir / "ollama").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    out.unlink()
    line = run_cli("convert", bundled, "-o", out, "--type", "q8_0", "--install", "ollama", code=1).output.strip()
    assert line == f"Error: {modelfile}: already exists (use --force to overwrite)" and not out.exists(), line
    result = run_cli("convert", bundled, "-o", out, "--type", "q8_0", "--install", "ollama", "--force")
    assert "created ollama:tiny:q8_0 in Ollama" in result.output
    assert log.read_text().split() == ["create", "tiny:q8_0", "-f", str(modelfile)]
