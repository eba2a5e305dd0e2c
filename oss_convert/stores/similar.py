"""The names a store holds that are nearest to a name it does not."""

from __future__ import annotations

import difflib


def nearest(query: str, names: list[str], n: int = 5) -> list[str]:
    """Names containing the query's last part, then the closest by difflib's ratio."""
    key = query.lower().rsplit("/", 1)[-1].split(":")[0]
    containing = [m for m in names if key and key in m.lower()]
    close = difflib.get_close_matches(query.lower(), [m.lower() for m in names], n=n, cutoff=0.5)
    by_lower = {m.lower(): m for m in names}
    found = containing + [by_lower[c] for c in close if by_lower[c] not in containing]
    return found[:n]


def hint(query: str, names: list[str]) -> str:
    near = nearest(query, names)
    return f"; nearest: {', '.join(near)}" if near else ""
