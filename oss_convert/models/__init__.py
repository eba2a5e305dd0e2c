"""`oss-convert models`: the GPT-OSS models this machine's apps hold, and a census of a base
model's quantizations on the Hub, each from headers only."""

from .census import census_document, render_census
from .local import local_document, render_local

__all__ = ["census_document", "local_document", "render_census", "render_local"]
