"""Helpers for benchmarks: run a command in a child process and read its wall time and peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds including a final sync, peak RSS in bytes) of `cmd`, which must succeed."""
    wall, rss, _ = _run(cmd, env, sample_anonymous=False)
    return wall, rss


def run_sampled(cmd: list[str], env: dict | None = None) -> tuple[float, int, int]:
    """(wall seconds, peak RSS, peak anonymous memory) of `cmd`, which must succeed. RSS counts the
    file pages a process maps (llama.cpp's and our experts); anonymous memory is what it
    allocates, sampled from /proc every 50 ms (0 where there is no /proc)."""
    return _run(cmd, env, sample_anonymous=True)


def _anonymous_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run(cmd: list[str], env: dict | None, sample_anonymous: bool) -> tuple[float, int, int]:
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty child must never block
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=log)
        anonymous = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if sample_anonymous else 0)
            if pid:
                break
            anonymous = max(anonymous, _anonymous_bytes(proc.pid))
            time.sleep(0.05)
        os.sync()
        log.seek(0)
        stderr = log.read().decode(errors="replace")
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss * 1024, anonymous


def cold_start() -> str:
    """Dirty pages written out and the page cache emptied where we may (root on Linux), so the
    next run reads its inputs from disk as any other run does. For runs whose inputs do not fit
    in the page cache together, where pre-reading them (fair_start) cannot work."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "page cache dropped before each run"
    except OSError:
        return "page cache not dropped (no permission): runs may find earlier runs' pages"


def fair_start(inputs: list[Path]) -> str:
    """Give the next measured run the same start as any other: dirty pages written out, the
    page cache emptied where we may (root on Linux), then the run's inputs read once, so
    that it finds them cached and nothing else. Returns how the cache was left."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        state = "page cache dropped, inputs pre-read"
    except OSError:
        state = "inputs pre-read (page cache not dropped: no permission)"
    for path in inputs:
        for f in sorted(path.glob("*")) if path.is_dir() else [path]:
            with open(f, "rb", buffering=0) as fh:
                while fh.read(64 << 20):
                    pass
    return state


def fmt_row(cells, widths) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))


def ensure_fixture(path: Path, preset: str, sparse: bool = False) -> Path:
    if not (path / "config.json").is_file():
        print(f"generating {preset} fixture in {path} ...", flush=True)
        sys.path.insert(0, str(ROOT))
        from fixtures.checkpoints import write_checkpoint
        shards = {"20b": 3, "120b": 15}.get(preset, 1)
        write_checkpoint(path, preset, shards=shards, sparse=sparse)
    return path
