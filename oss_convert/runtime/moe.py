"""Running a MoE layer: the Triton kernels on CUDA for MXFP4 experts, torch everywhere else."""

from __future__ import annotations

import torch

from . import moe_decode
from .moe_reference import moe_reference, route
from .weights import MappedExperts, MoELayer

TRITON_MIN = (3, 3)  # the first whose tl.dot_scaled takes a bf16 operand beside the FP4 one


def triton_available() -> bool:
    """Triton imports and is new enough for the MXFP4 kernels (older ones: the torch path)."""
    try:
        from .triton_moe import TRITON_VERSION
    except ImportError:
        return False
    return TRITON_VERSION >= TRITON_MIN


def choose_backend(layer: MoELayer, device: torch.device, backend: str = "auto") -> str:
    if backend != "auto":
        return backend
    mxfp4 = layer.gate_up.format == layer.down.format == "MXFP4"
    return "triton" if device.type == "cuda" and mxfp4 and triton_available() else "torch"


def moe_forward(layer: MoELayer, x: torch.Tensor, backend: str = "auto",
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """The MoE block on already-normalized hidden states x [T, H]; returns [T, H] float32, added
    to `residual` where one is given (one token on the CPU: into it, in place)."""
    backend = choose_backend(layer, x.device, backend)
    if backend == "torch":
        if moe_decode.takes(layer, x):  # one token on the CPU: two native calls
            if residual is None:
                return moe_decode.moe_one_token(layer, x)
            moe_decode.add_moe_one_token(layer, x.float().contiguous(), residual)
            return residual
        # the reference math, with each used expert expanded from its packed form on demand
        out = moe_reference(x, layer.router_w, layer.router_b, layer.gate_up, layer.b1, layer.down, layer.b2,
                            layer.top_k, layer.swiglu_limit, layer.swiglu_alpha)
        return out if residual is None else residual + out
    from .triton_moe import moe_mxfp4_triton
    # the kernels take experts in memory: a layer left in its file (on the CPU, for Triton's
    # interpreter) is read in first
    gate_up, down = (w.resident(x.device) if isinstance(w, MappedExperts) else w for w in (layer.gate_up, layer.down))
    experts, weights = route(x, layer.router_w, layer.router_b, layer.top_k)
    out = moe_mxfp4_triton(x, experts, weights, gate_up, layer.b1, down, layer.b2,
                           limit=layer.swiglu_limit, alpha=layer.swiglu_alpha)
    return out if residual is None else residual + out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
