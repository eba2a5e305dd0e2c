"""The codecs' C code (iq4_search.c, kquant_search.c, mxfp4_requant.c), built for this machine on
first use (oss_convert.cbuild). Each does the float32 operations of its numpy twin in the same
order, so the bytes are the same; without a compiler, or with OSS_CONVERT_NATIVE=0, the numpy
code runs."""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

from .. import cbuild


@functools.cache
def library(stem: str) -> ctypes.CDLL | None:
    """formats/<stem>.c compiled and loaded, or None (one note on stderr when it cannot be built)."""
    if os.environ.get("OSS_CONVERT_NATIVE", "1") == "0":
        return None
    return cbuild.library(Path(__file__).with_name(f"{stem}.c"), f"{stem}.c",
                          "its quantizers run in numpy, slower")
