"""Shared fixtures, each made once a session: generated checkpoints, the bundled model and its
ports, and the references (llama.cpp's converter, llama-quantize, libggml, libllama).

References (llama.cpp's converter source, llama-cpp-python, transformers) are optional
on a developer's machine: tests that need them skip when they are missing, unless
OSS_CONVERT_REQUIRE_REFERENCE=1 (set by .ci/run), where a missing reference fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.checkpoints import write_checkpoint, write_hub_repo

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "fixtures" / "tiny"
REQUIRE_REFERENCE = os.environ.get("OSS_CONVERT_REQUIRE_REFERENCE") == "1"


def need_reference(what: str, available: bool):
    if not available:
        if REQUIRE_REFERENCE:
            pytest.fail(f"reference {what} is missing but OSS_CONVERT_REQUIRE_REFERENCE=1")
        pytest.skip(f"reference {what} not installed")


@pytest.fixture(scope="session")
def bundled() -> Path:
    return BUNDLED


class BundledPorts:
    """The bundled model's GGUFs by convert's --type ("mxfp4": lossless, "q4_k_m", "q8_0", ...),
    each converted on first use and kept for the session. Read them; copy one to change it."""

    def __init__(self, folder: Path):
        self.folder, self.made = folder, {}

    def __getitem__(self, qtype: str) -> Path:
        if qtype not in self.made:
            from tests.cli import run_cli
            out = self.folder / ("tiny.gguf" if qtype == "mxfp4" else f"tiny-{qtype}.gguf")
            run_cli("convert", BUNDLED, "-o", out, "--type", qtype)
            self.made[qtype] = out
        return self.made[qtype]


@pytest.fixture(scope="session")
def bundled_ports(tmp_path_factory) -> BundledPorts:
    return BundledPorts(tmp_path_factory.mktemp("bundled-ports"))


@pytest.fixture(scope="session")
def tiny_gguf(bundled_ports) -> Path:
    """The bundled model's lossless GGUF."""
    return bundled_ports["mxfp4"]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Generated checkpoints of several shapes and layouts, written once per session."""
    base = tmp_path_factory.mktemp("checkpoints")
    out = {
        "tiny": write_hub_repo(base / "tiny", "tiny"),
        "tiny-sharded": write_checkpoint(base / "tiny-sharded", "tiny", shards=3),
        "small": write_checkpoint(base / "small", "small"),
        "mid-sharded": write_hub_repo(base / "mid-sharded", "mid", shards=2),
    }
    return out


@pytest.fixture(scope="session")
def small_gguf(checkpoints, tmp_path_factory) -> Path:
    """The lossless GGUF of the `small` checkpoint (read it; copy it to change it)."""
    from tests.cli import run_cli
    out = tmp_path_factory.mktemp("small-gguf") / "small.gguf"
    run_cli("convert", checkpoints["small"], "-o", out)
    return out


@pytest.fixture(scope="session")
def llama_cpp_dir() -> Path:
    d = os.environ.get("LLAMA_CPP_DIR")
    path = Path(d) if d else None
    need_reference("llama.cpp source (LLAMA_CPP_DIR)", bool(path and (path / "convert_hf_to_gguf.py").is_file()))
    return path


@pytest.fixture(scope="session")
def llama_convert(llama_cpp_dir, tmp_path_factory):
    """Run llama.cpp's convert_hf_to_gguf.py on a checkpoint; cached per (checkpoint, outtype)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        need_reference("transformers (for llama.cpp's converter)", False)
    cache: dict = {}
    out_dir = tmp_path_factory.mktemp("llama-convert")

    def run(model_dir: Path, outtype: str = "bf16") -> Path:
        key = (str(model_dir), outtype)
        if key not in cache:
            out = out_dir / f"{len(cache)}-{model_dir.name}-{outtype}.gguf"
            subprocess.run([sys.executable, str(ROOT / "tests" / "reference" / "llama_convert.py"),
                            str(llama_cpp_dir), str(model_dir), str(out), "--outtype", outtype],
                           check=True, capture_output=True)
            cache[key] = out
        return cache[key]
    return run


@pytest.fixture(scope="session")
def llama_quantized(llama_convert, llama_cpp, tmp_path_factory):
    """llama-quantize applied to llama.cpp's converter output of a checkpoint, by llama_ftype
    (and --pure); each made once a session."""
    from tests.reference.llama_quantize import llama_quantize
    cache: dict = {}
    out_dir = tmp_path_factory.mktemp("llama-quantize")

    def run(model_dir: Path, file_type: int, pure: bool = False) -> Path:
        key = (str(model_dir), file_type, pure)
        if key not in cache:
            out = out_dir / f"{len(cache)}-{model_dir.name}-{file_type}{'-pure' if pure else ''}.gguf"
            llama_quantize(llama_convert(model_dir), out, file_type, pure=pure)
            cache[key] = out
        return cache[key]
    return run


@pytest.fixture(scope="session")
def ggml():
    """ggml's own quantizers and dequantizers (libggml-base, from llama-cpp-python)."""
    try:
        from tests.reference.libggml import GGMLQuantizer
        return GGMLQuantizer()
    except (ImportError, OSError):
        need_reference("libggml-base (llama-cpp-python)", False)


@pytest.fixture(scope="session")
def llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        need_reference("llama-cpp-python", False)
    return llama_cpp


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def hub(monkeypatch, tmp_path, checkpoints, bundled):
    """A local Hub server that huggingface_hub talks to, with two of the test checkpoints as repos."""
    from tests.hub_server import HubServer
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        import huggingface_hub.constants as c
        monkeypatch.setattr(c, "ENDPOINT", server.url)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        server.state.add("openai/gpt-oss-tiny", bundled)
        server.state.add("openai/gpt-oss-mid", checkpoints["mid-sharded"])
        yield server
