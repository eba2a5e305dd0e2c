"""The CPU kernels: the C sources beside this file built into one library on first use for the
machine's own CPU (oss_convert.cbuild: AVX-512 where it has it), and loaded. Without a compiler,
or with OSS_CONVERT_NATIVE=0, `library()` is None and the runtime keeps its numpy-and-torch path.

products.py calls its matrix products, decode_step.py a decode step's attention and MoE blocks;
abi.py mirrors its interface.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path

from .... import cbuild
from .abi import FORMATS, Q8_FORMATS, declare

# one library, its sources by job (kernels.h says what each holds)
SOURCES = tuple(Path(__file__).with_name(f"{stem}.c")
                for stem in ("expand", "float_products", "q8_products", "batch", "decoder"))
# How activations meet the weights. "float32": exactly, as transformers computes; "q8": rounded
# to Q8_0 first (per 32 values), as llama.cpp's CPU backend multiplies Q8_FORMATS, in integers
ACTIVATIONS = ("float32", "q8")

__all__ = ["ACTIVATIONS", "FORMATS", "Q8_FORMATS", "SOURCES", "build", "for_format", "library", "load", "loaded"]


def build(extra_flags: tuple[str, ...] = ()) -> Path | None:
    """The compiled library (built now if the cache lacks it), or None where it cannot be built."""
    return cbuild.compiled(SOURCES, extra_flags, openmp=True)


def load(path: Path) -> ctypes.CDLL:
    # Our OpenMP runtime must not spin between calls: its idle threads would take the cores from
    # torch's GEMM, which runs next (torch has its own copy, already set up). Passive waiting, for
    # this library's copy only, unless the user chose a policy.
    chosen = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        lib = ctypes.CDLL(str(path))
    finally:
        if chosen is None:
            del os.environ["OMP_WAIT_POLICY"]
    return declare(lib)


@cache
def library() -> ctypes.CDLL | None:
    if os.environ.get("OSS_CONVERT_NATIVE", "1") == "0":
        return None
    return cbuild.library(SOURCES, "the CPU kernels", "the CPU runtime runs on numpy and torch, slower",
                          openmp=True, load=load)


def loaded() -> ctypes.CDLL:
    """The library, where the caller has made sure it is built (a weight kept in its stored form)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the CPU kernels are not built")
    return lib


def for_format(format: str) -> ctypes.CDLL | None:
    """The library, where it is built and multiplies `format` in its stored form."""
    return library() if format in FORMATS else None
