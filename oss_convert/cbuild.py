"""Compiling the package's C sources on first use, for this machine, the way Triton builds its
launchers: the machine's own C compiler (`$CC`, else cc, gcc or clang) with -march=native, the
library cached under ~/.cache/oss-convert/native keyed by the sources (and the local headers they
include), the flags, the compiler and the CPU. A build that fails leaves its reason (the
compiler's last lines) beside where the library would be, so no later process tries the same
build again; without a library the callers keep their numpy path. No torch here: the format
codecs use it too.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .user_cache import cache_folder

# -ffp-contract=off: a separate multiply and add in the source must not become one fused
# operation, or the results would not be the numpy codecs' (and ggml's) bit for bit
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared"]
REASON_LINES = 6  # of the compiler's output, kept as the reason a build failed
TIMEOUT_S = 300

Sources = Path | Sequence[Path]


@dataclass(frozen=True)
class Build:
    """A library built from C sources, or why there is none."""
    path: Path | None
    failure: str | None = None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _text_with_headers(source: Path, seen: set[Path] | None = None) -> str:
    """The source and every header it includes by a quoted path, and theirs in turn (ours). A
    missing header reads as empty: the build then fails, and the caller keeps its numpy path."""
    seen = set() if seen is None else seen
    seen.add(source.resolve())
    text = source.read_text() if source.is_file() else ""
    headers = [(source.parent / h) for h in re.findall(r'^#include "([^"]+)"', text, flags=re.MULTILINE)]
    return "\0".join([text, *(_text_with_headers(h, seen) for h in headers if h.resolve() not in seen)])


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def cache_dir() -> Path:
    return cache_folder("native")


def _as_list(sources: Sources) -> list[Path]:
    return [sources] if isinstance(sources, Path) else list(sources)


def _last_lines(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-REASON_LINES:])


def build(sources: Sources, extra_flags: tuple[str, ...] = (), openmp: bool = False) -> Build:
    """The shared library built from `sources` (now, if the cache lacks it and no earlier build of
    the same sources and flags failed). With `openmp`, -fopenmp where the compiler has it (else
    one thread)."""
    files = _as_list(sources)
    cc = compiler()
    if cc is None:
        return Build(None, "no C compiler ($CC, cc, gcc or clang)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return Build(None, f"the C compiler {cc} does not run ({e})")
    key = hashlib.sha256("\0".join([*map(_text_with_headers, files), cc, version, _cpu_flags(), str(openmp),
                                    *extra_flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{files[0].stem}-{key}.so"
    failed = target.with_suffix(".failed")
    if target.exists():
        return Build(target)
    if failed.exists():
        return Build(None, f"{failed.read_text(errors='replace').strip()}\n(an earlier build; remove {failed} to "
                           "try again)")
    reason = ""
    for threads in ((["-fopenmp"], []) if openmp else ([],)):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
                partial = Path(tmp.name)
        except OSError as e:  # no writable cache: no library, not a traceback
            return Build(None, f"the cache folder {target.parent} cannot be written ({e.strerror or e})")
        command = [cc, *FLAGS, *threads, *extra_flags, *map(str, files), "-o", str(partial), "-lm"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
            if done.returncode == 0:
                os.replace(partial, target)  # whole or not at all, for processes building at once
                return Build(target)
            reason = f"{Path(cc).name} exited with status {done.returncode}:\n{_last_lines(done.stderr + done.stdout)}"
        except subprocess.TimeoutExpired:
            reason = f"{Path(cc).name} took more than {TIMEOUT_S} s"
        except (OSError, subprocess.SubprocessError) as e:
            reason = f"{Path(cc).name} did not run ({e})"
        finally:
            partial.unlink(missing_ok=True)
    try:
        failed.write_text(reason + "\n")
    except OSError:
        pass
    return Build(None, reason)


def compiled(sources: Sources, extra_flags: tuple[str, ...] = (), openmp: bool = False) -> Path | None:
    """The library's path (see `build`), or None where it cannot be built."""
    return build(sources, extra_flags, openmp).path


def _load(path: Path) -> ctypes.CDLL:
    return ctypes.CDLL(str(path))


def library(sources: Sources, what: str, fallback: str, openmp: bool = False,
            load: Callable[[Path], ctypes.CDLL] | None = None) -> ctypes.CDLL | None:
    """The library built from `sources`, loaded by `load` (a cached one that will not load, say
    truncated, is built anew); None where it cannot be built or loaded, with one note on stderr
    that says why: "note: {what} could not be built (...); {fallback}"."""
    if load is None:
        load = _load
    made = build(sources, openmp=openmp)
    if made.path is not None:
        try:
            return load(made.path)
        except OSError:
            made.path.unlink(missing_ok=True)
        made = build(sources, openmp=openmp)
        if made.path is not None:
            try:
                return load(made.path)
            except OSError as e:
                made = Build(None, f"the built library does not load ({e})")
    reason = (made.failure or "").replace("\n", "\n  ")
    print(f"note: {what} could not be built: {reason}\n  {fallback}", file=sys.stderr)
    return None
