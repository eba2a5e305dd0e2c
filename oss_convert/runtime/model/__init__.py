"""GPT-OSS as math, block by block, over weight objects it asks the weight source for by name:
norm.py, rope.py, attention.py (AttentionBlock), moe.py (MoEBlock, and the reference MoE math),
cache.py (the KV cache), transformer.py (DecoderBlock, Transformer). Plain torch: the oracle
the faster paths (runtime.execution) are measured against."""
