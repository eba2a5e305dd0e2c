"""The runtime on the CPU against llama.cpp on the same work, threads and artifacts, in one run.

    python benchmarks/bench_cpu_runtime.py WORKDIR [--tokens 128 512] [--threads 2] [--decode 16]
                                                   [--activations float32 q8]

WORKDIR gets the full-size 20b fixture (random weights, 13.8 GB), its lossless GGUF and its
Q4_K_M port, made once. Then, for each token count:
- ours: `oss-convert compare --full ORIGINAL Q4_K_M --tokens-file F --ctx N` in a child process
  (both artifacts loaded and run, as a user runs it);
- llama.cpp: libllama (llama-cpp-python) in a child process evaluating the same tokens, logits
  for every position, on the lossless GGUF and then on the Q4_K_M port, loading included;
and the ratio (ours / llama.cpp: below 1.0 is faster). Then decode: tokens per second of greedy
steps after a 32-token prompt, our `generate` path against llama.cpp's, on the lossless GGUF.
Ours runs once per --activations: float32 (the default arithmetic) and q8 (activations rounded
to Q8_0 for the expert products, as llama.cpp's CPU backend does).
Wall time and peak RSS of each child. The two artifacts of a run do not fit in this machine's
page cache together, so which run came before would decide what each finds cached: the cache is
emptied before every run (as root), and every run reads its inputs from disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, cold_start, ensure_fixture, fair_start, fmt_row, run_sampled  # noqa: E402

LLAMA_EVAL = """
import sys, time, llama_cpp
path, n_threads, ids = sys.argv[1], int(sys.argv[2]), [int(t) for t in open(sys.argv[3]).read().split()]
llm = llama_cpp.Llama(model_path=path, n_ctx=max(512, len(ids)), n_batch=len(ids), n_ubatch=512,
                      logits_all=True, n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
llm.eval(ids)
assert len(llm.scores) >= len(ids)
"""

LLAMA_DECODE = """
import sys, time, json, numpy as np, llama_cpp
path, n_threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompt = [(i * 37 + 11) % 350 for i in range(32)]
llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
llm.eval(prompt)
start = time.perf_counter()
for _ in range(steps):
    llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
print(json.dumps({"tokens_per_s": steps / (time.perf_counter() - start)}))
"""

OURS_DECODE = """
import sys, time, json, torch
from oss_convert.checkpoint import open_checkpoint
from oss_convert.runtime.execution.forward import forward, load_model, prefill
from oss_convert.runtime.model.cache import KVCache
torch.set_num_threads(int(sys.argv[2]))
path, steps, activations = sys.argv[1], int(sys.argv[3]), sys.argv[4]
prompt = [(i * 37 + 11) % 350 for i in range(32)]
with torch.inference_mode():  # as `generate` runs
    model = load_model(open_checkpoint(path), torch.device("cpu"), activations)
    cache = KVCache(capacity=512)  # llama.cpp's n_ctx
    logits = prefill(model, prompt, cache)
    start = time.perf_counter()
    for _ in range(steps):
        logits = forward(model, torch.tensor([int(logits[-1].argmax())]), cache)
rate = steps / (time.perf_counter() - start)
anon = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("RssAnon:")]
print(json.dumps({"tokens_per_s": rate, "anon_bytes": anon[0] if anon else 0}))
"""


def oss_convert(*args) -> list[str]:
    return [sys.executable, "-c", "from oss_convert.cli import main; main()", *map(str, args)]


def python_json(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", type=int, default=16, help="greedy decode steps to time (0: skip)")
    ap.add_argument("--activations", nargs="+", default=["float32", "q8"], choices=["float32", "q8"],
                    help="our arithmetic(s) to time: float32 (the default) and/or Q8_0 activations")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    original = ensure_fixture(args.workdir / "gpt-oss-20b", "20b")
    lossless, port = args.workdir / "20b-mxfp4.gguf", args.workdir / "20b-q4_k_m.gguf"
    for out, extra in ((lossless, []), (port, ["--type", "q4_k_m"])):
        if not out.exists():
            print(f"writing {out.name} ...", flush=True)
            subprocess.run(oss_convert("convert", original, "-o", out, *extra), check=True, cwd=ROOT)
    env = {"OMP_NUM_THREADS": str(args.threads)}
    widths = (10, 30, 30, 8)
    print(f"(s, peak RSS / peak anonymous memory: RSS counts the mapped file pages the experts are read from; "
          f"{cold_start()})")
    print(fmt_row(["tokens", "oss-convert", "llama.cpp", "ratio"], widths))
    for n in args.tokens:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(" ".join(str((i * 37 + 11) % 350) for i in range(n)))
        ids = f.name
        theirs, theirs_rss, theirs_anon = 0.0, 0, 0
        for gguf in (lossless, port):
            cold_start()
            wall, rss, anon = run_sampled([sys.executable, "-c", LLAMA_EVAL, str(gguf), str(args.threads), ids], env)
            theirs, theirs_rss, theirs_anon = theirs + wall, max(theirs_rss, rss), max(theirs_anon, anon)
        for activations in args.activations:
            cold_start()
            ours, ours_rss, ours_anon = run_sampled(oss_convert("compare", original, port, "--full", "--tokens-file",
                                                                ids, "--ctx", n, "--device", "cpu",
                                                                "--activations", activations), env)
            print(fmt_row([f"{n} {activations}", f"{ours:.1f} s, {ours_rss / 1e9:.1f} / {ours_anon / 1e9:.1f} GB",
                           f"{theirs:.1f} s, {theirs_rss / 1e9:.1f} / {theirs_anon / 1e9:.1f} GB",
                           f"{ours / theirs:.2f}"], widths), flush=True)
        Path(ids).unlink()
    if args.decode:  # each decode run finds the lossless GGUF (13.8 GB) cached, and nothing else
        fair_start([lossless])
        llama = python_json(LLAMA_DECODE, lossless, args.threads, args.decode)["tokens_per_s"]
        for activations in args.activations:
            fair_start([lossless])
            ours = python_json(OURS_DECODE, lossless, args.threads, args.decode, activations)
            mine = ours["tokens_per_s"]
            print(f"decode, lossless GGUF, {args.threads} threads, {activations}: oss-convert {mine:.2f} tok/s "
                  f"({ours['anon_bytes'] / 1e9:.1f} GB anonymous at the end), llama.cpp {llama:.2f} tok/s "
                  f"({mine / llama:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
