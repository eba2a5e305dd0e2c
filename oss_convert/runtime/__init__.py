"""The runtime: GPT-OSS from any checkpoint or port, on torch, in four layers that look only down:

- kernels/: the CPU's C kernels and the GPU's Triton kernels, over tensors and stored bytes;
- weights/: weight objects that multiply themselves, and the one reader of a checkpoint;
- model/: the model's math, block by block, over those objects (the oracle);
- execution/: which path each block takes, and forward passes.

The commands that run the model (compare, generate) sit above it.
"""
