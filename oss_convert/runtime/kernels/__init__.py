"""The runtime's kernels: the CPU's in C (native/), the GPU's MXFP4 MoE in Triton (triton_moe.py),
and the Triton variants no default path uses yet (variants/). They take tensors and stored
bytes, never the runtime's weight objects or a checkpoint."""
