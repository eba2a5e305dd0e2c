"""oss-convert: inspect, convert and verify OpenAI GPT-OSS checkpoints and GGUF ports."""

__version__ = "0.1.0"
