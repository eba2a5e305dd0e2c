"""Where header bytes come from: a local file, or (see oss_convert.hub) HTTP range requests."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OssConvertError


class LocalFile:
    """Random access to a local file by positioned reads."""

    first_read = 64 << 20  # a first guess at how much of a GGUF holds its header

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = str(self.path)
        try:
            self.size = self.path.stat().st_size
        except OSError as e:
            raise OssConvertError(f"{self.path}: cannot read ({e.strerror or e})") from None

    def read(self, offset: int, n: int) -> bytes:
        try:
            with open(self.path, "rb", buffering=0) as f:
                return os.pread(f.fileno(), n, offset)
        except OSError as e:
            raise OssConvertError(f"{self.path}: cannot read ({e.strerror or e})") from None
