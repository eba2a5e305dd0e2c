"""The census of a base model's quantizations, against the local Hub server: the real
huggingface_hub client searches by the base_model relation, lists each repo's files with their
LFS sha256, and reads GGUF headers by range requests; the server counts the bytes it sends."""

from __future__ import annotations

import json

import pytest

from tests import gguf_edit
from tests.app_stores import other_gguf
from tests.cli import run_cli

BASE = "openai/gpt-oss-tiny"


@pytest.fixture
def quantizations(hub, tmp_path, monkeypatch, bundled_ports):
    """Six repos recorded as quantizations of one base model (one split model, two repos with
    the same file under other names, one that vanishes between the search and its listing, one
    holding another architecture) and one of another base model."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def repo(repo_id: str, downloads: int, files: dict, base: str = BASE):
        return hub.state.publish(repo_id, tmp_path / "repos" / repo_id, files, base_model=base, downloads=downloads)

    repo("ggml-org/gpt-oss-tiny-GGUF", 500, {"gpt-oss-tiny-mxfp4.gguf": bundled_ports["mxfp4"]})
    unsloth = repo("unsloth/gpt-oss-tiny-GGUF", 900, {"gpt-oss-tiny-F16.gguf": bundled_ports["mxfp4"],
                                                      "gpt-oss-tiny-Q4_K_M.gguf": bundled_ports["q4_k_m"]})
    for part in gguf_edit.split(bundled_ports["q8_0"], unsloth, 2):
        part.rename(unsloth / part.name.replace("model-", "gpt-oss-tiny-Q8_0-"))
    repo("bartowski/openai_gpt-oss-tiny-GGUF", 300, {"openai_gpt-oss-tiny-MXFP4_MOE.gguf": bundled_ports["mxfp4"],
                                                     "openai_gpt-oss-tiny-Q2_K.gguf": bundled_ports["q2_k"]})
    repo("lmstudio-community/gpt-oss-tiny-GGUF", 200, {"gpt-oss-tiny-Q6_K.gguf": bundled_ports["q6_k"]})
    repo("someone/llama-GGUF-mislabelled", 50, {"llama.gguf": other_gguf(tmp_path / "llama.gguf")})
    hub.state.describe("gone/gpt-oss-tiny-GGUF", base_model=BASE, downloads=100)  # listed, then gone
    repo("meta/llama-GGUF", 10_000, {"llama.gguf": tmp_path / "llama.gguf"}, base="meta/llama")
    return hub


def census(*args) -> dict:
    return json.loads(run_cli("models", "--hub", BASE, "--json", *args).stdout)


def test_the_census_ranks_every_quantization_and_reads_each_header_once(quantizations, tmp_path):
    hub = quantizations
    doc = census()
    assert doc["repos"] == 6  # meta/llama-GGUF is another base model's
    models = [m["model"] for m in doc["models"]]
    # FP4 kept first (the lossless file once, whatever its name), then by size, largest first
    assert models[0] == "unsloth/gpt-oss-tiny-GGUF:gpt-oss-tiny-F16.gguf", models  # the most downloaded of the same
    lossless = doc["models"][0]
    assert lossless["experts_mxfp4"] and sorted(lossless["same_bytes_as"]) == [
        "bartowski/openai_gpt-oss-tiny-GGUF:openai_gpt-oss-tiny-MXFP4_MOE.gguf",
        "ggml-org/gpt-oss-tiny-GGUF:gpt-oss-tiny-mxfp4.gguf"]
    rest = doc["models"][1:]
    assert [m["experts_mxfp4"] for m in rest] == [False] * 4
    assert [m["bytes"] for m in rest] == sorted((m["bytes"] for m in rest), reverse=True)
    assert {m["model"].split(":")[1] for m in rest} == {
        "gpt-oss-tiny-Q8_0-00001-of-00002.gguf", "gpt-oss-tiny-Q4_K_M.gguf", "openai_gpt-oss-tiny-Q2_K.gguf",
        "gpt-oss-tiny-Q6_K.gguf"}
    split = next(m for m in rest if "Q8_0" in m["model"])
    assert split["parts"] == 2 and set(split["expert_types"]) == {"Q8_0"}
    assert [r["repo"] for r in doc["failed_repos"]] == ["gone/gpt-oss-tiny-GGUF"]
    assert "the Hub has no such repo now" in doc["failed_repos"][0]["error"]
    assert doc["other_models_skipped"] == 1  # the llama file
    # the bytes the census says it read are the bytes the server sent, and far less than the files
    sent = sum(n for key, n in hub.state.bytes_sent.items() if key.endswith(".gguf"))
    assert doc["header_bytes_read"] == sent > 0
    files = sum(p.stat().st_size for p in (tmp_path / "repos").rglob("*.gguf"))
    assert sent < files / 2
    # the same bytes under three names were read once
    same = ["unsloth/gpt-oss-tiny-GGUF/gpt-oss-tiny-F16.gguf", "ggml-org/gpt-oss-tiny-GGUF/gpt-oss-tiny-mxfp4.gguf",
            "bartowski/openai_gpt-oss-tiny-GGUF/openai_gpt-oss-tiny-MXFP4_MOE.gguf"]
    assert sum(hub.state.bytes_sent.get(key, 0) > 0 for key in same) == 1

    again = census()
    assert again["header_bytes_read"] == 0 and again["models_from_cache"] == 6  # distinct contents
    assert sum(n for key, n in hub.state.bytes_sent.items() if key.endswith(".gguf")) == sent  # nothing more read
    assert [m["model"] for m in again["models"]] == models

    text = run_cli("models", "--hub", BASE).stdout
    assert "same bytes as" in text and "repo gone/gpt-oss-tiny-GGUF not surveyed" in text and "MXFP4 kept" in text


def test_limit_and_the_html_page(quantizations, tmp_path):
    doc = census("--limit", "2")
    assert doc["repos"] == 2 and {m["publisher"] for m in doc["models"]} == {"unsloth"}  # the 2 most downloaded
    assert doc["models"][0]["same_bytes_as"] == ["ggml-org/gpt-oss-tiny-GGUF:gpt-oss-tiny-mxfp4.gguf"]
    page = tmp_path / "census.html"
    run_cli("models", "--hub", BASE, "--html", page)
    html = page.read_text()
    assert html.count("<svg") == 1 and "gpt-oss-tiny-Q4_K_M.gguf" in html and "same bytes" in html
    run_cli("models", "--hub", BASE, "--html", page, code=1)  # no overwrite without --force
    run_cli("models", "--hub", BASE, "--html", page, "--force")


def test_a_base_model_with_no_quantizations(quantizations):
    doc = json.loads(run_cli("models", "--hub", "nobody/nothing", "--json").stdout)
    assert doc["repos"] == 0 and doc["models"] == []
