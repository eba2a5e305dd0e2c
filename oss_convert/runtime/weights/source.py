"""A checkpoint's weights as the runtime's weight objects, by their Hugging Face names: the one
place the runtime reads a checkpoint. Matrices come as FloatMatrix on the device, or on the CPU
with the kernels built in their stored form (StoredMatrix); expert stacks stay in the file's
pages (MappedExperts) on the CPU and are copied in elsewhere; vectors come as float32 values."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import numpy as np
import torch

from ...checkpoint import Checkpoint, Tensor
from ...checkpoint.tensor import FLOAT_FORMATS
from ...errors import OssConvertError
from ...formats import table
from ...formats.registry import decodable
from ..kernels import native
from ..kernels.native.products import row_bytes
from .experts import Experts, MappedExperts
from .matrices import FloatMatrix, Matrix, StoredMatrix, StoredRows

VALUES_PER_READ = 1 << 25  # 128 MB of float32 a slice, so the 580M-value embedding is never widened twice over


def check_activations(device: torch.device, activations: str) -> None:
    """Q8_0 activations are the CPU kernels' arithmetic: refused where those do not run."""
    if activations not in native.ACTIVATIONS:
        raise OssConvertError(f"activations {activations!r}: expected one of {', '.join(native.ACTIVATIONS)}")
    if activations == "q8" and (device.type != "cpu" or native.library() is None):
        raise OssConvertError("Q8_0 activations are the CPU kernels' arithmetic: they need --device cpu and the "
                              "kernels built (a C compiler; OSS_CONVERT_NATIVE not 0)")


def as_float32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def widened(shape: tuple[int, ...], read_rows: Callable[[int, int], np.ndarray]) -> torch.Tensor:
    """A float32 tensor of `shape` filled from read_rows(start, stop) (the float32 values of
    rows [start, stop) of the first axis) a slice at a time: the stored copy and the integer
    intermediates of widening exist for one slice only, never for the whole matrix."""
    if len(shape) < 2:
        return as_float32(read_rows(0, shape[0]))
    out = torch.empty(shape, dtype=torch.float32)
    step = max(1, VALUES_PER_READ // math.prod(shape[1:]))
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        out[start:stop] = as_float32(read_rows(start, stop)).reshape((stop - start,) + tuple(shape[1:]))
    return out


class WeightSource:
    """Weights of `ckpt` for the runtime on `device`, multiplied on the CPU with `activations`
    (native.ACTIVATIONS). `resident`: matrices in their stored form are copied into memory
    (generation: numpy puts them on huge pages, 15% faster decode), else left in the file's
    pages (a matrix used once a window, as compare --full uses each)."""

    def __init__(self, ckpt: Checkpoint, device: torch.device, activations: str = "float32", resident: bool = True):
        check_activations(device, activations)
        self.ckpt, self.config = ckpt, ckpt.require_config()
        self.device, self.activations, self.resident = device, activations, resident
        self.keep_stored = device.type == "cpu" and native.library() is not None

    def floats(self, name: str) -> torch.Tensor:
        """The tensor's values as float32 on the device."""
        t = self.ckpt.tensor(name)
        return widened(t.shape, t.values).to(self.device)

    def matrix(self, name: str, mapped: bool | None = None) -> Matrix:
        """A 2-D weight, in its stored form where the kernels take it here (read into memory, or
        with `mapped` left in the file's pages; default: not `resident`), else as float32 values."""
        t = self.ckpt.tensor(name)
        stored = self._stored(t, not self.resident if mapped is None else mapped) if self.keep_stored else None
        return stored if stored is not None else FloatMatrix(widened(t.shape, t.values).to(self.device))

    def _stored(self, t: Tensor, mapped: bool) -> StoredMatrix | None:
        row = table.in_place(t.ggml_type, t.format)
        if row is None or len(t.shape) != 2:
            return None
        expected = row_bytes(native.loaded(), row.name, t.shape[1])
        if expected < 0:  # (a row length the format cannot have: the numpy path says so)
            return None
        data = np.ascontiguousarray(t.mapped() if mapped else t.read())
        if data.nbytes != expected * t.shape[0]:
            raise OssConvertError(f"{t.where}: {t.stored_name} holds {data.nbytes} bytes, not {t.shape[0]} rows of "
                                  f"{expected}")
        rows = data.view(np.uint8).reshape(t.shape[0], expected)
        return StoredMatrix(row.name, (t.shape[0], t.shape[1]), rows, self.activations, mapped)

    def embedding_rows(self, name: str, tokens: torch.Tensor) -> torch.Tensor:
        """The rows of `tokens` alone, read one by one: what `matrix(name).rows(tokens)` gives,
        without reading (1.2 GB on the 20b) or holding the whole matrix."""
        t = self.ckpt.tensor(name)
        ids = sorted(set(tokens.tolist()))
        rows = torch.cat([as_float32(t.values(i, i + 1)).reshape(1, -1) for i in ids])
        where = {token: n for n, token in enumerate(ids)}
        return rows[[where[token] for token in tokens.tolist()]].to(self.device)

    def experts(self, name: str) -> Experts:
        """An expert stack [E, N, K]: left in the file's pages on the CPU, copied in elsewhere."""
        return mapped_experts(self.ckpt.tensor(name), self.activations).to(self.device)


def mapped_experts(t: Tensor, activations: str = "float32") -> MappedExperts:
    """An expert stack [E, N, K] left in its file, each expert put in its packed form when used."""
    if len(t.shape) != 3:
        raise OssConvertError(f"{t.where}: {t.stored_name} has shape {list(t.shape)}, not [experts, rows, columns]")
    E, N, K = t.shape
    if t.format == "MXFP4":
        def packed(e: int):
            blocks, scales = t.hf_mxfp4(t.view(e))
            return blocks.reshape(N, K // 2), scales
        return MappedExperts("MXFP4", t.shape, t.nbytes, packed, in_place(t), activations)
    if t.format in FLOAT_FORMATS:
        return MappedExperts("F32", t.shape, t.nbytes, lambda e: (t.decode(t.view(e)).reshape(N, K), None))
    if not decodable(t.ggml_type):
        raise OssConvertError(f"{t.where}: {t.stored_name} is {t.format}, which has no dequantizer here")
    return MappedExperts(t.format, t.shape, t.nbytes, lambda e: (cast(np.ndarray, t.view(e)), None), in_place(t),
                         activations)


def in_place(t: Tensor) -> Callable[[int], list[StoredRows]] | None:
    """Expert e of a GGUF tensor as the rows its file holds, for the C kernels: ggml's MXFP4
    blocks without HF's reordering, GGUF's gate and up apart instead of copied interleaved.
    (Ollama's MXFP4 layout is not read in place: it goes through HF's.)"""
    parts = t.interleaved or (t,)
    rows = [r for r in (table.in_place(p.ggml_type, p.format) for p in parts if p.ggml_type is not None)
            if r is not None]
    if len(rows) < len(parts):
        return None
    return lambda e: [StoredRows(r.name, cast(np.ndarray, p.view(e))) for r, p in zip(rows, parts)]
