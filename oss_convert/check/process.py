"""The server process behind a local port, and the memory it holds: resident memory from
/proc (Linux), GPU memory per process through NVML where an NVIDIA GPU and nvidia-ml-py are."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def listening_pid(url: str) -> int | None:
    """The process listening on the URL's port on this machine, or None (another host, another
    user's process, no /proc)."""
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return int(pid)
        except OSError:
            continue
    return None


def resident_bytes(pid: int) -> int | None:
    """VmRSS of a process: its pages in memory, the model file's mapped pages included."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def gpu_processes() -> tuple[dict[int, int], str | None]:
    """(pid -> GPU bytes used, summed over GPUs) through NVML, and the first GPU's name; empty
    where NVML (nvidia-ml-py) or an NVIDIA driver is missing."""
    try:
        import pynvml
    except ImportError:
        return {}, None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no GPU: NVMLError's subclasses
        return {}, None
    used: dict[int, int] = {}
    name = None
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            if name is None:
                raw = pynvml.nvmlDeviceGetName(handle)
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.usedGpuMemory is not None:
                    used[proc.pid] = used.get(proc.pid, 0) + int(proc.usedGpuMemory)
    finally:
        pynvml.nvmlShutdown()
    return used, name
