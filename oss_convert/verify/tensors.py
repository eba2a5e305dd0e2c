"""Tensor by tensor: does the port hold the source's bits, a reference requantization, or less?

Each source tensor (under its HF name) is paired with its counterpart(s) in the port's
layout, and both are streamed expert by expert (or row range by row range), each file
read once. MXFP4 is compared at the level of FP4 codes and scale bytes after undoing the
layout, so a difference is located at (expert, row, block).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
from gguf import GGMLQuantizationType as T

from ..checkpoint import Checkpoint, Tensor
from ..checkpoint.names import gguf_names
from ..formats import mxfp4
from ..formats.registry import QUANTIZERS, encode
from ..metrics import ErrorStats
from ..plan.layout import Target, chunk_ranges, rows_of


@dataclass
class TensorCheck:
    source: str | None
    port: str | None
    source_format: str | None
    port_format: str | None
    status: str  # bit-identical, reference-requantized, lossy, missing, extra, shape-mismatch
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"source": self.source, "port": self.port, "source_format": self.source_format,
                "port_format": self.port_format, "status": self.status, **self.details}


def pair_tensors(src: Checkpoint, port: Checkpoint) -> tuple[list[tuple[Target, Tensor]], list[TensorCheck]]:
    """(pairs to compare, checks already decided: missing, extra, shape-mismatch)."""
    tensors = {t.name: t for t in port.tensors}
    pairs, decided, used = [], [], set()
    for hf in src.model_tensors:
        for gname in gguf_names(hf.name, port.layout):
            target = Target(gname.gguf, hf, gname.part)
            t = tensors.get(gname.gguf)
            if t is None:
                decided.append(TensorCheck(hf.name, gname.gguf, hf.format, None, "missing"))
                continue
            used.add(t.name)
            if t.ggml_shape != target.ggml_shape:
                shapes = {"expected_shape": list(target.ggml_shape), "found_shape": list(t.ggml_shape)}
                decided.append(TensorCheck(hf.name, t.name, hf.format, t.format, "shape-mismatch", shapes))
                continue
            pairs.append((target, t))
    for name, t in tensors.items():
        if name not in used:
            decided.append(TensorCheck(None, name, None, t.format, "extra"))
    return pairs, decided


class _Comparison:
    """Running state of one tensor's comparison across chunks."""

    def __init__(self, target: Target, port: Tensor):
        self.target, self.port = target, port
        self.identical = True
        # what llama-quantize writes can be remade here: every type with a quantizer of ours, and
        # the float types (round to nearest even, as ggml converts)
        self.reference_equal = port.ggml_type in QUANTIZERS or port.ggml_type in (T.F16, T.BF16, T.F32)
        self.stats = ErrorStats()
        # expert tensors: the error of each expert too (an expert absent here came back unchanged)
        self.per_expert: dict[int, ErrorStats] | None = {} if target.source.role.is_expert_weight else None
        self.unchanged: list[tuple[int, int]] = []  # chunks settled by comparing bytes, not values
        self.blocks = self.blocks_differ = self.codes = self.codes_differ = 0
        self.first_diff: dict[str, int] | None = None

    def add(self, start: int, source, port_piece) -> None:
        source_format = self.target.source.format
        if source_format == "MXFP4" and self.port.format == "MXFP4":
            self._add_fp4(start, source, port_piece)
            return
        if self.identical and source_format == "BF16" and self.port.format == "BF16":
            if np.array_equal(np.asarray(source).reshape(-1), np.asarray(port_piece).reshape(-1)):
                self.unchanged.append((start, start + len(source)))
                return  # kept as BF16: equal words, no need to look at values
        values = self.target.source.decode(source)
        restored = self.port.decode(port_piece).reshape(values.shape)
        if self.port.ggml_type in QUANTIZERS or (self.identical and not np.array_equal(values, restored)):
            self.identical = False
        if self.reference_equal and not self.identical:
            expected = np.ascontiguousarray(encode(values, cast(int, self.port.ggml_type)))  # (a GGUF tensor's)
            self.reference_equal = expected.tobytes() == np.ascontiguousarray(port_piece).tobytes()
        self._add_error(start, values, restored)

    def _add_error(self, start: int, values: np.ndarray, restored: np.ndarray) -> None:
        if self.per_expert is None:
            self.stats.add(values, restored)
            return
        for i in range(values.shape[0]):  # a chunk holds whole experts, each in one chunk only
            expert = self.per_expert[start + i] = ErrorStats()
            expert.add(values[i], restored[i])
            self.stats.merge(expert)

    def add_unchanged(self, start: int, source) -> None:
        """A chunk that came back bit for bit still counts in the tensor's signal (its error is 0)."""
        values = self.target.source.decode(source)
        self._add_error(start, values, values)

    def _add_fp4(self, start: int, source, port_piece) -> None:
        """Both sides as HF blocks and scales, whatever layout the port stores them in."""
        blocks, scales = self.target.source.hf_mxfp4(source)
        self.blocks += scales.size
        self.codes += scales.size * 32
        if self.port.ggml_type == T.MXFP4 and np.array_equal(mxfp4.hf_to_ggml(blocks, scales).reshape(-1),
                                                             np.asarray(port_piece).reshape(-1)):
            self.unchanged.append((start, start + len(scales)))
            return  # the common case, settled by one repack and a byte comparison
        pb, ps = (a.reshape(b.shape) for a, b in zip(self.port.hf_mxfp4(port_piece), (blocks, scales)))
        if np.array_equal(pb, blocks) and np.array_equal(ps, scales):
            self.unchanged.append((start, start + len(scales)))
            return
        self.identical = False
        code_diff = mxfp4.hf_codes(pb) != mxfp4.hf_codes(blocks)
        block_diff = code_diff.any(axis=-1) | (ps != scales)
        self.codes_differ += int(code_diff.sum())
        self.blocks_differ += int(block_diff.sum())
        if self.first_diff is None:
            e, row, block = (int(i) for i in np.argwhere(block_diff)[0])
            self.first_diff = {"expert": start + e, "row": row, "block": block,
                               "source_scale": int(scales[e, row, block]), "port_scale": int(ps[e, row, block])}
        self._add_error(start, mxfp4.decode_hf(blocks, scales), mxfp4.decode_hf(pb, ps))

    def result(self) -> TensorCheck:
        t, p = self.target, self.port
        if self.identical:
            status = "bit-identical"
        elif self.reference_equal:
            status = "reference-requantized"
        else:
            status = "lossy"
        details = {}
        if status != "bit-identical":
            details.update(self.stats.summary())
            if self.per_expert is not None:
                unchanged = ErrorStats()
                details["per_expert"] = [{"expert": e, **self.per_expert.get(e, unchanged).summary()}
                                         for e in range(t.source.shape[0])]
        if self.blocks:
            details.update({"blocks": self.blocks, "blocks_differ": self.blocks_differ,
                            "fraction_blocks_differ": self.blocks_differ / self.blocks,
                            "fraction_codes_differ": self.codes_differ / self.codes})
            if self.first_diff:
                details["first_differing_block"] = self.first_diff
        return TensorCheck(t.source.name, p.name, t.source.format, p.format, status, details)


VERIFY_CHUNK_BYTES = 4 << 20  # small pieces: large temporaries cost more than the comparisons


def compare_pair(target: Target, port: Tensor) -> TensorCheck:
    cmp = _Comparison(target, port)
    for start, stop in chunk_ranges(target, VERIFY_CHUNK_BYTES):
        cmp.add(start, rows_of(target, target.source.read(start, stop)), port.read(start, stop))
    if not cmp.identical:  # rare (a partly changed tensor): read its unchanged chunks again for their signal
        for start, stop in cmp.unchanged:
            cmp.add_unchanged(start, rows_of(target, target.source.read(start, stop)))
    return cmp.result()
