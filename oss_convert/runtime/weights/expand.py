"""Expanding one packed expert to float32 on whatever device it lives.

On a GPU the formats experts take in GPT-OSS ports (the table's `torch` column: MXFP4, the
32-value ggml blocks Q8_0, Q5_0, Q4_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K) decode in torch,
so the packed expert never leaves the device, each with the float32 arithmetic of ggml's
dequantizer in the same order, so the values match the numpy codecs bit for bit; any other ggml
type is decoded on the host. On the CPU, products are taken from the stored form by the C
kernels where they are built and take the type; otherwise the numpy codecs expand the expert
(their table lookups are 2-7x faster than the same work in torch ops).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from ...formats import mxfp4, table
from ...formats.mxfp4 import E2M1_VALUES
from ...formats.registry import decode

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
    b = rows.reshape(rows.shape[0], -1, table.BY_TYPE[qtype].block_bytes)
    d = _fp16(b[..., 0:2])
    if qtype == T.Q8_0:
        return (d * b[..., 2:].contiguous().view(torch.int8).float()).flatten(1)
    qs = b[..., -16:]
    low = torch.cat([qs & 0x0F, qs >> 4], dim=-1).int()
    if qtype == T.Q4_0:
        return (d * (low - 8).float()).flatten(1)
    qh_bytes = b[..., 2:6] if qtype == T.Q5_0 else b[..., 4:8]
    qh = qh_bytes[..., 0].int()
    for i in range(1, 4):
        qh = qh | (qh_bytes[..., i].int() << (8 * i))
    bit = torch.arange(32, device=rows.device, dtype=torch.int32)
    q = low | (((qh[..., None] >> bit) & 1) << 4)
    if qtype == T.Q5_0:
        return (d * (q - 16).float()).flatten(1)
    return (d * q.float() + _fp16(b[..., 2:4])).flatten(1)


def _scales_mins_k4(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K super-blocks [..., bytes] -> the 8 six-bit group scales and mins, as float32."""
    q = b[..., 4:16]
    sc = torch.cat([q[..., 0:4] & 63, (q[..., 8:12] & 0xF) | ((q[..., 0:4] >> 6) << 4)], dim=-1)
    m = torch.cat([q[..., 4:8] & 63, (q[..., 8:12] >> 4) | ((q[..., 4:8] >> 6) << 4)], dim=-1)
    return sc.float(), m.float()


def _nibble_groups(qs: torch.Tensor) -> torch.Tensor:
    """128 bytes of 4-bit codes [..., 128] -> [..., 8, 32]: the r-th run of 32 bytes holds group
    2r in its low nibbles and group 2r + 1 in its high ones."""
    runs = qs.unflatten(-1, (4, 32))
    return torch.stack([runs & 0xF, runs >> 4], dim=-2).flatten(-3, -2)


def _k_blocks(rows: torch.Tensor, qtype: T) -> torch.Tensor:
    """Q4_K / Q5_K / Q6_K rows of 256-value super-blocks [N, bytes] -> float32 [N, K]."""
    b = rows.reshape(rows.shape[0], -1, table.BY_TYPE[qtype].block_bytes)
    if qtype == T.Q6_K:
        ql, qh = b[..., 0:128].unflatten(-1, (2, 64)), b[..., 128:192].unflatten(-1, (2, 32))
        q = torch.stack([(ql[..., :32] & 0xF) | ((qh & 3) << 4),
                         (ql[..., 32:] & 0xF) | (((qh >> 2) & 3) << 4),
                         (ql[..., :32] >> 4) | (((qh >> 4) & 3) << 4),
                         (ql[..., 32:] >> 4) | (((qh >> 6) & 3) << 4)], dim=-2).float() - 32
        sc = b[..., 192:208].contiguous().view(torch.int8).float()
        return ((_fp16(b[..., 208:210]) * sc)[..., None] * q.reshape(q.shape[:-3] + (16, 16))).flatten(1)
    d, dmin = _fp16(b[..., 0:2]), _fp16(b[..., 2:4])
    sc, m = _scales_mins_k4(b)
    if qtype == T.Q4_K:
        codes = _nibble_groups(b[..., 16:144])
    else:  # Q5_K: fifth bits in qh[32], bit g of byte l for value l of group g
        qh = b[..., 16:48]
        high = torch.stack([(qh >> g) & 1 for g in range(8)], dim=-2)
        codes = _nibble_groups(b[..., 48:176]) | (high << 4)
    return ((d * sc)[..., None] * codes.float() - (dmin * m)[..., None]).flatten(1)


# the torch implementation of each ggml type the table says torch expands
IN_TORCH = {T.Q4_0: _legacy_blocks, T.Q5_0: _legacy_blocks, T.Q5_1: _legacy_blocks, T.Q8_0: _legacy_blocks,
            T.Q4_K: _k_blocks, T.Q5_K: _k_blocks, T.Q6_K: _k_blocks}


def expand_in_torch(packed, e: int) -> torch.Tensor:
    """Expert e of packed MXFP4 or ggml blocks as float32 [N, K], with torch ops on its device."""
    if packed.format == "MXFP4":
        return mxfp4_to_float(packed.data[e], packed.scales[e])
    row = table.BY_NAME.get(packed.format)
    if row is not None and row.torch and row.ggml_type is not None:
        qtype = T(row.ggml_type)
        return IN_TORCH[qtype](packed.data[e], qtype)
    # no port ships its experts in the other types (IQ*, TQ*, Q2_K, Q3_K, Q4_1) at scale: they
    # are decoded on the host and the values copied to the device
    device = packed.data.device
    return expand_in_numpy(packed.format, packed.shape[1:], packed.data[e].cpu().numpy(), None).to(device)


def expand_in_numpy(format: str, shape: tuple[int, int], data: np.ndarray, scales: np.ndarray | None) -> torch.Tensor:
    """One expert [N, K] in its packed form (numpy, in host memory or memory-mapped) as float32,
    by the numpy codecs."""
    if format == "F32":
        return torch.from_numpy(np.array(data, dtype=np.float32))
    if format == "MXFP4":
        assert scales is not None  # HF's layout: the E8M0 bytes come apart
        values = mxfp4.decode_hf(data.reshape(data.shape[0], -1, 16), scales)
    else:
        values = decode(data, T[format])
    return torch.from_numpy(values.reshape(shape))


def dequantize_expert(packed, e: int) -> torch.Tensor:
    """Expert e of PackedExperts as float32 [N, K], on its device."""
    if packed.format == "F32":
        return packed.data[e].float()
    if packed.data.device.type != "cpu":
        return expand_in_torch(packed, e)
    return expand_in_numpy(packed.format, packed.shape[1:], packed.data[e].numpy(),
                           None if packed.scales is None else packed.scales[e].numpy())
