"""Plain-text rendering shared by every command: sizes, counts and aligned tables."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """Bytes in powers of 1000, as files are sized."""
    return _scaled(n, 1000, ("B", "KB", "MB", "GB", "TB"))


def human_binary(n: float) -> str:
    """Bytes in powers of 1024, as llama.cpp logs them and GPU memory is specified."""
    return _scaled(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB"))


def _scaled(n: float, step: int, units: tuple[str, ...]) -> str:
    for unit in units:
        if abs(n) < step or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= step
    return f"{n} B"


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def shape_text(shape) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]

