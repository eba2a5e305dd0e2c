"""How much memory a GPT-OSS model takes at a given context: in llama.cpp, and in our runtime.

context: what a plan is computed from; llama: libllama's buffers; runtime: our runtime's tensors;
plan: both at one or more contexts, and what fits a GPU.
"""
