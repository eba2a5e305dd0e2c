"""Malformed inputs: one `Error: ...` line naming the file, non-zero exit, no traceback."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from oss_convert.errors import OssConvertError
from oss_convert.files.gguf import read_gguf
from tests.cli import run_cli


def assert_clean_error(args, *expected):
    result = run_cli(*args, code=1)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]


def test_missing_path(tmp_path):
    assert_clean_error(["inspect", tmp_path / "nope"], "no such file")


def test_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    assert_clean_error(["inspect", tmp_path], "not a GPT-OSS checkpoint")


def test_safetensors_of_another_model(tmp_path):
    header = json.dumps({"bert.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    assert_clean_error(["inspect", tmp_path], "not a GPT-OSS checkpoint")


def test_truncated_header(bundled, tmp_path):
    data = (bundled / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:1000])
    assert_clean_error(["inspect", tmp_path], "model.safetensors", "corrupt safetensors header")


def test_data_past_end_of_file(bundled, tmp_path):
    data = (bundled / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])
    assert_clean_error(["inspect", tmp_path], "past the end of the file")


def test_index_naming_a_missing_shard(checkpoints, tmp_path):
    d = shutil.copytree(checkpoints["tiny-sharded"], tmp_path / "ckpt")
    (d / "model-00001-of-00002.safetensors").unlink()
    assert_clean_error(["inspect", d], "model.safetensors.index.json", "model-00001-of-00002.safetensors")


def _rewrite_header(src, dst, edit):
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_blocks_without_scales(bundled, tmp_path):
    _rewrite_header(bundled / "model.safetensors", tmp_path / "model.safetensors",
                    lambda h: h.pop("model.layers.1.mlp.experts.down_proj_scales"))
    assert_clean_error(["inspect", tmp_path], "down_proj_blocks has no matching", "down_proj_scales")


def test_blocks_and_scales_that_disagree(bundled, tmp_path):
    def edit(h):
        e = h["model.layers.0.mlp.experts.down_proj_scales"]
        e["shape"] = [8, 96, 1]
        e["data_offsets"][1] = e["data_offsets"][0] + 8 * 96
    _rewrite_header(bundled / "model.safetensors", tmp_path / "model.safetensors", edit)
    assert_clean_error(["inspect", tmp_path], "disagree")


def test_gguf_with_bad_magic(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGML" + b"\0" * 100)
    assert_clean_error(["inspect", tmp_path / "x.gguf"], "x.gguf", "bad magic")


def test_truncated_gguf(tiny_gguf, tmp_path):
    (tmp_path / "t.gguf").write_bytes(tiny_gguf.read_bytes()[:5000])
    assert_clean_error(["inspect", tmp_path / "t.gguf"], "t.gguf", "truncated")


def test_gguf_tensor_data_past_the_end(tiny_gguf, tmp_path):
    (tmp_path / "t.gguf").write_bytes(tiny_gguf.read_bytes()[:-1000])
    assert_clean_error(["inspect", tmp_path / "t.gguf"], "past the end of the file")


def test_gguf_cut_short_after_it_was_opened(tiny_gguf, tmp_path):
    """The tensors of a file that shrank after its header was read: the one now past its end is
    an error naming the file, not numpy's; the others still read (one mapping per file)."""
    cut = tmp_path / "t.gguf"
    cut.write_bytes(tiny_gguf.read_bytes())
    tensors = list(read_gguf(cut).tensors.values())
    first, last = tensors[0], max(tensors, key=lambda t: t.offset)
    with open(cut, "r+b") as f:
        f.truncate(last.offset + last.nbytes - 1)
    assert first.raw().tobytes() == tiny_gguf.read_bytes()[first.offset:first.offset + first.nbytes]
    with pytest.raises(OssConvertError, match="t.gguf.*past the end of the file"):
        last.raw()
    assert first.file is last.file


def test_converting_a_gguf_of_another_model(tmp_path):
    from tests.app_stores import other_gguf
    llama = other_gguf(tmp_path / "llama.gguf")
    assert_clean_error(["convert", llama, "-o", tmp_path / "again.gguf", "--type", "q4_k_m"], "llama.gguf",
                       "not a GPT-OSS model")
    assert not (tmp_path / "again.gguf").exists()


def test_split_gguf_with_a_missing_part(tiny_gguf, tmp_path):
    shutil.copy(tiny_gguf, tmp_path / "m-00001-of-00002.gguf")
    assert_clean_error(["inspect", tmp_path / "m-00001-of-00002.gguf"], "missing part", "m-00002-of-00002.gguf")
