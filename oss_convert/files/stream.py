"""Writing and reading tensor bytes in bounded chunks.

Tensor producers return either one array or an iterable of consecutive chunks; reads use
positioned reads into fresh buffers rather than mmap, so that streaming a 65 GB model
does not pile file pages into the process's resident set. The runtime, which does multiply
from mapped pages, maps a used tensor's pages in at once (`map_in`). glibc's allocator is told
to keep freed chunks for reuse (`reuse_freed_chunks`), and to give them back where a long run
is done with them (`release_freed_memory`).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
from collections.abc import Callable, Iterable
from typing import BinaryIO

import numpy as np

Produced = np.ndarray | Iterable[np.ndarray]
CHUNK_BYTES = 64 * 1024 * 1024
# glibc serves allocations above its mmap threshold (128 KB at start, raised only when such a
# block happens to be freed) with fresh pages from the kernel, zeroed and faulted in one by one:
# streaming 13 GB in chunks of a few MB then spends more time in page faults than in the work
# (verify on the 20b: 48 s against 20 s), depending on what the process freed before. A fixed
# threshold above the chunks lets freed chunks be reused, whatever ran first.
MMAP_THRESHOLD = 128 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


@functools.cache
def _libc(name: str):
    """The C library's function `name`, or None where it has none (glibc's own, elsewhere)."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


def reuse_freed_chunks() -> None:
    """Let freed chunk buffers be reused instead of returned to the kernel (glibc only; a no-op
    elsewhere)."""
    mallopt = _libc("mallopt")
    if mallopt is None:
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)


def release_freed_memory() -> None:
    """Give the pages of freed heap blocks back to the kernel (glibc's malloc_trim; a no-op
    elsewhere). Under reuse_freed_chunks' threshold, every block below 128 MB comes from the heap,
    and a heap cannot shrink past a block still in use: a 512-token `compare --full` kept 2-3 GB
    of freed attention scores and log-probabilities resident. The runtime calls this after each
    layer, where its blocks of that layer are all freed."""
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)


def write_produced(out: BinaryIO | BackgroundWriter, name: str, produced: Produced, expected: int,
                   on_bytes: Callable[[int], None] | None = None) -> None:
    chunks = [produced] if isinstance(produced, np.ndarray) else produced
    written = 0
    for chunk in chunks:
        chunk = np.ascontiguousarray(chunk)
        out.write(memoryview(chunk).cast("B"))  # type: ignore[arg-type]  # an ndarray is a buffer; the view keeps it
        written += chunk.nbytes
        if on_bytes:
            on_bytes(chunk.nbytes)
    if written != expected:
        raise ValueError(f"tensor {name}: produced {written} bytes, expected {expected}")


def pread_array(path, offset: int, nbytes: int, dtype) -> np.ndarray:
    """`nbytes` at `offset` of `path` as a fresh, writable array of `dtype`."""
    buf = bytearray(nbytes)
    with open(path, "rb", buffering=0) as f:
        view, pos = memoryview(buf), 0
        while pos < nbytes:
            n = os.preadv(f.fileno(), [view[pos:]], offset + pos)
            if n == 0:
                raise EOFError(f"{path}: ended at byte {offset + pos}, expected {offset + nbytes}")
            pos += n
    return np.frombuffer(buf, dtype=dtype)


class BackgroundWriter:
    """Writes chunks on a second thread, so that producing the next chunk (numpy, which
    releases the GIL) overlaps with writing this one. At most `depth` chunks wait."""

    def __init__(self, out: BinaryIO, depth: int = 2):
        import queue
        import threading
        self.out = out
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.out.write(chunk)
                except BaseException as e:  # reported to the producer on its next call
                    self.error = e

    def write(self, data) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(data)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


_MADV_POPULATE_READ = 22  # linux/mman.h, Linux 5.14 on


@functools.cache
def _madvise():
    madvise = _libc("madvise")
    if madvise is not None:
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def map_in(arrays) -> None:
    """Map every page of these memory-mapped arrays into the process in one call per array
    (MADV_POPULATE_READ), reading from disk what the page cache lacks: page by page on first
    touch costs two to three times as much (measured: an 8 MB expert 12.6 ms against 4.9 from
    a cold cache, 5.0 against 2.8 from a warm one). A hint only: nothing happens where the
    kernel or the platform has no such call."""
    madvise = _madvise() if sys.platform == "linux" else None
    if madvise is None:
        return
    for a in arrays:
        if a is None or a.nbytes == 0:
            continue
        start = a.ctypes.data & ~(mmap.PAGESIZE - 1)
        madvise(start, a.ctypes.data + a.nbytes - start, _MADV_POPULATE_READ)
