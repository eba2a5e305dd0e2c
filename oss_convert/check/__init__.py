"""`oss-convert check`: is a running llama-server, LM Studio or Ollama running a GPT-OSS model as
it should? The file behind it (FP4 kept?), its speed from the server's figures and the stream's
clock, the memory it holds against our plan, its decode speed against the memory-bandwidth
ceiling, and whether its tokens are the ones our runtime computes from the same file."""

from .document import check_document, render_check

__all__ = ["check_document", "render_check"]
