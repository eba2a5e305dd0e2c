"""How much memory a GPT-OSS model takes at a given context: in llama.cpp, and in our runtime.

context: what an estimate is computed from; llama: libllama's buffers; runtime: our runtime's
tensors; estimate: both at one or more contexts, and what fits a GPU.
"""
