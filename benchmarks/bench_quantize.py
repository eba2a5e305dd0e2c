"""A llama-quantize mixture (Q4_K_M by default) of a full-size random GPT-OSS checkpoint:
oss-convert against llama-quantize, the same number of threads, each in its own process (wall
time with a final sync, peak RSS).

usage: python benchmarks/bench_quantize.py WORKDIR [--preset 20b] [--type q4_k_m] [--threads 2] [--repeat 1] [--check]

llama-quantize (libllama through llama-cpp-python) starts from the lossless MXFP4 GGUF that
llama.cpp's converter writes (made here by oss-convert, which writes the same file);
oss-convert starts from the safetensors and does both steps in one pass.
Before every measured run the page cache is emptied (where permitted) and that run's input
read once, so each tool starts with its input cached and nothing else: writing 15 GB into a
full page cache costs very different CPU from run to run on a small VM. With --repeat N the
tools alternate N times and the median is reported.
--check compares the two outputs tensor by tensor afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from common import ROOT, ensure_fixture, fair_start, fmt_row, run_measured

sys.path.insert(0, str(ROOT))
from oss_convert.plan.mixtures import MIXTURES  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir", type=Path)
    p.add_argument("--preset", default="20b")
    p.add_argument("--type", dest="mixture", default="q4_k_m", choices=sorted(MIXTURES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    work = args.workdir
    src = ensure_fixture(work / f"gpt-oss-{args.preset}", args.preset)
    mixture = MIXTURES[args.mixture]
    lossless = work / "lossless.gguf"
    ref, ours = work / f"llama-{args.mixture}.gguf", work / f"ours-{args.mixture}.gguf"
    run_measured([sys.executable, "-m", "oss_convert.cli", "convert", str(src), "-o", str(lossless), "--force"])
    tools = {
        f"llama-quantize {mixture.name} (from MXFP4 GGUF)": (
            lossless, ref, [sys.executable, str(ROOT / "tests/reference/llama_quantize.py"), str(lossless), str(ref),
                            str(mixture.file_type), "pure" if mixture.pure else "mixture", str(args.threads)]),
        f"oss-convert --type {args.mixture} (from safetensors)": (
            src, ours, [sys.executable, "-m", "oss_convert.cli", "convert", str(src), "-o", str(ours),
                        "--type", args.mixture, "--threads", str(args.threads), "--force"]),
    }
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in tools}
    for _ in range(args.repeat):
        for name, (inp, out, cmd) in tools.items():
            out.unlink(missing_ok=True)
            cache = fair_start([inp])
            runs[name].append(run_measured(cmd))
    print(f"\n{args.preset} checkpoint, {args.threads} threads each, median of {args.repeat}; {cache}; "
          f"output {ours.stat().st_size / 2**30:.2f} GiB")
    widths = (46, 10, 14, 12, 24)
    print(fmt_row(("tool", "wall s", "peak RSS MB", "x llama", "all runs s"), widths))
    medians = {name: (statistics.median(w for w, _ in r), max(m for _, m in r)) for name, r in runs.items()}
    base = medians[next(iter(tools))][0]
    for name, (wall, rss) in medians.items():
        print(fmt_row((name, f"{wall:.1f}", f"{rss / 2**20:.0f}", f"{wall / base:.2f}",
                       " ".join(f"{w:.1f}" for w, _ in runs[name])), widths))
    if args.check:
        sys.path.insert(0, str(ROOT))
        from tests.gguf_compare import gguf_differences
        diffs = gguf_differences(ours, ref, ignore_keys=set())
        print("outputs identical (every tensor and key)" if not diffs else f"DIFFERENCES: {diffs[:5]}")
    for path in (lossless, ref, ours):
        path.unlink(missing_ok=True)

if __name__ == "__main__":
    main()
