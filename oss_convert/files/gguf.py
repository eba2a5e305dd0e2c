"""Read and write GGUF files (v2/v3), header eagerly, tensor data through mmap.

We parse the container ourselves rather than through `gguf.GGUFReader` so that every
malformed file (bad magic, truncation, offsets past the end) becomes one error naming
the file and the problem, and so that split GGUFs (`-00001-of-0000N.gguf`) read as one.
Type codes and block sizes come from the `gguf` package, the reference for them.
"""

from __future__ import annotations

import functools
import math
import mmap
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import OssConvertError
from .source import LocalFile
from .stream import BackgroundWriter, Produced, pread_array, write_produced

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMATS = {
    ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H", ValueType.INT16: "<h",
    ValueType.UINT32: "<I", ValueType.INT32: "<i", ValueType.FLOAT32: "<f", ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q", ValueType.INT64: "<q", ValueType.FLOAT64: "<d",
}
_NUMPY_SCALARS = {
    ValueType.UINT8: "<u1", ValueType.INT8: "<i1", ValueType.UINT16: "<u2", ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4", ValueType.INT32: "<i4", ValueType.FLOAT32: "<f4", ValueType.BOOL: "?",
    ValueType.UINT64: "<u8", ValueType.INT64: "<i8", ValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class Value:
    """A metadata value with its GGUF type; `item_type` is set for arrays."""

    type: ValueType
    value: object
    item_type: ValueType | None = None


# Type codes that ggml has retired but files in the wild still use: Ollama's older gpt-oss
# GGUFs store MXFP4 as type 4 (17-byte blocks of 32, scale byte first, HF nibble order).
LEGACY_TYPES = {4: ("MXFP4_OLLAMA", 32, 17)}


def ggml_type_name(type_code: int) -> str:
    if type_code in LEGACY_TYPES:
        return LEGACY_TYPES[type_code][0]
    try:
        return GGMLQuantizationType(type_code).name
    except ValueError:
        return f"TYPE_{type_code}"


def block_geometry(type_code: int) -> tuple[int, int]:
    """(values per block, bytes per block) of a ggml type code."""
    if type_code in LEGACY_TYPES:
        return LEGACY_TYPES[type_code][1:]
    return GGML_QUANT_SIZES[GGMLQuantizationType(type_code)]


def tensor_nbytes(type_code: int, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ggml type `type_code` and ggml shape (ne0 first)."""
    block, size = block_geometry(type_code)
    if shape and shape[0] % block:
        raise ValueError(f"row length {shape[0]} is not a multiple of the {ggml_type_name(type_code)} block ({block})")
    return math.prod(shape) // block * size


class FileMap:
    """One read-only mapping of a whole file, made at first use and shared by its tensors.

    Mapped from offset 0, which Linux places on a 2 MB boundary, and marked MADV_HUGEPAGE, so
    the page cache's 2 MB folios (ext4's and XFS's on recent kernels) are mapped whole: a product
    streaming experts from the file then takes a TLB entry per 2 MB, not per 4 KB page (the 20b's
    experts for a decode step, one token, Q8_0 kernel: 79 against 103 ms, same process, with a
    mapping per tensor). Where either is not so, the pages are mapped as before."""

    def __init__(self, path: Path):
        self.path = path

    @functools.cached_property
    def array(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                mapped.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # a kernel without transparent huge pages
                pass
        return np.frombuffer(mapped, dtype=np.uint8)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: ggml type, ggml-order shape, and where its bytes lie."""

    path: Path
    name: str
    type: int
    shape: tuple[int, ...]  # ggml order: shape[0] = ne0, the row length
    offset: int  # absolute offset in `path`
    nbytes: int
    file: FileMap = field(repr=False, compare=False)  # its file's mapping, shared by its tensors

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.type)

    def raw(self) -> np.ndarray:
        """The stored bytes as a read-only uint8 view, one row of blocks per ggml row."""
        return self._mapped

    @functools.cached_property
    def _mapped(self) -> np.ndarray:
        # mapped once: a fresh mapping per use would fault every page in again (an expert used by
        # each decoded token, 1.3 GB a token on the 20b)
        if self.nbytes == 0:
            return np.zeros(0, np.uint8)
        whole = self.file.array
        if self.offset + self.nbytes > whole.size:
            raise OssConvertError(f"{self.path}: tensor {self.name!r} lies past the end of the file "
                                  f"(ends at byte {self.offset + self.nbytes}, file has {whole.size}): truncated")
        flat = whole[self.offset:self.offset + self.nbytes]
        rows = math.prod(self.shape[1:])
        return flat.reshape(tuple(reversed(self.shape[1:])) + (self.nbytes // max(rows, 1),))

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Slices [start, stop) of the outermost ggml dimension, read into memory as bytes
        shaped [n, ..., row bytes]; a 1-D tensor is read whole, as one row."""
        if len(self.shape) < 2:
            return pread_array(self.path, self.offset, self.nbytes, np.uint8)
        outer = self.shape[-1]
        stop = outer if stop is None else stop
        per = self.nbytes // outer
        data = pread_array(self.path, self.offset + start * per, (stop - start) * per, np.uint8)
        return data.reshape((stop - start,) + tuple(reversed(self.shape[1:-1])) + (-1,))


@dataclass
class GGUFFile:
    """A parsed GGUF header (all parts of a split file merged)."""

    paths: list[Path]
    version: int
    metadata: dict[str, Value]
    tensors: dict[str, GGUFTensor]

    def get(self, key: str, default=None):
        v = self.metadata.get(key)
        return default if v is None else v.value


class _Cursor:
    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.pos = path, data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise OssConvertError(f"{self.path}: truncated GGUF header (needs byte {self.pos + n}, "
                                  f"file has {len(self.data)})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise OssConvertError(f"{self.path}: corrupt GGUF header (a string is not UTF-8)") from None

    def value(self, vtype: int, key: str) -> Value:
        try:
            vtype = ValueType(vtype)
        except ValueError:
            raise OssConvertError(f"{self.path}: corrupt GGUF header (key {key!r} has unknown type {vtype})") from None
        if vtype == ValueType.STRING:
            return Value(vtype, self.string())
        if vtype != ValueType.ARRAY:
            return Value(vtype, self.unpack(_SCALAR_FORMATS[vtype]))
        item = self.unpack("<I")
        count = self.unpack("<Q")
        try:
            item = ValueType(item)
        except ValueError:
            raise OssConvertError(f"{self.path}: corrupt GGUF header (array {key!r} has unknown type {item})") from None
        if item == ValueType.STRING:
            return Value(vtype, [self.string() for _ in range(count)], item)
        if item == ValueType.ARRAY:
            return Value(vtype, [self.value(ValueType.ARRAY, key).value for _ in range(count)], item)
        dt = np.dtype(_NUMPY_SCALARS[item])
        arr = np.frombuffer(self.take(count * dt.itemsize), dtype=dt)
        return Value(vtype, arr.tolist(), item)


def _read_one(source) -> tuple[int, dict[str, Value], list[GGUFTensor]]:
    path, size = (source.path if isinstance(source, LocalFile) else source.name), source.size
    head = source.read(0, 24)
    if head[:4] != GGUF_MAGIC:
        raise OssConvertError(f"{path}: not a GGUF file (bad magic {head[:4]!r})")
    # The header is small next to the data: read a first guess, then more until it parses.
    data = source.read(0, min(size, source.first_read))
    while True:
        try:
            return _parse(path, data, size)
        except OssConvertError:
            if len(data) >= size:
                raise
            data += source.read(len(data), min(size, len(data) * 4) - len(data))


def _parse(path: Path, data: bytes, size: int) -> tuple[int, dict[str, Value], list[GGUFTensor]]:
    cur = _Cursor(path, data)
    cur.take(4)
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise OssConvertError(f"{path}: unsupported GGUF version {version}")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise OssConvertError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
    metadata: dict[str, Value] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("<I"), key)
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > 4:
            # ggml tensors have at most GGML_MAX_DIMS = 4
            raise OssConvertError(f"{path}: corrupt GGUF header (tensor {name!r} has {n_dims} dimensions)")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        infos.append((name, shape, cur.unpack("<I"), cur.unpack("<Q")))
    alignment = metadata.get("general.alignment", Value(ValueType.UINT32, DEFAULT_ALIGNMENT)).value
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise OssConvertError(f"{path}: corrupt GGUF header (general.alignment = {alignment!r})")
    data_start = cur.pos + (-cur.pos % alignment)
    tensors, expected_offset, mapping = [], 0, FileMap(path)
    for name, shape, type_code, offset in infos:
        if type_code not in GGMLQuantizationType._value2member_map_ and type_code not in LEGACY_TYPES:
            raise OssConvertError(f"{path}: tensor {name!r} has unknown ggml type {type_code}")
        try:
            nbytes = tensor_nbytes(type_code, shape)
        except ValueError as e:
            raise OssConvertError(f"{path}: tensor {name!r}: {e}") from None
        # as libllama's loader (gguf.cpp) requires: each tensor's data follows the previous one's, aligned
        if offset != expected_offset:
            raise OssConvertError(f"{path}: tensor {name!r} has data offset {offset}, expected {expected_offset} "
                                  "(tensors overlap, leave gaps or are misaligned): corrupt GGUF header")
        expected_offset += nbytes + (-nbytes % alignment)
        start = data_start + offset
        if start + nbytes > size:
            raise OssConvertError(f"{path}: tensor {name!r} lies past the end of the file "
                                  f"(ends at byte {start + nbytes}, file has {size}): truncated or corrupt")
        tensors.append(GGUFTensor(path, name, type_code, shape, start, nbytes, mapping))
    return version, metadata, tensors


def split_names(name: str) -> list[str]:
    """All part names of a split GGUF given any one of them, or [name] for a single file."""
    m = SPLIT_NAME.match(name)
    if not m:
        return [name]
    count = int(m["count"])
    return [f"{m['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def gguf_models(names: Iterable[str]) -> list[str]:
    """The GGUF models among file names, sorted: each `.gguf` once, a split model by its first part."""
    return sorted({split_names(n)[0] for n in names if n.endswith(".gguf")})


def split_parts(path: Path) -> list[Path]:
    """All parts of a local split GGUF given any one of them, checking that they exist."""
    parts = [path.with_name(n) for n in split_names(path.name)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise OssConvertError(f"{path}: split GGUF is missing part(s) {', '.join(missing)}")
    return parts


def read_gguf(path, open_part=LocalFile) -> GGUFFile:
    """Parse a GGUF header (all parts of a split file). `open_part` turns each part's path
    into a byte source: local files by default, HTTP range requests for a Hub repo."""
    if open_part is LocalFile:
        path = Path(path)
        if not path.is_file():
            raise OssConvertError(f"{path}: no such file")
        parts = split_parts(path)
    else:
        parts = [Path(p) for p in split_names(str(path))]
    version: int | None = None
    metadata: dict[str, Value] = {}
    tensors: dict[str, GGUFTensor] = {}
    for part in parts:
        v, meta, part_tensors = _read_one(open_part(part))
        if version is None:
            version, metadata = v, meta
        for t in part_tensors:
            if t.name in tensors:
                raise OssConvertError(f"{part}: tensor {t.name!r} appears twice")
            tensors[t.name] = t
    assert version is not None  # (every file has at least one part)
    return GGUFFile(parts, version, metadata, tensors)


# ---------------------------------------------------------------------------- writing

@dataclass
class GGUFWriteTensor:
    """A tensor for `write_gguf`: ggml type and shape up front, bytes from `produce()`."""

    name: str
    type: int
    shape: tuple[int, ...]  # ggml order
    produce: Callable[[], Produced]
    nbytes: int = field(init=False)

    def __post_init__(self):
        self.nbytes = tensor_nbytes(self.type, self.shape)


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(v: Value) -> bytes:
    if v.type == ValueType.STRING:
        return _pack_string(cast(str, v.value))
    if v.type != ValueType.ARRAY:
        return struct.pack(_SCALAR_FORMATS[v.type], v.value)
    items = list(cast(list, v.value))
    item_type = cast(ValueType, v.item_type)  # (an array's is always set)
    head = struct.pack("<IQ", item_type, len(items))
    if item_type == ValueType.STRING:
        return head + b"".join(_pack_string(s) for s in items)
    return head + np.asarray(items, dtype=_NUMPY_SCALARS[item_type]).tobytes()


def write_gguf_header(out: BinaryIO, metadata: dict[str, Value], tensors: list[GGUFWriteTensor],
                      alignment: int = DEFAULT_ALIGNMENT) -> int:
    """The GGUF v3 header from shapes and types alone, padded; returns the bytes of tensor data to follow."""
    header = [GGUF_MAGIC, struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, value in metadata.items():
        header += [_pack_string(key), struct.pack("<I", value.type), _pack_value(value)]
    offset = 0
    for t in tensors:
        header += [_pack_string(t.name), struct.pack("<I", len(t.shape)),
                   struct.pack(f"<{len(t.shape)}Q", *t.shape), struct.pack("<IQ", t.type, offset)]
        offset += t.nbytes + (-t.nbytes % alignment)
    raw = b"".join(header)
    out.write(raw + b"\0" * (-len(raw) % alignment))
    return offset


def write_gguf(out: BinaryIO, metadata: dict[str, Value], tensors: Iterable[GGUFWriteTensor],
               alignment: int = DEFAULT_ALIGNMENT, on_bytes=None) -> None:
    """Stream a GGUF v3 file: header from shapes and types alone, then each tensor in turn."""
    tensors = list(tensors)
    write_gguf_header(out, metadata, tensors, alignment)
    writer = BackgroundWriter(out)
    try:
        for t in tensors:
            write_produced(writer, t.name, t.produce(), t.nbytes, on_bytes)
            writer.write(b"\0" * (-t.nbytes % alignment))
    finally:
        writer.close()
