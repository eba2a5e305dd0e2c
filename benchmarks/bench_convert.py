"""Lossless conversion of a full-size random GPT-OSS checkpoint: oss-convert against
llama.cpp's convert_hf_to_gguf.py and against a plain copy of the same bytes.

usage: python benchmarks/bench_convert.py WORKDIR [--preset 20b] [--llama-cpp-dir DIR] [--sparse]

Each tool runs in its own process; wall time includes a final sync; peak RSS is the
child's ru_maxrss. --sparse writes the source as holes (no disk, no generation time):
the way to measure the 120b shape's memory on a disk that holds only one 65 GB file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from common import ROOT, ensure_fixture, fmt_row, run_measured


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir", type=Path)
    p.add_argument("--preset", default="20b")
    p.add_argument("--llama-cpp-dir", type=Path)
    p.add_argument("--sparse", action="store_true")
    args = p.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    src = ensure_fixture(work / f"gpt-oss-{args.preset}{'-sparse' if args.sparse else ''}", args.preset, args.sparse)
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    rows = []

    if not args.sparse:
        copy_dir = work / "copy"
        shutil.rmtree(copy_dir, ignore_errors=True)
        copy_dir.mkdir()
        wall, rss = run_measured(["cp", *map(str, sorted(src.glob("*.safetensors"))), str(copy_dir)])
        shutil.rmtree(copy_dir)
        rows.append(("plain copy (cp + sync)", wall, rss))

    ours = work / "ours.gguf"
    wall, rss = run_measured([sys.executable, "-m", "oss_convert.cli", "convert", str(src), "-o", str(ours), "--force"])
    rows.append(("oss-convert convert", wall, rss))
    ours.unlink()

    if args.llama_cpp_dir:
        ref = work / "llama.gguf"
        wall, rss = run_measured([sys.executable, str(ROOT / "tests/reference/llama_convert.py"),
                                  str(args.llama_cpp_dir), str(src), str(ref), "--outtype", "bf16"])
        rows.append(("llama.cpp convert_hf_to_gguf.py", wall, rss))
        ref.unlink()

    print(f"\n{args.preset} checkpoint, {size / 1e9:.2f} GB of safetensors{' (sparse source)' if args.sparse else ''}")
    widths = (34, 10, 14, 16, 16)
    print(fmt_row(("tool", "wall s", "peak RSS MB", "x copy time", "x llama.cpp"), widths))
    copy = next((w for n, w, _ in rows if n.startswith("plain")), None)
    ref = next((w for n, w, _ in rows if n.startswith("llama")), None)
    for name, wall, rss in rows:
        print(fmt_row((name, f"{wall:.1f}", f"{rss / 2**20:.0f}", f"{wall / copy:.2f}" if copy else "-",
                       f"{wall / ref:.2f}" if ref else "-"), widths))


if __name__ == "__main__":
    main()
