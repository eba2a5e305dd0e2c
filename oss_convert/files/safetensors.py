"""Read and write .safetensors files: header only until data is asked for, then mmap.

The format is an 8-byte little-endian header length, a JSON header mapping tensor
names to {dtype, shape, data_offsets} (offsets relative to the end of the header),
and the raw little-endian tensor bytes. We parse it ourselves so that a bad file
yields an error naming the file and the exact problem, and so that reading a
header never touches tensor data.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import OssConvertError
from .source import LocalFile
from .stream import Produced, pread_array, write_produced

# Bytes per element for each safetensors dtype we may meet in a GPT-OSS checkpoint.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# numpy dtype used to view each safetensors dtype (BF16 stays raw 16-bit words).
NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "F8_E4M3": np.uint8, "F8_E5M2": np.uint8,
    "E8M0": np.uint8, "I16": np.int16, "U16": np.uint16, "F16": np.float16, "BF16": np.uint16,
    "I32": np.int32, "U32": np.uint32, "F32": np.float32,
    "I64": np.int64, "U64": np.uint64, "F64": np.float64,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes lie in a safetensors file."""

    path: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute offset in the file
    nbytes: int

    def array(self) -> np.ndarray:
        """A read-only, zero-copy view of the tensor (BF16 as uint16 words)."""
        return self._mapped

    @functools.cached_property
    def _mapped(self) -> np.ndarray:  # mapped once, not once per use (see GGUFTensor.raw)
        count = math.prod(self.shape)
        if count == 0:
            return np.zeros(self.shape, NUMPY_DTYPES[self.dtype])
        view = np.memmap(self.path, dtype=NUMPY_DTYPES[self.dtype], mode="r",
                         offset=self.offset, shape=(count,))
        return view.reshape(self.shape)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) along the first axis, read into memory (not mmap'd)."""
        stop = self.shape[0] if stop is None else stop
        row_bytes = self.nbytes // self.shape[0] if self.shape and self.shape[0] else self.nbytes
        if not self.shape:
            return pread_array(self.path, self.offset, self.nbytes, NUMPY_DTYPES[self.dtype]).reshape(())
        data = pread_array(self.path, self.offset + start * row_bytes, (stop - start) * row_bytes,
                           NUMPY_DTYPES[self.dtype])
        return data.reshape((stop - start,) + self.shape[1:])


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, StoredTensor]
    metadata: dict[str, str]
    header_bytes: int


def read_header(path) -> SafetensorsHeader:
    """Parse and validate a safetensors header; reads nothing past it.

    `path` is a local path or a byte source with `name`, `size` and `read(offset, n)`."""
    source = path if hasattr(path, "read") else LocalFile(path)
    path, size = (source.path if isinstance(source, LocalFile) else source.name), source.size
    head = source.read(0, 8)
    if len(head) < 8:
        raise OssConvertError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise OssConvertError(f"{path}: corrupt safetensors header (declares {length} header bytes, file has {size})")
    raw = source.read(8, length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OssConvertError(f"{path}: corrupt safetensors header (invalid JSON: {e})") from None
    if not isinstance(header, dict):
        raise OssConvertError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + length
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise OssConvertError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    tensors = {}
    for name, entry in header.items():
        tensors[name] = _parse_entry(path, name, entry, data_start, size)
    return SafetensorsHeader(path, tensors, metadata, data_start)


def _parse_entry(path: Path, name: str, entry, data_start: int, file_size: int) -> StoredTensor:
    def bad(why: str) -> OssConvertError:
        return OssConvertError(f"{path}: corrupt safetensors header: tensor {name!r} {why}")

    if not isinstance(entry, dict):
        raise bad("has no description")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise bad(f"has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in shape):
        raise bad(f"has invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise bad(f"has invalid data_offsets {offsets!r}")
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"spans {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {nbytes}")
    if data_start + offsets[1] > file_size:
        raise bad(f"ends at byte {data_start + offsets[1]}, past the end of the file ({file_size} bytes)")
    return StoredTensor(path, name, dtype, tuple(shape), data_start + offsets[0], nbytes)


@dataclass(frozen=True)
class SafetensorsWriteTensor:
    """A tensor for `write_file`: `produce()` gives its raw little-endian bytes as one
    array or as an iterable of consecutive chunks (so huge tensors never sit in memory)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    produce: Callable[[], Produced]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def write_header(out: BinaryIO, tensors: list[SafetensorsWriteTensor], metadata: dict[str, str] | None = None) -> int:
    """Write the header for `tensors` (data follows in the same order); returns the data size."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
    out.write(struct.pack("<Q", len(raw)))
    out.write(raw)
    return offset


def write_file(out: BinaryIO, tensors: Iterable[SafetensorsWriteTensor], metadata: dict[str, str] | None = None,
               on_bytes=None) -> None:
    """Stream tensors into a safetensors file, one at a time, in the given order.

    The header is computed from names, dtypes and shapes alone, so no tensor is held
    in memory beyond the one being written.
    """
    tensors = list(tensors)
    write_header(out, tensors, metadata)
    for t in tensors:
        write_produced(out, t.name, t.produce(), t.nbytes, on_bytes)
