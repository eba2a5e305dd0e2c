"""`oss-convert report`: the page says what verify --json and compare --json say, its heatmap
marks exactly the tensors that changed, it needs nothing outside itself, and a real browser
renders it without a console error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests import gguf_edit
from tests.cli import run_cli
from tests.conftest import ROOT, need_reference

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

IDENTICAL_FILL = "#d0d0d0"
TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n" * 3
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """What a test needs of a report page: exact values, table rows, heatmap cells, and every
    reference the page makes."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.values: dict[str, list[str]] = {}  # data-field -> data-value, in page order
        self.text_of: dict[str, str] = {}  # data-field (without data-value) -> its text
        self.rows: dict[tuple[str, str], dict[str, str]] = {}  # (table row kind, key) -> field -> data-value
        self.heat: dict[str, tuple[str, str]] = {}  # tensor -> (status, fill)
        self.references: list[str] = []  # src / href attributes, url(...) and @import in styles
        self.tags: set[str] = set()
        self._row = None
        self._field = None
        self._heat = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "data", "poster"):
                self.references.append(value or "")
            if name == "style" and value:
                self.references += re.findall(r"url\(([^)]*)\)", value)
        for kind in ("data-tensor", "data-layer", "data-key", "data-artifact"):
            if kind in a:
                self._row = self.rows.setdefault((kind, a[kind]), {})
        if "data-field" in a:
            if "data-value" in a:
                self.values.setdefault(a["data-field"], []).append(a["data-value"])
                if self._row is not None:
                    self._row[a["data-field"]] = a["data-value"]
            else:
                self._field = a["data-field"]
                self.text_of[self._field] = ""
        if tag == "g" and a.get("id", "").startswith("heat--"):
            _, status, tensor = a["id"].split("--", 2)
            self._heat = (tensor, status)
        elif tag == "path" and self._heat:
            fill = re.search(r"fill:\s*(#[0-9a-f]{6})", a.get("style", "")).group(1)
            self.heat[self._heat[0]] = (self._heat[1], fill)
            self._heat = None

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if tag == "p":
            self._field = None

    def handle_data(self, data):
        if self._field:
            self.text_of[self._field] += data
        if self.lasttag == "style":
            self.references += re.findall(r"url\(([^)]*)\)", data) + re.findall(r"@import", data)


def run(*args) -> tuple[int, str]:
    """(exit code: 0, or 1 for a finding; stdout) of a report or verify run."""
    result = run_cli(*args, code=None)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, result.stdout


def report(src, port, out: Path, *extra) -> tuple[int, Page, dict]:
    code, _ = run("report", src, port, "-o", out, "--json", *extra)
    return code, Page(out.read_text(encoding="utf-8")), json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def ports(bundled_ports, tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    lossless, q4 = bundled_ports["mxfp4"], bundled_ports["q4_k_m"]

    def flip_one_nibble(raw):  # expert 2, row 3, block 1: byte 1 + 4 of the block holds codes 4 and 20
        raw[2, 3, 1 * 17 + 1 + 4] ^= 0x01
        return raw
    corrupted = gguf_edit.rewrite(lossless, d / "corrupted.gguf", edit={"blk.1.ffn_up_exps.weight": flip_one_nibble})
    (d / "text.txt").write_text(TEXT)
    return {"lossless": lossless, "q4_k_m": q4, "corrupted": corrupted, "text": d / "text.txt"}


def verify_json(src, port) -> tuple[int, dict]:
    code, out = run("verify", src, port, "--json")
    return code, json.loads(out)


def assert_page_says_what_verify_says(page: Page, code: int, verified: dict) -> None:
    assert page.text_of["verdict"] == verified["summary"]["verdict"]
    assert page.values["exit_status"] == [str(code)]
    changed = [t for t in verified["tensors"] if t["status"] != "bit-identical"]
    assert {key for kind, key in page.rows if kind == "data-tensor"} == {t["port"] or t["source"] for t in changed}
    for t in changed:
        row = page.rows[("data-tensor", t["port"] or t["source"])]
        for field in ("snr_db", "relative_error", "max_abs_error"):
            assert float(row[field]) == t[field], (t["port"], field)
    for m in verified["metadata"]:
        assert ("data-key", m["key"]) in page.rows
    # the heatmap: one cell per tensor, grey exactly where verify says bit-identical
    assert set(page.heat) == {t["port"] or t["source"] for t in verified["tensors"]}
    for t in verified["tensors"]:
        status, fill = page.heat[t["port"] or t["source"]]
        assert status == t["status"] and (fill == IDENTICAL_FILL) == (t["status"] == "bit-identical"), t["port"]


def assert_self_contained(page: Page) -> None:
    outside = [r for r in page.references if not (r.startswith("data:") or r.startswith("#"))]
    assert not outside, outside[:5]
    assert not page.tags & {"script", "link", "iframe", "object", "embed", "base"}


def test_report_on_a_bit_identical_port(bundled, ports, tmp_path):
    code, page, doc = report(bundled, ports["lossless"], tmp_path / "r.html")
    v_code, verified = verify_json(bundled, ports["lossless"])
    assert code == v_code == 0 and doc["verify"]["summary"] == verified["summary"]
    assert_page_says_what_verify_says(page, code, verified)
    assert all(fill == IDENTICAL_FILL for _, fill in page.heat.values())
    assert all(float(v) == 0 for v in page.values["rel_error"]) and doc["full"] is None
    assert 'class="verdict ok"' in (tmp_path / "r.html").read_text()  # FP4 kept: green
    assert_self_contained(page)


def test_report_on_a_q4_k_m_port_with_a_text(bundled, ports, tmp_path):
    code, page, doc = report(bundled, ports["q4_k_m"], tmp_path / "r.html", "--text-file", ports["text"],
                             "--ctx", "32", "--layers", "0,2", "--tokens", "16", "--seed", "5")
    v_code, verified = verify_json(bundled, ports["q4_k_m"])
    assert code == v_code == 0
    assert_page_says_what_verify_says(page, code, verified)
    experts = [t for t in verified["tensors"] if t.get("per_expert")]
    assert experts and all(len(t["per_expert"]) == 8 for t in experts)
    assert doc["verify"]["tensors"] == verified["tensors"]
    # the MoE comparison and the whole-model comparison, as compare --json gives them
    _, moe = run("compare", bundled, ports["q4_k_m"], "--layers", "0,2", "--tokens", "16", "--seed", "5", "--json")
    moe = json.loads(moe)
    assert [r["layer"] for r in moe["layers"]] == [0, 2]
    for r in moe["layers"]:
        row = page.rows[("data-layer", str(r["layer"]))]
        for field in ("rel_error", "cosine", "max_abs_diff", "same_experts_fraction"):
            assert float(row[field]) == r[field] and r["rel_error"] > 0
    _, full = run("compare", bundled, ports["q4_k_m"], "--full", "--text-file", ports["text"], "--ctx", "32", "--json")
    full = json.loads(full)
    assert page.text_of["full-verdict"] == full["summary"]["verdict"]
    assert page.text_of["full-reading"] == full["summary"]["reading"]
    changed = round((1 - full["summary"]["top1_agreement"]) * full["summary"]["positions"])
    assert full["summary"]["reading"].startswith(f"B's most likely next token differs from A's at {changed} of ")
    # requantized as llama-quantize would: verify exits 0, but the FP4 bits are gone: amber, not green
    assert 'class="verdict requantized"' in (tmp_path / "r.html").read_text()
    for field in ("kl_mean", "kl_p99", "kl_max", "top1_agreement", "perplexity_a", "perplexity_b"):
        assert page.values[field] == [repr(full["summary"][field])]
    assert full["summary"]["positions"] > 64 and doc["full"]["per_position"] == full["per_position"]
    assert_self_contained(page)


def test_report_marks_exactly_the_corrupted_tensor(bundled, ports, tmp_path):
    code, page, doc = report(bundled, ports["corrupted"], tmp_path / "r.html", "--layers", "1")
    v_code, verified = verify_json(bundled, ports["corrupted"])
    assert code == v_code == 1 and doc["exit_status"] == 1
    assert_page_says_what_verify_says(page, code, verified)
    marked = {name: cell for name, cell in page.heat.items() if cell[1] != IDENTICAL_FILL}
    assert list(marked) == ["blk.1.ffn_up_exps.weight"] and marked["blk.1.ffn_up_exps.weight"][0] == "lossy"
    assert 'class="verdict finding"' in (tmp_path / "r.html").read_text()
    t = page.rows[("data-tensor", "blk.1.ffn_up_exps.weight")]
    assert 0 < float(t["relative_error"]) < 1e-2
    assert_self_contained(page)


def test_report_refuses_bad_input_before_any_work(bundled, ports, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("keep me")
    result = run_cli("report", bundled, ports["lossless"], "-o", out, code=2)
    assert result.output.strip().splitlines() == [
        f"Error: {out}: already exists (use --force to overwrite)"]
    assert out.read_text() == "keep me"
    fresh = tmp_path / "fresh.html"
    for args, message in [((ports["lossless"], bundled), "is a GGUF; verify takes the source checkpoint first"),
                          ((bundled, ports["lossless"], "--layers", "9"), "--layers '9': the model has layers 0..3"),
                          ((bundled, ports["lossless"], "--tokens-file", ports["text"]),
                           "expected whitespace-separated")]:
        result = run_cli("report", *args, "-o", fresh, code=2)
        assert message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not fresh.exists()
    result = run_cli("report", bundled, ports["lossless"], "-o", fresh, "--ctx", "8", code=2)
    assert "--ctx: applies with a text" in result.output
    result = run_cli("report", bundled, ports["lossless"], "-o", tmp_path / "r.json", "--json", code=2)
    assert "name the page .html" in result.output and not (tmp_path / "r.json").exists()


def test_report_without_matplotlib_says_how_to_install_it(bundled, ports, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    result = run_cli("report", bundled, ports["lossless"], "-o", tmp_path / "r.html", code=2)
    assert result.output.strip().splitlines() == [
        "Error: report draws its plots with matplotlib, which is not installed: pip install 'oss-convert[report]'"]


def chromium_run(page: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Debian's Chromium, headless, as a user opens the file: a screenshot, and what the page
    wrote to the browser console (errors, uncaught exceptions)."""
    shot = tmp_path / f"{page.stem}.png"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1280,4000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return shot, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow
def test_the_page_renders_in_chromium_without_console_errors(bundled, ports, tmp_path):
    need_reference("Chromium (Debian's chromium package)", bool(CHROMIUM))
    # the console check sees an error when there is one
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>console.error('boom'); nosuch();</script></body></html>")
    _, console = chromium_run(broken, tmp_path)
    assert any('"boom"' in line for line in console) and any("nosuch" in line for line in console)
    # the bundled model's Q4_K_M port on its held-out text: perplexities near each other, and far
    # below the 576 tokens of its vocabulary (a model that knows its text)
    out = tmp_path / "report.html"
    run("report", bundled, ports["q4_k_m"], "-o", out, "--text-file", ROOT / "fixtures/text/heldout.txt",
        "--ctx", "256")
    page = Page(out.read_text(encoding="utf-8"))
    source, port = (float(page.values[key][0]) for key in ("perplexity_a", "perplexity_b"))
    assert source < 576 / 20 and abs(port / source - 1) < 0.05, (source, port)
    shot, console = chromium_run(out, tmp_path)
    assert console == []
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a page of plots, not a blank one
    if os.environ.get("OSS_CONVERT_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["OSS_CONVERT_KEEP_SCREENSHOT"])
