"""Expanding one packed expert to float32 with torch, on whatever device it lives.

MXFP4 and the 32-value ggml formats that GPT-OSS ports use for experts (Q8_0, Q5_0, Q4_0,
Q5_1) decode natively in torch; the K-quants go through the numpy codecs (host round trip).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from ..formats.mxfp4 import E2M1_VALUES
from ..formats.registry import decode

E2M1 = torch.from_numpy(E2M1_VALUES)


def mxfp4_to_float(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Packed HF-layout codes [..., K/2] and E8M0 scales [..., K/32] -> float32 [..., K]."""
    lut = E2M1.to(codes.device)
    values = torch.stack([lut[(codes & 0x0F).long()], lut[(codes >> 4).long()]], dim=-1).flatten(-2)
    factor = torch.exp2(scales.float() - 127)
    factor = torch.where(scales == 255, torch.nan, factor)  # E8M0's one NaN, not 2^128
    return (values.unflatten(-1, (-1, 32)) * factor[..., None]).flatten(-2)


def _fp16(raw: torch.Tensor) -> torch.Tensor:
    return raw.contiguous().view(torch.float16).float()


def _legacy_blocks(rows: torch.Tensor, qtype: T) -> torch.Tensor:
    """Q8_0 / Q4_0 / Q5_0 / Q5_1 rows of blocks [N, bytes] -> float32 [N, K]."""
    size = {T.Q8_0: 34, T.Q4_0: 18, T.Q5_0: 22, T.Q5_1: 24}[qtype]
    b = rows.reshape(rows.shape[0], -1, size)
    d = _fp16(b[..., 0:2])
    if qtype == T.Q8_0:
        return (d * b[..., 2:].contiguous().view(torch.int8).float()).flatten(1)
    qs = b[..., -16:]
    low = torch.cat([qs & 0x0F, qs >> 4], dim=-1).int()
    if qtype == T.Q4_0:
        return (d * (low - 8).float()).flatten(1)
    qh_bytes = b[..., 2:6] if qtype == T.Q5_0 else b[..., 4:8]
    qh = sum(qh_bytes[..., i].int() << (8 * i) for i in range(4))
    bit = torch.arange(32, device=rows.device, dtype=torch.int32)
    q = low | (((qh[..., None] >> bit) & 1) << 4)
    if qtype == T.Q5_0:
        return (d * (q - 16).float()).flatten(1)
    return (d * q.float() + _fp16(b[..., 2:4])).flatten(1)


def dequantize_expert(packed, e: int) -> torch.Tensor:
    fmt = packed.format
    if fmt == "MXFP4":
        return mxfp4_to_float(packed.data[e], packed.scales[e])
    if fmt == "F32":
        return packed.data[e].float()
    qtype = T[fmt]
    if qtype in (T.Q8_0, T.Q4_0, T.Q5_0, T.Q5_1):
        return _legacy_blocks(packed.data[e], qtype)
    rows = packed.data[e].cpu().numpy()
    return torch.from_numpy(np.ascontiguousarray(decode(rows, qtype))).to(packed.data.device)
