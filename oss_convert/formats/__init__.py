"""Codecs of the weight formats: one module per format, vectorized over all blocks."""
