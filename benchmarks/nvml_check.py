"""check's NVML path on a CUDA GPU: our own `generate` runs in this process on CUDA, and NVML's
per-process GPU memory (what `check` reads for a server) is set against torch's
memory_reserved() plus the CUDA context, read the same way before the model was loaded.

    python benchmarks/nvml_check.py [--preset mid]   (needs nvidia-ml-py: pip install 'oss-convert[nvml]')
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import torch

    from fixtures.checkpoints import write_checkpoint
    from oss_convert.check.process import gpu_processes
    from oss_convert.checkpoint import open_checkpoint
    from oss_convert.generate import generate
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="mid")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    torch.zeros(1, device="cuda")  # the CUDA context alone
    before, name = gpu_processes()
    if os.getpid() not in before:
        print(f"NVML does not list this process on {name} (nvidia-ml-py missing, or no per-process accounting)")
        return 1
    context = before[os.getpid()] - torch.cuda.memory_reserved()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_checkpoint(Path(tmp) / args.preset, args.preset)
        doc = generate(open_checkpoint(folder), "Hello", max_tokens=16, device="cuda")
        after, _ = gpu_processes()
    nvml, reserved = after[os.getpid()], torch.cuda.memory_reserved()
    expected = reserved + context
    print(f"{name}: NVML says this process holds {nvml / 2**20:.1f} MiB; torch reserved {reserved / 2**20:.1f} MiB "
          f"+ CUDA context {context / 2**20:.1f} MiB = {expected / 2**20:.1f} MiB; ratio {nvml / expected:.3f}; "
          f"generate decoded at {doc['timings']['predicted_per_second'] or 0:.1f} tokens/s")
    return 0 if abs(nvml / expected - 1) < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
