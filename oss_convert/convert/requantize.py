"""Requantized GGUF plans: llama.cpp's converter followed by llama-quantize, in one pass.

The starting point is the lossless plan (the tensors llama.cpp's converter writes: MXFP4
experts, BF16 weights, F32 rest). Each tensor then gets the type llama-quantize's mixture
gives it, in llama-quantize's order; a tensor whose type does not change is copied, the
others are decoded to float32 (MXFP4 exactly, BF16 exactly) and encoded again. While it
writes, the plan measures what each requantized tensor lost against the source values.
"""

from __future__ import annotations

import contextvars
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as T

from ..errors import OssConvertError
from ..files.gguf import tensor_nbytes
from ..formats import mxfp4, mxfp4_requant
from ..formats.registry import QUANTIZERS, encode
from ..formats.validate import FP16_SCALES, invalid_count
from ..metrics import ErrorStats
from ..plan.layout import Target, chunk_ranges, rows_of
from ..plan.lossless import PlannedTensor
from ..plan.mixtures import MIXTURES
from .lossless import lossless_chunks


@dataclass
class RequantPlan:
    mixture_key: str
    tensors: list[PlannedTensor]
    stats: dict[str, ErrorStats] = field(default_factory=dict)  # filled while the file is written

    @property
    def file_type(self) -> int:
        return MIXTURES[self.mixture_key].file_type


def check_encoders(plan: list[PlannedTensor]) -> None:
    for p in plan:
        if p.requantized and p.type not in QUANTIZERS and p.type not in (T.F16, T.F32, T.BF16):
            raise OssConvertError(f"{p.name}: no encoder for {p.type.name}")


def requantized_chunks(plan: RequantPlan, p: PlannedTensor, threads: int) -> Iterator[np.ndarray]:
    """The bytes of one planned tensor: copied where the mixture keeps the converter's type."""
    if not p.requantized:
        return lossless_chunks(p)
    stats = plan.stats.setdefault(p.name, ErrorStats())
    return _requantized_chunks(p.target, p.type, stats, threads)


PIECE_VALUES = 1 << 18  # work in cache-sized pieces: large temporaries cost more than the math
# Source bytes per task: small enough that even a 2880 x 4096 tensor gives every thread
# several tasks (whole experts are the floor), large enough to keep the writer's calls few.
TASK_BYTES = 4 << 20


def pieces(target: Target, chunk) -> Iterator:
    """A chunk of the target's source rows in pieces of ~PIECE_VALUES values, in file order."""
    if target.source.format == "MXFP4":
        blocks, scales = target.source.hf_mxfp4(chunk)
        blocks, scales = blocks.reshape((-1,) + blocks.shape[-2:]), scales.reshape(-1, scales.shape[-1])
        step = max(1, PIECE_VALUES // (blocks.shape[1] * 32))
        for r in range(0, blocks.shape[0], step):
            yield blocks[r:r + step], scales[r:r + step]
    else:
        rows = chunk.reshape(-1, chunk.shape[-1])
        step = max(1, PIECE_VALUES // rows.shape[1])
        for r in range(0, rows.shape[0], step):
            yield rows[r:r + step]


def decode_piece(target: Target, piece) -> np.ndarray:
    """float32 values of a source piece (MXFP4 ones as HF blocks and scales), decoded exactly."""
    if target.source.format == "MXFP4":
        return mxfp4.decode_hf(*piece)
    return target.source.decode(piece)


def _requantize_piece(target: Target, qtype: T, piece) -> tuple[np.ndarray, ErrorStats]:
    codec = QUANTIZERS.get(qtype)
    by_table = mxfp4_requant.requantizer(codec)
    if target.source.format == "MXFP4" and by_table is not None:
        blocks, scales = piece
        data, stats = mxfp4_requant.requantize(blocks, scales, by_table)
        return data.reshape(blocks.shape[0], -1), stats
    values = decode_piece(target, piece)
    data = encode(values, qtype)
    restored = codec.dequantize(data) if codec else data.astype(np.float32)
    stats = ErrorStats()
    stats.add(values, restored.reshape(values.shape))
    return data, stats


def _requantize_range(target: Target, qtype: T, start: int, stop: int) -> tuple[np.ndarray, ErrorStats]:
    """Read source rows [start, stop) and encode them: one task, so that reading overlaps
    too, and one output array, so that the writer gets few large writes."""
    stats, out = ErrorStats(), []
    for piece in pieces(target, rows_of(target, target.source.read(start, stop))):
        data, piece_stats = _requantize_piece(target, qtype, piece)
        out.append(data.reshape(-1))
        stats.merge(piece_stats)
    data = np.concatenate(out)
    if bad := invalid_count(data, qtype):
        what = "block scales" if qtype in FP16_SCALES else "values"
        raise OssConvertError(f"{target.name}: quantized data validation failed: {bad} infinite or NaN {qtype.name} "
                              f"{what} (the source holds infinities, NaNs or values beyond fp16's range); "
                              "like llama-quantize, nothing was written")
    return data, stats


def _requantized_chunks(target: Target, qtype: T, stats: ErrorStats, threads: int) -> Iterator[np.ndarray]:
    """Encoded bytes in file order; slices of the source are read and encoded on `threads`
    threads (pread and numpy release the GIL), at most 2 * threads slices ahead of the writer."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for start, stop in chunk_ranges(target, TASK_BYTES):
            # in the caller's context: numpy's error state (numpy 2 keeps it there) and the like
            pending.append(pool.submit(contextvars.copy_context().run, _requantize_range, target, qtype,
                                       start, stop))
            if len(pending) >= 2 * threads:
                yield _merge(pending.popleft().result(), stats)
        while pending:
            yield _merge(pending.popleft().result(), stats)


def _merge(result: tuple[np.ndarray, ErrorStats], stats: ErrorStats) -> np.ndarray:
    data, piece_stats = result
    stats.merge(piece_stats)
    return data


def cost_document(plan: RequantPlan) -> dict:
    """Per requantized tensor error figures, and the bits per weight of the whole file."""
    tensors = []
    for p in plan.tensors:
        if p.name in plan.stats and p.converter_type is not None:  # (a requantized tensor)
            tensors.append({"name": p.name, "from": p.converter_type.name, "to": p.type.name,
                            **plan.stats[p.name].summary()})
    params = sum(math.prod(p.shape) for p in plan.tensors)
    nbytes = sum(tensor_nbytes(p.type, p.shape) for p in plan.tensors)
    return {"tensors": tensors, "bits_per_weight": 8 * nbytes / params if params else 0.0,
            "tensor_bytes": nbytes, "params": params}
