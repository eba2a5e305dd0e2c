"""Tensor by tensor: does the port hold the source's bits, a reference requantization, or less?

Each source tensor (under its HF name) is paired with its counterpart(s) in the port's
layout, and both are streamed expert by expert (or row range by row range), each file
read once. MXFP4 is compared at the level of FP4 codes and scale bytes after undoing the
layout, so a difference is located at (expert, row, block).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as T

from ..checkpoint import GGUFCheckpoint, SafetensorsCheckpoint
from ..checkpoint.names import gguf_names
from ..convert.layout import Target, chunk_ranges, rows_of
from ..files.gguf import GGUFTensor
from ..formats import floats, mxfp4
from ..formats.registry import OLLAMA_MXFP4, QUANTIZERS, decode
from ..metrics import ErrorStats


def port_format(t: GGUFTensor) -> str:
    return "MXFP4" if t.type in (T.MXFP4, OLLAMA_MXFP4) else t.type_name


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


def pair_tensors(src: SafetensorsCheckpoint, port: GGUFCheckpoint) -> tuple[list[tuple[Target, GGUFTensor]], list[TensorCheck]]:
    """(pairs to compare, checks already decided: missing, extra, shape-mismatch)."""
    tensors = port.gguf.tensors
    pairs, decided, used = [], [], set()
    for hf in src.hf_tensors():
        for gname in gguf_names(hf.name, port.layout):
            target = Target(gname.gguf, hf, gname.part)
            t = tensors.get(gname.gguf)
            if t is None:
                decided.append(TensorCheck(hf.name, gname.gguf, hf.format, None, "missing"))
                continue
            used.add(t.name)
            if t.shape != target.ggml_shape:
                decided.append(TensorCheck(hf.name, t.name, hf.format, port_format(t), "shape-mismatch",
                                           {"expected_shape": list(target.ggml_shape), "found_shape": list(t.shape)}))
                continue
            pairs.append((target, t))
    for name, t in tensors.items():
        if name not in used:
            decided.append(TensorCheck(None, name, None, port_format(t), "extra"))
    return pairs, decided


class _Comparison:
    """Running state of one tensor's comparison across chunks."""

    def __init__(self, target: Target, port: GGUFTensor):
        self.target, self.port = target, port
        self.identical = True
        self.reference_equal = port.type in QUANTIZERS
        self.stats = ErrorStats()
        self.blocks = self.blocks_differ = self.codes = self.codes_differ = 0
        self.first_diff = None

    def add(self, start: int, source, port_bytes: np.ndarray) -> None:
        if self.target.source.format == "MXFP4" and self.port.type in (T.MXFP4, OLLAMA_MXFP4):
            self._add_fp4(start, source, port_bytes)
            return
        if self.identical and self.target.source.format == "BF16" and self.port.type == T.BF16:
            if np.array_equal(np.asarray(source).reshape(-1), raw_words(port_bytes)):
                return  # kept as BF16: equal words, no need to look at values
        values = (mxfp4.decode_hf(*source) if self.target.source.format == "MXFP4"
                  else floats.to_float32(source, self.target.source.format))
        restored = self._port_values(port_bytes).reshape(values.shape)
        if self.port.type in QUANTIZERS:
            self.identical = False
            if self.reference_equal:
                expected = QUANTIZERS[self.port.type].quantize(values)
                self.reference_equal = expected.tobytes() == np.ascontiguousarray(port_bytes).tobytes()
        elif self.identical and not np.array_equal(values, restored):
            self.identical = False
        self.stats.add(values, restored)

    def _port_values(self, raw: np.ndarray) -> np.ndarray:
        return decode(raw, self.port.type)

    def _port_fp4(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return mxfp4.ggml_to_hf(raw) if self.port.type == T.MXFP4 else mxfp4.ollama_to_hf(raw)

    def _add_fp4(self, start: int, source, raw: np.ndarray) -> None:
        blocks, scales = source
        self.blocks += scales.size
        self.codes += scales.size * 32
        if self.port.type == T.MXFP4 and np.array_equal(mxfp4.hf_to_ggml(blocks, scales).reshape(-1),
                                                        raw.reshape(-1)):
            return  # the common case, settled by one repack and a byte comparison
        self.blocks -= scales.size
        self.codes -= scales.size * 32
        pb, ps = self._port_fp4(raw)
        pb, ps = pb.reshape(blocks.shape), ps.reshape(scales.shape)
        self.blocks += scales.size
        self.codes += scales.size * 32
        if np.array_equal(pb, blocks) and np.array_equal(ps, scales):
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
        self.stats.add(mxfp4.decode_hf(blocks, scales), mxfp4.decode_hf(pb, ps))

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
            details.update(self.stats.report())
        if self.blocks:
            details.update({"blocks": self.blocks, "blocks_differ": self.blocks_differ,
                            "fraction_blocks_differ": self.blocks_differ / self.blocks,
                            "fraction_codes_differ": self.codes_differ / self.codes})
            if self.first_diff:
                details["first_differing_block"] = self.first_diff
        return TensorCheck(t.source.name, p.name, t.source.format, port_format(p), status, details)


def raw_words(port_bytes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(port_bytes).view(np.uint16).reshape(-1)


VERIFY_CHUNK_BYTES = 4 << 20  # small pieces: large temporaries cost more than the comparisons


def compare_pair(target: Target, port: GGUFTensor) -> TensorCheck:
    cmp = _Comparison(target, port)
    for start, stop in chunk_ranges(target, VERIFY_CHUNK_BYTES):
        source = rows_of(target, target.source.read(start, stop))
        port_bytes = port.read(start, stop) if len(port.shape) > 1 else port.read()
        cmp.add(start, source, port_bytes)
    return cmp.result()
