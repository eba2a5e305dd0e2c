"""Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist) on a checkpoint.

usage: python llama_convert.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf [--outtype bf16]

The fixture tokenizer is small, so its hash is not the real one's: we tell the converter
the pre-tokenizer is "gpt-4o", which it derives from the hash for the real gpt-oss.
"""

import sys
from pathlib import Path

llama_dir, model_dir, out, *rest = sys.argv[1:]
sys.path.insert(0, llama_dir)
sys.path.insert(1, str(Path(llama_dir) / "gguf-py"))

import convert_hf_to_gguf  # noqa: E402
from conversion import base  # noqa: E402

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-4o"
sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", out, *rest]
convert_hf_to_gguf.main()
