"""This machine's memory read bandwidth, the figure `check` divides a decode step's bytes by on
the CPU, measured at length (a 1 GiB buffer, every core, 40 passes: median and best) and set
against `check`'s own short measurement (256 MiB, 0.3 s) in the same run.

    python benchmarks/bench_memory_read.py
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from oss_convert.check.ceiling import cpu_read_bandwidth, read_pass  # noqa: E402

SIZE = 1 << 30
PASSES = 40


def main() -> None:
    threads = os.cpu_count() or 1
    data = np.ones(SIZE // 8, dtype=np.uint64)
    read_pass(data, threads)
    rates = [SIZE / read_pass(data, threads) / 1e9 for _ in range(PASSES)]
    median, best = statistics.median(rates), max(rates)
    quick = [cpu_read_bandwidth() / 1e9 for _ in range(5)]
    print(f"memory read, {threads} threads, 1 GiB x {PASSES}: median {median:.1f} GB/s, best {best:.1f} GB/s")
    print(f"check's quick read (256 MiB, 0.3 s), 5 times: {', '.join(f'{q:.1f}' for q in quick)} GB/s; "
          f"against the median: {min(quick) / median:.2f}x to {max(quick) / median:.2f}x")


if __name__ == "__main__":
    main()
