"""Which GGUF tensors a checkpoint (under its HF names) becomes, and in what order (llama.cpp's).

llama.cpp's converter writes the repacked MXFP4 experts first, in source order, then
every other tensor in source order, gate before up where gate_up is split. Each target
says which rows of its source it takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..checkpoint import Checkpoint, Tensor
from ..checkpoint.names import gguf_names
from ..errors import OssConvertError


@dataclass(frozen=True)
class Target:
    name: str  # GGUF name
    source: Tensor  # under its HF name
    part: str  # "all", "gate" (even rows of gate_up), "up" (odd rows), "fused" (Ollama: all of gate_up)

    @property
    def shape(self) -> tuple[int, ...]:
        """Row-major logical shape of this tensor (ggml order is the reverse)."""
        shape = self.source.shape
        if self.part in ("all", "fused"):
            return shape
        # gate/up take every other row of the 2I axis: axis 1 of [E, 2I, H] and of bias [E, 2I]
        return (shape[0], shape[1] // 2) + shape[2:]

    @property
    def ggml_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def n_dims(self) -> int:
        return len(self.shape)


def targets(ckpt: Checkpoint) -> list[Target]:
    experts: list[Target] = []
    rest: list[Target] = []
    for src in ckpt.model_tensors:
        names = gguf_names(src.name, "gpt-oss")
        if not names:
            raise OssConvertError(f"{ckpt.where}: tensor {src.name!r} has no place in a gpt-oss GGUF")
        bucket = experts if src.format == "MXFP4" else rest
        bucket.extend(Target(n.gguf, src, n.part) for n in names)
    return experts + rest


def rows_of(target: Target, data):
    """The target's share of a chunk of its source (experts or rows along axis 0): for gate and
    up, every other row of axis 1 (of MXFP4's blocks and scales alike)."""
    if target.part in ("all", "fused"):
        return data
    sl = slice(0, None, 2) if target.part == "gate" else slice(1, None, 2)
    if isinstance(data, tuple):
        return tuple(d[:, sl] for d in data)
    return data[:, sl]


def chunk_ranges(target: Target, max_bytes: int) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges of whole experts (or rows) of the source, ~max_bytes each."""
    src = target.source
    total = src.shape[0]
    per_slice = src.nbytes // max(1, total)
    step = max(1, max_bytes // max(1, per_slice))
    for start in range(0, total, step):
        yield start, min(total, start + step)


def iter_chunks(target: Target, max_bytes: int) -> Iterator:
    """The target's share of its source, in slices of whole experts (or rows)."""
    for start, stop in chunk_ranges(target, max_bytes):
        yield rows_of(target, target.source.read(start, stop))
