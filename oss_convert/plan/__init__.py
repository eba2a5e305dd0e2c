"""Which GGUF tensors, of which ggml types, a checkpoint becomes, and why: llama.cpp's
converter (the lossless plan) and llama-quantize's mixtures, shared by convert, inspect and
verify. Plans only: the bytes are produced by the convert command."""
