"""MoE kernel variants that no default path uses: the words layout of the experts (decoded by
bit operations instead of tl.dot_scaled's upcast), split-K for decode, and the sum over slots
fused into the down kernel. Each is correct (tested under the interpreter against the default
kernels) but has never been timed on a GPU; they live here, with their tests and the GPU
benchmark, until a measurement promotes one into kernels/triton_moe.py or deletes it."""
