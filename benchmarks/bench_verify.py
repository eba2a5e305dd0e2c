"""verify on a full-size pair (random GPT-OSS checkpoint and its lossless GGUF) against the
time to read both files once (cat to /dev/null).

usage: python benchmarks/bench_verify.py WORKDIR [--preset 20b]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import ensure_fixture, fmt_row, run_measured


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir", type=Path)
    p.add_argument("--preset", default="20b")
    args = p.parse_args()
    src = ensure_fixture(args.workdir / f"gpt-oss-{args.preset}", args.preset)
    port = args.workdir / "port.gguf"
    run_measured([sys.executable, "-m", "oss_convert.cli", "convert", str(src), "-o", str(port), "--force"])
    files = [str(f) for f in sorted(src.glob("*.safetensors"))] + [str(port)]
    size = sum(Path(f).stat().st_size for f in files)
    rows = [("cat both files > /dev/null", *run_measured(["sh", "-c", 'cat "$@" > /dev/null', "cat", *files])),
            ("oss-convert verify", *run_measured([sys.executable, "-m", "oss_convert.cli", "verify", str(src),
                                                  str(port), "--json"]))]
    port.unlink()
    print(f"\n{args.preset}: {size / 1e9:.1f} GB to read (checkpoint + GGUF)")
    widths = (30, 10, 14, 12)
    print(fmt_row(("tool", "wall s", "peak RSS MB", "x cat"), widths))
    for name, wall, rss in rows:
        print(fmt_row((name, f"{wall:.1f}", f"{rss / 2**20:.0f}", f"{wall / rows[0][1]:.2f}"), widths))


if __name__ == "__main__":
    main()
