"""Hub repo ids as sources, against a local Hub-compatible server driven by the real
huggingface_hub client (HF_ENDPOINT points at it; nothing is mocked)."""

from __future__ import annotations

import json
import shutil

import pytest

from fixtures.checkpoints import write_checkpoint
from tests.cli import run_cli

run = run_cli


def test_inspect_reads_only_headers(hub, tmp_path):
    big = write_checkpoint(tmp_path / "big", "20b", shards=3, sparse=True)  # 13.8 GB of layout
    hub.state.add("openai/gpt-oss-20b", big)
    doc = json.loads(run("inspect", "openai/gpt-oss-20b", "--json").stdout)
    assert doc["summary"]["tensors"] == 411 and doc["summary"]["formats"]["MXFP4"]["tensors"] == 48
    weights = sum(n for key, n in hub.state.bytes_sent.items() if key.endswith(".safetensors"))
    assert 0 < weights < 3 * 200_000, weights  # three headers' worth of bytes, not 13.8 GB
    assert hub.state.listings["openai/gpt-oss-20b"] == 1  # the repo's files are listed once


def test_inspect_a_revision_and_the_original_folder(hub):
    doc = json.loads(run("inspect", "openai/gpt-oss-tiny@main:original", "--json").stdout)
    assert doc["source"]["layout"] == "OpenAI original/"
    assert hub.state.content_bytes("openai/gpt-oss-tiny") < 200_000


def test_convert_downloads_what_it_needs_and_matches_the_local_result(hub, tmp_path, bundled):
    remote, local = tmp_path / "r.gguf", tmp_path / "l.gguf"
    run("convert", "openai/gpt-oss-mid", "-o", remote)
    run("convert", hub.state.repos["openai/gpt-oss-mid"]["main"], "-o", local)
    from tests.gguf_compare import gguf_differences
    assert gguf_differences(remote, local) == []
    sent = {k for k in hub.state.bytes_sent if k.startswith("openai/gpt-oss-mid/")}
    assert not any("/original/" in k for k in sent)  # never the original/ weights unless asked for
    # into a chosen folder, and from a revision named by its commit
    commit = hub.state.commit("openai/gpt-oss-tiny", "main")
    run("convert", f"openai/gpt-oss-tiny@{commit}", "-o", tmp_path / "t.gguf", "--local-dir", tmp_path / "dl")
    assert (tmp_path / "dl" / "model.safetensors").is_file()


def test_verify_and_compare_take_repo_ids(hub, tmp_path, tiny_gguf):
    gguf_dir = tmp_path / "gguf-repo"
    gguf_dir.mkdir()
    shutil.copy(tiny_gguf, gguf_dir / "gpt-oss-tiny-MXFP4.gguf")
    hub.state.add("someone/gpt-oss-tiny-GGUF", gguf_dir)
    result = run("verify", "openai/gpt-oss-tiny", "someone/gpt-oss-tiny-GGUF:gpt-oss-tiny-MXFP4.gguf", "--json")
    assert json.loads(result.stdout)["summary"]["fp4_preserved"]
    doc = json.loads(run("compare", "openai/gpt-oss-tiny", "someone/gpt-oss-tiny-GGUF", "--tokens", "8",
                         "--json").stdout)
    assert doc["summary"]["identical"]
    doc = json.loads(run("inspect", "someone/gpt-oss-tiny-GGUF", "--json").stdout)
    assert doc["summary"]["gguf"]["expert_tensors_mxfp4"] == 12


def test_errors(hub, monkeypatch, tmp_path):
    out = run("inspect", "openai/nope", code=1).output
    assert out.startswith("Error: openai/nope: no such local path, and no such repo") and len(out.splitlines()) == 1
    out = run("inspect", "openai/gpt-oss-tiny@v9", code=1).output
    assert "no revision 'v9'" in out
    hub.state.add("openai/gated", hub.state.repos["openai/gpt-oss-tiny"]["main"], gated_token="hf_secret")
    assert "gated or private" in run("inspect", "openai/gated", code=1).output
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert json.loads(run("inspect", "openai/gated", "--json").stdout)["summary"]["tensors"] == 71
    monkeypatch.delenv("HF_TOKEN")
    bad = tmp_path / "notgptoss"
    bad.mkdir()
    (bad / "README.md").write_text("hi")
    hub.state.add("someone/not-gpt-oss", bad)
    assert "not a GPT-OSS checkpoint" in run("inspect", "someone/not-gpt-oss", code=1).output
    assert "not a GPT-OSS checkpoint" in run("convert", "someone/not-gpt-oss", "-o", tmp_path / "x.gguf",
                                             code=1).output


def test_offline_mode_uses_the_cache(hub, monkeypatch, tmp_path):
    run("convert", "openai/gpt-oss-tiny", "-o", tmp_path / "a.gguf")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    served = dict(hub.state.bytes_sent)
    run("convert", "openai/gpt-oss-tiny", "-o", tmp_path / "b.gguf")  # from the cache
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert dict(hub.state.bytes_sent) == served
    out = run("convert", "openai/gpt-oss-mid", "-o", tmp_path / "c.gguf", code=1).output
    assert out.startswith("Error: ") and len(out.splitlines()) == 1


@pytest.mark.slow  # huggingface_hub retries the refused connection for about 20 s
def test_no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    out = run("inspect", "openai/gpt-oss-20b", code=1).output
    assert out.startswith("Error: ") and "Hub" in out and len(out.splitlines()) == 1


def test_inspect_surveys_a_repo_of_quantizations_by_their_headers(hub, tmp_path, bundled_ports):
    """A GGUF repo as the Hub's quantizers publish them: one file per quantization, one split
    in parts. One row per model, from headers read by range requests, bytes counted."""
    from tests import gguf_edit
    repo = tmp_path / "gguf-repo"
    repo.mkdir()
    lossless = repo / "gpt-oss-tiny-MXFP4.gguf"
    shutil.copy(bundled_ports["mxfp4"], lossless)
    shutil.copy(bundled_ports["q4_k_m"], repo / "gpt-oss-tiny-Q4_K_M.gguf")
    for part in gguf_edit.split(bundled_ports["q8_0"], repo, 3):  # model-0000i-of-00003.gguf
        part.rename(repo / part.name.replace("model-", "gpt-oss-tiny-Q8_0-"))
    hub.state.add("someone/gpt-oss-tiny-GGUF", repo)

    doc = json.loads(run("inspect", "someone/gpt-oss-tiny-GGUF", "--json").stdout)
    assert hub.state.listings["someone/gpt-oss-tiny-GGUF"] == 1
    rows = {r["file"]: r for r in doc["models"]}
    assert set(rows) == {"gpt-oss-tiny-MXFP4.gguf", "gpt-oss-tiny-Q4_K_M.gguf", "gpt-oss-tiny-Q8_0-00001-of-00003.gguf"}
    mxfp4, q4, q8 = rows["gpt-oss-tiny-MXFP4.gguf"], rows["gpt-oss-tiny-Q4_K_M.gguf"], \
        rows["gpt-oss-tiny-Q8_0-00001-of-00003.gguf"]
    assert mxfp4["experts_mxfp4"] and list(mxfp4["expert_types"]) == ["MXFP4"]
    assert mxfp4["bytes"] == lossless.stat().st_size
    assert not q4["experts_mxfp4"] and "MXFP4" not in q4["expert_types"] and q4["fp4_bits"].startswith("lost")
    assert q8["parts"] == 3 and q8["bytes"] == sum(p.stat().st_size for p in repo.glob("*Q8_0*"))
    assert set(q8["expert_types"]) == {"Q8_0"} and q8["tensors"] == mxfp4["tensors"]
    from oss_convert.checkpoint import open_checkpoint
    local = open_checkpoint(lossless).tensors
    assert mxfp4["bits_per_weight"] == 8 * sum(t.nbytes for t in local) / sum(t.n_params for t in local)
    assert q4["bits_per_weight"] < q8["bits_per_weight"]
    # headers only: what was transferred is what the survey says, and far less than the files
    sent = hub.state.content_bytes("someone/gpt-oss-tiny-GGUF")
    assert sent == doc["bytes_transferred"]
    assert sent < sum(p.stat().st_size for p in repo.iterdir()) / 2
    print(f"survey of {len(rows)} models: {sent} bytes transferred")

    human = run("inspect", "someone/gpt-oss-tiny-GGUF").stdout
    assert "3 GGUF models" in human and "(3 parts)" in human and "lost (experts requantized)" in human
    # one model named in the repo is inspected as before
    doc = json.loads(run("inspect", "someone/gpt-oss-tiny-GGUF:gpt-oss-tiny-Q8_0-00002-of-00003.gguf",
                         "--json").stdout)
    assert doc["summary"]["gguf"]["expert_types"] == {"Q8_0": 12}
