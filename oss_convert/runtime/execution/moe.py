"""Which path runs a MoE block, and running it: the Triton kernels on CUDA for MXFP4 experts, the
C decode step for one token on the CPU, the torch reference everywhere else."""

from __future__ import annotations

import torch

from ..model.moe import MoEBlock
from ..weights.experts import MappedExperts
from . import decode

TRITON_MIN = (3, 3)  # the first whose tl.dot_scaled takes a bf16 operand beside the FP4 one


def triton_available() -> bool:
    """Triton imports and is new enough for the MXFP4 kernels (older ones: the torch path)."""
    try:
        from ..kernels.triton_moe import TRITON_VERSION
    except ImportError:
        return False
    return TRITON_VERSION >= TRITON_MIN


def choose_backend(block: MoEBlock, device: torch.device, backend: str = "auto") -> str:
    if backend != "auto":
        return backend
    mxfp4 = block.gate_up.format == block.down.format == "MXFP4"
    return "triton" if device.type == "cuda" and mxfp4 and triton_available() else "torch"


def run_moe(block: MoEBlock, h: torch.Tensor, backend: str = "auto",
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """The MoE block on normalized hidden states h [T, H]: [T, H] float32, added to `residual`
    where one is given (one token on the CPU: into it, in place)."""
    backend = choose_backend(block, h.device, backend)
    if backend == "torch":
        if decode.moe_takes(block, h):  # one token on the CPU: two C calls
            if residual is None:
                return decode.moe_one_token(block, h)
            decode.add_moe_one_token(block, h.float().contiguous(), residual)
            return residual
        out = block.forward(h)
        return out if residual is None else residual + out
    from ..kernels.triton_moe import moe_mxfp4_triton
    # the kernels take experts in memory: a block left in its file (on the CPU, for Triton's
    # interpreter) is read in first
    gate_up, down = (w.resident(h.device) if isinstance(w, MappedExperts) else w for w in (block.gate_up, block.down))
    experts, weights = block.route(h)
    out = moe_mxfp4_triton(h, experts, weights, gate_up, block.b1, down, block.b2,
                           limit=block.swiglu_limit, alpha=block.swiglu_alpha)
    return out if residual is None else residual + out
