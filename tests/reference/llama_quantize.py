"""llama-quantize through libllama (llama-cpp-python): the reference for requantized files."""

from __future__ import annotations

import ctypes
from pathlib import Path


def llama_quantize(src: Path, dst: Path, file_type: int, *, pure: bool = False, threads: int = 2) -> None:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.allow_requantize = True
    params.pure = pure
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with {rc}")


if __name__ == "__main__":
    import sys
    pure, threads = len(sys.argv) > 4 and sys.argv[4] == "pure", int(sys.argv[5]) if len(sys.argv) > 5 else 2
    llama_quantize(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), pure=pure, threads=threads)
