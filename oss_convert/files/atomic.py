"""Outputs that appear at their name only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import OssConvertError


def check_target(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OssConvertError(f"{path}: already exists (use --force to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OssConvertError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OssConvertError(f"{path}: folder {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: Path, force: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any
    failure (error, Ctrl-C, SystemExit from SIGTERM) it is removed."""
    path = Path(path)
    check_target(path, force)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        if directory:
            tmp.mkdir()
        yield tmp
        if directory:
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            tmp.rename(path)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise OssConvertError(f"{path}: not written ({e.strerror or e})") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
