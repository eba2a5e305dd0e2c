"""Compiling the package's C sources on first use, for this machine, the way Triton builds its
launchers: the machine's own C compiler (`$CC`, else cc, gcc or clang) with -march=native, the
library cached under ~/.cache/oss-convert/native keyed by the source (and the local headers it
includes), the flags, the compiler and the CPU. Without a compiler or a writable cache there is
no library, and callers keep their numpy path. No torch here: the format codecs use it too.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# -ffp-contract=off: a separate multiply and add in the source must not become one fused
# operation, or the results would not be the numpy codecs' (and ggml's) bit for bit
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared"]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _text_with_headers(source: Path) -> str:
    """The source and every header it includes by a quoted path (ours; they include no others).
    A missing header reads as empty: the build then fails, and the caller keeps its numpy path."""
    text = source.read_text()
    headers = [source.parent / h for h in re.findall(r'^#include "([^"]+)"', text, flags=re.MULTILINE)]
    return "\0".join([text, *(h.read_text() if h.is_file() else "" for h in headers)])


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "oss-convert" / "native"


def compiled(source: Path, extra_flags: tuple[str, ...] = (), openmp: bool = False) -> Path | None:
    """The shared library built from `source` (now, if the cache lacks it), or None where it
    cannot be built. With `openmp`, -fopenmp where the compiler has it (else one thread)."""
    cc = compiler()
    if cc is None:
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    key = hashlib.sha256("\0".join([_text_with_headers(source), cc, version, _cpu_flags(), str(openmp),
                                    *extra_flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    for threads in ((["-fopenmp"], []) if openmp else ([],)):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
                partial = Path(tmp.name)
        except OSError:  # no writable cache: no library, not a traceback
            return None
        try:
            done = subprocess.run([cc, *FLAGS, *threads, *extra_flags, str(source), "-o", str(partial), "-lm"],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.replace(partial, target)  # whole or not at all, for processes building at once
                return target
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            partial.unlink(missing_ok=True)
    return None


def library(source: Path, openmp: bool = False, load=ctypes.CDLL) -> ctypes.CDLL | None:
    """The library built from `source`, loaded by `load` (a cached one that will not load, say
    truncated, is built anew); None where it cannot be built or loaded."""
    path = compiled(source, openmp=openmp)
    if path is None:
        return None
    try:
        return load(path)
    except OSError:
        path.unlink(missing_ok=True)
    path = compiled(source, openmp=openmp)
    try:
        return load(path) if path is not None else None
    except OSError:
        return None
