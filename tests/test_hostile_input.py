"""Hostile inputs through inspect, convert and verify: config.json fields, ggml type ids, tensor
offsets, and the one fuzzer, a seeded campaign of mutations (config.json fields, and the bytes of
safetensors and GGUF headers, cut short or not). Each ends in one `Error:` line (exit 1;
verify's unreadable input: 2), before any work, with no file left behind."""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from oss_convert.files.gguf import GGUFWriteTensor, _pack_string, _pack_value, read_gguf, write_gguf
from tests.cli import run_cli

EXIT = {"inspect": 1, "convert": 1, "verify": 2, "back": 1}


def run(*args):
    """A hostile input's run, whose exit code the assertions below check."""
    return run_cli(*args, code=None)


def assert_one_error(result, exit_code: int, *expected: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]


def leftovers(folder: Path, before: set[str]) -> list[str]:
    return sorted(set(p.name for p in folder.iterdir()) - before)


@pytest.fixture(scope="module")
def lossless(tiny_gguf) -> Path:
    return tiny_gguf


def each_command(src: Path, port: Path, out_dir: Path):
    """(command, CLI arguments) for every command a bad input must be refused by."""
    return [("inspect", ["inspect", src if src.suffix != ".gguf" else port]),
            ("convert", ["convert", src, "-o", out_dir / "out.gguf"]),
            ("verify", ["verify", src, port])]


# ---------------------------------------------------------------------------- config.json

CONFIG_CASES = [
    ("hidden_size", "2880", "'hidden_size' must be a whole number"),
    ("num_hidden_layers", [4], "'num_hidden_layers' must be a whole number"),
    ("num_hidden_layers", "missing", "required field 'num_hidden_layers' is missing"),
    ("rope_scaling", [32.0], "'rope_scaling' must be an object"),
    ("vocab_size", 0, "'vocab_size' must be a whole number from 1"),
    ("num_local_experts", 10 ** 12, "'num_local_experts' must be a whole number from 1"),
    ("num_experts_per_tok", 64, "experts per token (64) exceeds the expert count (8)"),
    ("swiglu_limit", -3.0, "'swiglu_limit' must be a positive number"),
    ("rms_norm_eps", "1e-5", "'rms_norm_eps' must be a positive number"),
    ("head_dim", True, "'head_dim' must be a whole number"),
    ("num_key_value_heads", 3, "4 attention heads do not divide into 3 KV heads"),
    ("hidden_size", 64, "has shape [576, 96], but the config gives [576, 64]"),
    ("vocab_size", 1000, "has shape [576, 96], but the config gives [1000, 96]"),
]


def hostile_config(bundled: Path, dst: Path, field: str, value) -> Path:
    shutil.copytree(bundled, dst)
    cfg = json.loads((dst / "config.json").read_text())
    if value == "missing":
        del cfg[field]
    else:
        cfg[field] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("field,value,message", CONFIG_CASES, ids=[f"{c[0]}={c[1]!r}"[:40] for c in CONFIG_CASES])
def test_hostile_config_fields(bundled, lossless, tmp_path, field, value, message):
    src = hostile_config(bundled, tmp_path / "model", field, value)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for command, args in each_command(src, lossless, out_dir):
        if command == "inspect":
            args = ["inspect", src]
        assert_one_error(run(*args), EXIT[command], "config.json" if "shape" not in message else "model.safetensors",
                         message)
        assert leftovers(out_dir, set()) == []


def test_a_config_that_is_not_an_object(bundled, lossless, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(bundled, src)
    (src / "config.json").write_text("[1, 2, 3]")
    for command, args in each_command(src, lossless, tmp_path):
        assert_one_error(run(*args), EXIT[command], "config.json", "not a JSON object")


# ---------------------------------------------------------------------------- GGUF tensor infos

def patched_gguf(src: Path, dst: Path, name: str, *, type_code: int | None = None, offset_delta: int = 0) -> Path:
    """`src` with one tensor's ggml type or data offset changed in its header, data kept."""
    g = read_gguf(src)
    first = min(t.offset for t in g.tensors.values())
    header = [b"GGUF", struct.pack("<IQQ", 3, len(g.tensors), len(g.metadata))]
    for key, value in g.metadata.items():
        header += [_pack_string(key), struct.pack("<I", value.type), _pack_value(value)]
    for t in g.tensors.values():
        typ, offset = t.type, t.offset - first
        if t.name == name:
            typ, offset = (type_code if type_code is not None else typ), offset + offset_delta
        header += [_pack_string(t.name), struct.pack("<I", len(t.shape)), struct.pack(f"<{len(t.shape)}Q", *t.shape),
                   struct.pack("<IQ", typ, offset)]
    raw = b"".join(header)
    dst.write_bytes(raw + b"\0" * (-len(raw) % 32) + src.read_bytes()[first:])
    return dst


GGUF_CASES = [
    ("blk.1.attn_q.weight", {"type_code": 99}, "has unknown ggml type 99"),
    ("blk.0.attn_k.weight", {"offset_delta": 1}, "expected"),
    ("blk.2.attn_norm.weight", {"offset_delta": -32}, "expected"),
    ("output.weight", {"offset_delta": 1 << 40}, "expected"),
]


@pytest.mark.parametrize("name,edit,message", GGUF_CASES, ids=[f"{c[0]}-{c[1]}" for c in GGUF_CASES])
def test_hostile_gguf_tensor_infos(bundled, lossless, tmp_path, name, edit, message):
    bad = patched_gguf(lossless, tmp_path / "bad.gguf", name, **edit)
    assert_one_error(run("inspect", bad), 1, "bad.gguf", name, message)
    assert_one_error(run("verify", bundled, bad), 2, "bad.gguf", name, message)
    assert_one_error(run("convert", bad, "-o", tmp_path / "back", "--to", "safetensors"), 1, "bad.gguf", message)
    assert leftovers(tmp_path, {"bad.gguf"}) == []


def gguf_with_type(src: Path, dst: Path, name: str, qtype: int) -> Path:
    """A well-formed GGUF whose tensor `name` has type `qtype` (zero bytes)."""
    g = read_gguf(src)

    def produce(t):
        if t.name != name:
            return lambda: t.raw()
        row = GGUFWriteTensor(name, int(qtype), t.shape, None).nbytes // int(np.prod(t.shape[1:]))
        return lambda: np.zeros(tuple(reversed(t.shape[1:])) + (row,), np.uint8)
    with open(dst, "wb") as f:
        write_gguf(f, g.metadata, [GGUFWriteTensor(n, int(qtype) if n == name else t.type, t.shape, produce(t))
                                   for n, t in g.tensors.items()])
    return dst


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.ffn_down_exps.weight"])
def test_the_retired_type_4_outside_ollamas_expert_tensors(bundled, lossless, tmp_path, name):
    """Type 4 is MXFP4 only in the expert weights of Ollama's gptoss files; anywhere else a
    well-formed file with it is refused as it opens."""
    bad = gguf_with_type(lossless, tmp_path / "bad.gguf", name, 4)
    assert_one_error(run("inspect", bad), 1, "bad.gguf", name, "has ggml type 4, retired from ggml")
    assert_one_error(run("verify", bundled, bad), 2, "bad.gguf", name, "has ggml type 4")
    assert_one_error(run("convert", bad, "-o", tmp_path / "back", "--to", "safetensors"), 1, "has ggml type 4")
    assert leftovers(tmp_path, {"bad.gguf"}) == []


def test_a_known_type_with_no_dequantizer_is_reported_where_values_are_needed(bundled, lossless, tmp_path):
    """Q8_1 is a real ggml type (inspect lists it) that no file format stores weights in and
    gguf-py cannot decode: verify and --to safetensors refuse it in one line."""
    port = gguf_with_type(lossless, tmp_path / "q8_1.gguf", "blk.0.ffn_down_exps.weight", T.Q8_1)
    doc = json.loads(run("inspect", port, "--json").output)
    assert {t["name"]: t["format"] for t in doc["tensors"]}["blk.0.ffn_down_exps.weight"] == "Q8_1"
    assert_one_error(run("verify", bundled, port), 2, "q8_1.gguf", "blk.0.ffn_down_exps.weight is Q8_1",
                     "no dequantizer")
    assert_one_error(run("convert", port, "-o", tmp_path / "back", "--to", "safetensors"), 1,
                     "blk.0.ffn_down_exps.weight is Q8_1, not MXFP4")
    assert leftovers(tmp_path, {"q8_1.gguf"}) == []


def test_gguf_metadata_of_the_wrong_type(lossless, tmp_path, bundled):
    from oss_convert.files.gguf import Value, ValueType
    g = read_gguf(lossless)
    cases = [("gpt-oss.block_count", Value(ValueType.STRING, "four"), "'gpt-oss.block_count' must be a whole number"),
             ("gpt-oss.expert_count", Value(ValueType.UINT32, 0), "'gpt-oss.expert_count' must be a whole number"),
             ("general.architecture", Value(ValueType.UINT32, 7), "general.architecture must be a string"),
             ("tokenizer.ggml.tokens", Value(ValueType.UINT32, 7), "tokenizer.ggml.tokens must be a list")]
    for key, value, message in cases:
        bad = tmp_path / "bad.gguf"
        with open(bad, "wb") as f:
            write_gguf(f, {**g.metadata, key: value},
                       [GGUFWriteTensor(n, t.type, t.shape, lambda t=t: t.raw()) for n, t in g.tensors.items()])
        commands = [("back", ["convert", bad, "-o", tmp_path / "back", "--to", "safetensors"])]
        if not key.startswith("tokenizer."):  # inspect and verify do not need the token texts
            commands += [("inspect", ["inspect", bad]), ("verify", ["verify", bundled, bad])]
        for command, args in commands:
            assert_one_error(run(*args), EXIT[command], "bad.gguf", message)
        assert leftovers(tmp_path, {"bad.gguf"}) == []


# ---------------------------------------------------------------------------- seeded campaign

HOSTILE_VALUES = [None, "x", "", [], {}, [1], True, False, 0, -1, 0.5, 1e30, 2 ** 40, float("nan"), float("inf"),
                  {"factor": "x"}, 7.0]


@pytest.mark.slow
def test_seeded_campaign_of_mutated_inputs_never_ends_in_a_traceback(bundled, lossless, tmp_path):
    """450 mutations through inspect, convert and verify (config.json fields; bytes of the
    safetensors header and of the GGUF header, some files cut short there): each either works or
    ends in one `Error:` line; no traceback, no half-written output."""
    rng = random.Random(20261202)
    config = json.loads((bundled / "config.json").read_text())
    header_end = min(t.offset for t in read_gguf(lossless).tensors.values())
    gguf_bytes = lossless.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for case in range(150):
        src = tmp_path / f"cfg{case}"
        shutil.copytree(bundled, src)
        mutated = dict(config)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.choice(sorted(config))] = rng.choice(HOSTILE_VALUES)
        (src / "config.json").write_text(json.dumps(mutated))
        check_all_commands(src, lossless, out_dir, f"config {mutated}")
        shutil.rmtree(src)
    for case in range(150):
        blob = bytearray(gguf_bytes)
        for _ in range(rng.randint(1, 6)):
            blob[rng.randrange(header_end)] = rng.randrange(256)
        port = tmp_path / "m.gguf"
        port.write_bytes(bytes(blob[:rng.randrange(header_end)] if case % 3 == 0 else blob))
        check_all_commands(bundled, port, out_dir, f"GGUF case {case}")
        back = run("convert", port, "-o", out_dir / "back", "--to", "safetensors")
        assert_no_crash(back, (0, 1), 1, f"GGUF case {case}: --to safetensors")
        shutil.rmtree(out_dir / "back", ignore_errors=True)
    safetensors = (bundled / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", safetensors[:8])
    for case in range(150):
        src = tmp_path / f"st{case}"
        shutil.copytree(bundled, src, ignore=shutil.ignore_patterns("original"))
        blob = bytearray(safetensors)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(8 + n)] = rng.randrange(256)
        cut = rng.randrange(8 + n + 64) if case % 3 == 0 else len(blob)  # a third cut short around the header
        (src / "model.safetensors").write_bytes(bytes(blob[:cut]))
        check_all_commands(src, lossless, out_dir, f"safetensors case {case}")
        shutil.rmtree(src)


def check_all_commands(src: Path, port: Path, out_dir: Path, what: str) -> None:
    for command, args in each_command(src, port, out_dir):
        result = run(*args)
        assert_no_crash(result, (0, 1, 2) if command == "verify" else (0, 1), EXIT[command], f"{what}: {command}")
        for name in leftovers(out_dir, set()):
            assert name == "out.gguf" and result.exit_code == 0, f"{what}: {command} left {name}"
            (out_dir / name).unlink()


def assert_no_crash(result, allowed, error_exit: int, what: str) -> None:
    """Exit codes as allowed; where the exit says bad input, exactly one `Error:` line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{what}: {result.exception!r}"
    assert result.exit_code in allowed, f"{what}: exit {result.exit_code}: {result.output}"
    if result.exit_code == error_exit:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), f"{what}: {result.output}"
