"""Requantized conversion: the same file as llama.cpp's converter followed by llama-quantize."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from oss_convert.files.gguf import read_gguf
from oss_convert.plan.mixtures import MIXTURES
from tests.cli import run_cli
from tests.gguf_compare import gguf_differences
from tests.reference.llama_quantize import llama_quantize


def convert(*args):
    return run_cli("convert", *args)


@pytest.fixture(scope="module")
def quantized_reference(llama_quantized):
    """llama-quantize's file of a checkpoint for one of our mixture names."""
    def run(model_dir, mixture: str):
        m = MIXTURES[mixture]
        return llama_quantized(model_dir, m.file_type, pure=m.pure)
    return run


@pytest.mark.reference
@pytest.mark.parametrize("name", ["tiny", "small", "mid-sharded"])
@pytest.mark.parametrize("mixture", ["q4_k_m", "q4_k_s", "q4_k"] + [
    m for m in MIXTURES if m not in ("q4_k_m", "q4_k_s", "q4_k")])
def test_identical_to_llama_quantize(checkpoints, quantized_reference, tmp_path, name, mixture):
    reference = quantized_reference(checkpoints[name], mixture)
    ours = tmp_path / "ours.gguf"
    convert(checkpoints[name], "-o", ours, "--type", mixture)
    assert gguf_differences(ours, reference) == []


@pytest.mark.reference
def test_keep_mxfp4_experts(checkpoints, llama_convert, llama_cpp, quantized_reference, tmp_path):
    """Experts stay the lossless MXFP4 bytes; every other tensor is what Q4_K_M makes of it."""
    src = checkpoints["mid-sharded"]
    lossless = llama_convert(src)
    reference = read_gguf(quantized_reference(src, "q4_k_m")).tensors
    ours_path = tmp_path / "ours.gguf"
    convert(src, "-o", ours_path, "--type", "q4_k_m", "--keep-mxfp4-experts")
    ours, original = read_gguf(ours_path).tensors, read_gguf(lossless).tensors
    assert list(ours) == list(reference)
    for name, t in ours.items():
        expected = original[name] if name.endswith("_exps.weight") else reference[name]
        assert (t.type, t.shape) == (expected.type, expected.shape), name
        assert t.raw().tobytes() == expected.raw().tobytes(), name
    assert read_gguf(ours_path).get("general.file_type") == 15


def test_dry_run_explains_the_fallbacks(tmp_path):
    from fixtures.checkpoints import write_checkpoint
    write_checkpoint(tmp_path, "20b", shards=3, sparse=True)
    result = run_cli("convert", tmp_path, "--type", "q4_k_m", "--dry-run", "--json")
    plan = json.loads(result.stdout)["plan"]
    assert plan["types"] == {"F32": 289, "Q5_0": 121, "Q8_0": 25, "Q4_K": 24}
    gate = next(g for g in plan["groups"] if g["tensor"] == "blk.N.ffn_gate_exps.weight")
    assert gate["type"] == "Q5_0" and gate["count"] == 24
    assert "ne0 = 2880 is not a multiple of 256: Q4_K falls back to Q5_0" in gate["reason"]
    down = {g["type"]: g for g in plan["groups"] if g["tensor"] == "blk.N.ffn_down_exps.weight"}
    assert down["Q8_0"]["layers"] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]
    assert "Q6_K falls back to Q8_0" in down["Q8_0"]["reason"]
    assert not list(tmp_path.glob("*.gguf"))
    human = run_cli("convert", tmp_path, "--type", "q4_k_m", "--dry-run")
    assert "Q4_K falls back to Q5_0" in human.output and "expected tensor data" in human.output


def test_cost_document(bundled, tmp_path):
    result = run_cli("convert", bundled, "-o", tmp_path / "q.gguf", "--type", "q4_k_m", "--json")
    doc = json.loads(result.stdout)
    cost = doc["result"]["cost"]
    by_name = {t["name"]: t for t in cost["tensors"]}
    gate = by_name["blk.0.ffn_gate_exps.weight"]
    assert gate["from"] == "MXFP4" and gate["to"] == "Q5_0"
    assert 20 < gate["snr_db"] < 40 and 0 < gate["relative_error"] < 0.1 and gate["max_abs_error"] > 0
    q8 = by_name["blk.3.ffn_down_exps.weight"]
    assert q8["to"] == "Q8_0" and q8["snr_db"] > gate["snr_db"] + 10  # 8 bits beat 5 bits
    assert 4 < cost["bits_per_weight"] < 9
    assert "blk.0.attn_norm.weight" not in by_name  # unchanged tensors cost nothing


def _with_infinity(src, dst):
    """A copy of a checkpoint whose layer-0 q_proj weight holds one +inf (BF16 0x7F80)."""
    from oss_convert.files.safetensors import read_header
    from tests.conftest import copy_tree
    copy_tree(src, dst)
    stored = read_header(dst / "model.safetensors").tensors["model.layers.0.self_attn.q_proj.weight"]
    with open(stored.path, "r+b") as f:
        f.seek(stored.offset + 2 * 37)
        f.write(b"\x80\x7f")
    return dst


def test_a_source_with_an_infinity_is_refused_like_llama_quantize_does(bundled, tmp_path):
    """ggml's row validation rejects the Q5_0 block whose scale became infinite; so do we,
    with one line naming the tensor, and no file."""
    src = _with_infinity(bundled, tmp_path / "inf")
    out = tmp_path / "q.gguf"
    result = run_cli("convert", src, "-o", out, "--type", "q4_k_m", code=1)
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()  # the plan, printed before the work, then one error
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == lines[-1:] and "Traceback" not in result.output
    assert errors[0].startswith(
        "Error: blk.0.attn_q.weight: quantized data validation failed: 1 infinite or NaN Q5_0 block scales"), errors
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["inf"]  # no partial file left either
    # the lossless conversion has nothing to quantize, and keeps the infinity as it is
    run_cli("convert", src, "-o", out)


def test_the_refusal_is_the_only_thing_on_stderr_after_the_plan(bundled, tmp_path):
    """Run as a user runs it (CliRunner leaves Python's warnings to pytest): the infinity
    makes numpy's arithmetic warn in the codecs, on the worker threads too, and none of
    that may reach the terminal around the one error line."""
    src = _with_infinity(bundled, tmp_path / "inf")
    done = subprocess.run([sys.executable, "-m", "oss_convert.cli", "convert", str(src), "-o", str(tmp_path / "q.gguf"),
                           "--type", "q4_k_m"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("Plan: Q4_K_M") and lines[-1].startswith("Error: blk.0.attn_q.weight: quantized data")
    # between them only the plan's table, indented
    assert all(line.startswith("  ") for line in lines[1:-1]), done.stderr


@pytest.mark.reference
@pytest.mark.slow
def test_llama_quantize_refuses_the_same_source(bundled, llama_convert, llama_cpp, tmp_path):
    src = _with_infinity(bundled, tmp_path / "inf")
    with pytest.raises(RuntimeError, match="llama_model_quantize failed"):
        llama_quantize(llama_convert(src), tmp_path / "ref.gguf", MIXTURES["q4_k_m"].file_type)


# --------------------------------------------------------------------------- a GGUF as the source

@pytest.fixture(scope="module")
def ollama_gguf(bundled, tmp_path_factory):
    """Ollama's older layout of the bundled model, and the llama.cpp-layout file the converter
    writes from the same weights (--to safetensors, then llama.cpp's convert_hf_to_gguf.py)."""
    from tests import gguf_edit
    folder = tmp_path_factory.mktemp("ollama-source")
    lossless = folder / "lossless.gguf"
    convert(bundled, "-o", lossless)
    return gguf_edit.ollama_layout(bundled, lossless, folder / "ollama.gguf")


@pytest.fixture(scope="module")
def converter_of_ollama(ollama_gguf, llama_convert, tmp_path_factory):
    weights = tmp_path_factory.mktemp("ollama-weights") / "tiny"  # the folder's name is general.name
    convert(ollama_gguf, "--to", "safetensors", "-o", weights)
    return llama_convert(weights)


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("mixture", list(MIXTURES))
def test_a_lossless_gguf_requantizes_as_llama_quantize_does(tiny_gguf, ollama_gguf, converter_of_ollama, llama_cpp,
                                                             tmp_path, mixture):
    """From llama.cpp's layout, the file llama-quantize --allow-requantize writes from it; from
    Ollama's, the file llama-quantize writes from the converter's file of the same weights."""
    m = MIXTURES[mixture]
    for source, reference_source in ((tiny_gguf, tiny_gguf), (ollama_gguf, converter_of_ollama)):
        ours, reference = tmp_path / f"ours-{source.stem}.gguf", tmp_path / f"ref-{source.stem}.gguf"
        convert(source, "-o", ours, "--type", mixture)
        llama_quantize(reference_source, reference, m.file_type, pure=m.pure)
        assert gguf_differences(ours, reference) == [], (source.name, mixture)


@pytest.mark.reference
def test_ollamas_layout_converts_to_llama_cpps_lossless_file(ollama_gguf, converter_of_ollama, tiny_gguf, tmp_path):
    ours = tmp_path / "from-ollama.gguf"
    convert(ollama_gguf, "-o", ours)
    assert gguf_differences(ours, converter_of_ollama) == []
    assert gguf_differences(ours, tiny_gguf) == []  # and the lossless file of the original weights


@pytest.mark.reference
def test_a_lossy_port_is_refused_unless_allowed(bundled_ports, llama_cpp, tmp_path):
    q8 = bundled_ports["q8_0"]
    for args, reason in ((["--type", "q4_k_m"], "compounds the loss"), ([], "the lossless file can only be made"),
                         (["--type", "q4_k_m", "--keep-mxfp4-experts", "--allow-requantize"], "not MXFP4")):
        line = run_cli("convert", q8, "-o", tmp_path / "x.gguf", *args, code=1).output.strip()
        assert line.startswith("Error: ") and reason in line and "\n" not in line, line
    assert not (tmp_path / "x.gguf").exists()
    ours, reference = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    convert(q8, "-o", ours, "--type", "q4_k_m", "--allow-requantize")
    llama_quantize(q8, reference, MIXTURES["q4_k_m"].file_type)
    assert gguf_differences(ours, reference) == []
