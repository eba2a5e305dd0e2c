"""Q4_K_M of a full-size random GPT-OSS checkpoint: oss-convert against llama-quantize,
the same number of threads, each in its own process (wall time with a final sync, peak RSS).

usage: python benchmarks/bench_quantize.py WORKDIR [--preset 20b] [--threads 2] [--check]

llama-quantize (libllama through llama-cpp-python) starts from the lossless MXFP4 GGUF that
llama.cpp's converter writes (made here by oss-convert, which writes the same file);
oss-convert starts from the safetensors and does both steps in one pass.
--check compares the two outputs tensor by tensor afterwards.
"""

from __future__ import annotations

import argparse
import sys

from common import ROOT, ensure_fixture, fmt_row, run_measured


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir", type=__import__("pathlib").Path)
    p.add_argument("--preset", default="20b")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    work = args.workdir
    src = ensure_fixture(work / f"gpt-oss-{args.preset}", args.preset)
    lossless, ref, ours = work / "lossless.gguf", work / "llama-q4km.gguf", work / "ours-q4km.gguf"
    run_measured([sys.executable, "-m", "oss_convert.cli", "convert", str(src), "-o", str(lossless), "--force"])
    rows = [("llama-quantize Q4_K_M (from MXFP4 GGUF)",
             *run_measured([sys.executable, str(ROOT / "tests/reference/llama_quantize.py"), str(lossless), str(ref),
                            "15", "mixture", str(args.threads)]))]
    lossless.unlink()
    rows.append(("oss-convert --type q4_k_m (from safetensors)",
                 *run_measured([sys.executable, "-m", "oss_convert.cli", "convert", str(src), "-o", str(ours),
                                "--type", "q4_k_m", "--threads", str(args.threads), "--force"])))
    print(f"\n{args.preset} checkpoint, {args.threads} threads each; output {ours.stat().st_size / 2**30:.2f} GiB")
    widths = (46, 10, 14, 12)
    print(fmt_row(("tool", "wall s", "peak RSS MB", "x llama"), widths))
    for name, wall, rss in rows:
        print(fmt_row((name, f"{wall:.1f}", f"{rss / 2**20:.0f}", f"{wall / rows[0][1]:.2f}"), widths))
    if args.check:
        sys.path.insert(0, str(ROOT))
        from tests.gguf_compare import gguf_differences
        diffs = gguf_differences(ours, ref, ignore_keys=set())
        print("outputs identical (every tensor and key)" if not diffs else f"DIFFERENCES: {diffs[:5]}")
    ref.unlink()
    ours.unlink()


if __name__ == "__main__":
    main()
