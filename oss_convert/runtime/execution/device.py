"""Which device the runtime runs on, from a command's --device and --activations."""

from __future__ import annotations

import torch

from ...errors import OssConvertError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OssConvertError("--device cuda: no CUDA device is available")
    return torch.device(name)


def runtime_device(device: str, activations: str) -> torch.device:
    """The device to run on: Q8_0 activations are the CPU kernels', so "auto" means the CPU there
    (the weight source refuses what cannot run)."""
    return pick_device("cpu" if activations == "q8" and device == "auto" else device)
