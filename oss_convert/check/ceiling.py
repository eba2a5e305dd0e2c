"""What a decode step could run at: the bytes one token streams, over the memory bandwidth of
where the model runs (a GPU from a table of known cards, or a short read measured here)."""

from __future__ import annotations

import time

import numpy as np
from gguf import GGMLQuantizationType as T

from ..checkpoint import Checkpoint, Role
from ..files.gguf import block_geometry, tensor_nbytes
from ..memory.estimate import model_shape

# Peak memory bandwidth by the name NVML reports (first match wins: specific names first), in
# bytes/s, each from the vendor's own specification.
GPU_BANDWIDTH: list[tuple[str, float, str]] = [
    ("H100 NVL", 3.9e12, "NVIDIA H100 datasheet: H100 NVL 3.9 TB/s"),
    ("H100 PCIe", 2.0e12, "NVIDIA H100 datasheet: H100 PCIe 2 TB/s"),
    ("H100", 3.35e12, "NVIDIA H100 datasheet: H100 SXM 3.35 TB/s"),
    ("H200", 4.8e12, "NVIDIA H200 datasheet: 4.8 TB/s"),
    ("B200", 8.0e12, "NVIDIA B200 (DGX B200) specification: 8 TB/s per GPU"),
    ("GB200", 8.0e12, "NVIDIA GB200 NVL72 specification: 8 TB/s per GPU"),
    ("A100-SXM4-80GB", 2.039e12, "NVIDIA A100 datasheet: 80GB SXM 2,039 GB/s"),
    ("A100 80GB PCIe", 1.935e12, "NVIDIA A100 datasheet: 80GB PCIe 1,935 GB/s"),
    ("A100", 1.555e12, "NVIDIA A100 datasheet: 40GB 1,555 GB/s"),
    ("L40S", 864e9, "NVIDIA L40S datasheet: 864 GB/s"),
    ("RTX PRO 6000 Blackwell", 1792e9, "NVIDIA RTX PRO 6000 Blackwell datasheet: 1,792 GB/s GDDR7"),
    ("RTX 5090", 1792e9, "NVIDIA GeForce RTX 5090 specifications: 1,792 GB/s (28 Gbps, 512-bit)"),
    ("RTX 5080", 960e9, "NVIDIA GeForce RTX 5080 specifications: 960 GB/s (30 Gbps, 256-bit)"),
    ("RTX 4090", 1008e9, "NVIDIA GeForce RTX 4090 specifications: 1,008 GB/s (21 Gbps, 384-bit)"),
    ("RTX 4080", 716.8e9, "NVIDIA GeForce RTX 4080 specifications: 716.8 GB/s (22.4 Gbps, 256-bit)"),
    ("RTX 3090", 936e9, "NVIDIA GeForce RTX 3090 specifications: 936 GB/s (19.5 Gbps, 384-bit)"),
    ("GB10", 273e9, "NVIDIA DGX Spark specification: LPDDR5x, 273 GB/s"),
    ("DGX Spark", 273e9, "NVIDIA DGX Spark specification: LPDDR5x, 273 GB/s"),
]


def gpu_bandwidth(name: str) -> tuple[float, str] | None:
    for key, bandwidth, source in GPU_BANDWIDTH:
        if key.lower() in name.lower():
            return bandwidth, source
    return None


def read_pass(data: np.ndarray, threads: int) -> float:
    """Seconds for `threads` threads to read their shares of `data` once (numpy's reductions
    release the GIL, so the shares are read in parallel, as a decode step's threads read)."""
    from concurrent.futures import ThreadPoolExecutor
    shares = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(np.sum, shares))
        return time.perf_counter() - start


def cpu_read_bandwidth(seconds: float = 0.3, size: int = 256 << 20, threads: int | None = None) -> float:
    """Bytes/s of a plain read of `size` bytes (well past the caches) by every core, the best
    pass of those that fit in `seconds`."""
    import os
    threads = threads or os.cpu_count() or 1
    data = np.ones(size // 8, dtype=np.uint64)  # written once: its pages are resident
    read_pass(data, threads)  # the threads and caches warmed, not timed
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        best = max(best, size / read_pass(data, threads))
        if time.perf_counter() > deadline:
            return best


def step_bytes(ckpt: Checkpoint, length: int, kv_type: str = "f16", experts_mxfp4: bool = False) -> dict:
    """The bytes one decode step reads at `length` cached tokens: every dense weight, one row of
    the token embedding, the top-k experts' share of each expert tensor, and the KV rows of the
    cache type (the sliding-window layers' at most a window). `experts_mxfp4`: the experts
    counted as MXFP4."""
    shape = model_shape(ckpt)
    block, block_bytes = block_geometry(T.MXFP4)
    dense = experts = 0.0
    for t in ckpt.tensors:
        if t.role.is_expert_weight or t.role == Role.EXPERT_BIAS:
            stored = t.n_params * block_bytes / block if experts_mxfp4 and t.role.is_expert_weight else t.nbytes
            experts += stored * shape.experts_per_token / shape.experts
        elif t.role == Role.EMBEDDING:
            dense += t.nbytes / max(t.shape[0], 1)
        else:
            dense += t.nbytes
    row = 2 * tensor_nbytes(T[kv_type.upper()], (shape.kv_heads * shape.head_dim,))  # K and V, a token, a layer
    kv = (shape.swa_layers * min(length, shape.sliding_window) + (shape.layers - shape.swa_layers) * length) * row
    return {"dense_bytes": dense, "expert_bytes": experts, "kv_bytes": kv, "total_bytes": dense + experts + kv}
