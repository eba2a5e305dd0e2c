"""The bytes of the lossless plan: MXFP4 experts repacked bit for bit, the rest as llama.cpp writes it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from gguf import GGMLQuantizationType as T

from ..files.stream import CHUNK_BYTES
from ..formats import mxfp4
from ..formats.registry import encode
from ..plan.layout import iter_chunks
from ..plan.lossless import PlannedTensor


def lossless_chunks(p: PlannedTensor) -> Iterator[np.ndarray]:
    """The planned tensor's bytes, a few whole experts (or rows) of its source at a time."""
    source = p.target.source
    for chunk in iter_chunks(p.target, CHUNK_BYTES):
        if source.format == "MXFP4":
            yield mxfp4.hf_to_ggml(*source.hf_mxfp4(chunk))
        elif p.type == T.BF16 and source.format == "BF16":
            yield chunk  # kept as stored
        else:
            yield encode(source.decode(chunk), p.type)
