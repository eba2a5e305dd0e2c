"""How the model runs: which path each block takes (decode.py: the C decode step; moe.py: Triton,
C or torch for a MoE block), forward passes with a cache and windows streamed layer by layer
(forward.py), and the device (device.py)."""
