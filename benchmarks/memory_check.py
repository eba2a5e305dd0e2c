"""The memory estimate against libllama over a grid of shapes and contexts: prints, per
configuration, our figures next to the buffer sizes llama.cpp logs, and the worst errors.

    python benchmarks/memory_check.py [--quick]

Needs llama-cpp-python (as .ci/run installs it). The full-size 20b and 120b are header-only
GGUFs over a hole (no disk, no weights read); libllama is run with weight repacking off, which
would otherwise copy the experts into anonymous memory (60 GB for the 120b).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures.checkpoints import write_checkpoint, write_sparse_gguf  # noqa: E402
from oss_convert.checkpoint import open_checkpoint  # noqa: E402
from oss_convert.convert.to_gguf import convert_lossless  # noqa: E402
from oss_convert.memory.context import ContextOptions  # noqa: E402
from oss_convert.memory.estimate import gguf_weight_bytes, model_shape  # noqa: E402
from oss_convert.memory.llama import llama_cpp_memory  # noqa: E402

MiB = 1 << 20
PROBE = ROOT / "tests" / "reference" / "llama_memory.py"


def grid(quick: bool) -> list[dict]:
    cases = []
    for model in ("tiny", "small", "mid"):
        for ctx in ((512, 8192) if quick else (256, 512, 1000, 2048, 8192, 32768)):
            cases.append({"model": model, "ctx": ctx})
        cases += [{"model": model, "ctx": 4096, "parallel": 4},
                  {"model": model, "ctx": 4096, "parallel": 4, "kv_unified": True},
                  {"model": model, "ctx": 4096, "kv_type": "q8_0"},
                  {"model": model, "ctx": 4096, "ubatch": 128, "swa_full": True}]
    for ctx in ((8192,) if quick else (1024, 8192, 32768, 131072)):
        cases.append({"model": "20b", "ctx": ctx})
    cases += [{"model": "20b", "ctx": 8192, "ubatch": 2048}, {"model": "20b", "ctx": 8192, "parallel": 4},
              {"model": "20b", "ctx": 8192, "kv_type": "q8_0"}, {"model": "20b", "ctx": 8192, "swa_full": True},
              {"model": "120b", "ctx": 131072}]
    return cases


def ggufs(base: Path) -> dict[str, Path]:
    out = {}
    for name in ("tiny", "small", "mid"):
        out[name] = base / f"{name}.gguf"
        convert_lossless(open_checkpoint(write_checkpoint(base / name, name)), out[name], show_progress=False)
    for name in ("20b", "120b"):
        out[name] = write_sparse_gguf(write_checkpoint(base / name, name, sparse=True), base / f"{name}.gguf")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="a smaller grid")
    args = p.parse_args()
    worst = {"compute": [0.0, 0.0], "total": [0.0, 0.0], "exact": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        files = ggufs(Path(tmp))
        for case in grid(args.quick):
            opts = ContextOptions(case["ctx"], case.get("kv_type", "f16"), case.get("parallel", 1),
                                  case.get("ubatch", 512), 2048, case.get("swa_full", False),
                                  case.get("kv_unified", False))
            spec = {"path": str(files[case["model"]]), "n_ctx": opts.ctx, "n_seq": opts.parallel,
                    "kv_type": opts.kv_type, "n_ubatch": opts.ubatch, "n_batch": opts.batch,
                    "swa_full": opts.swa_full, "kv_unified": opts.kv_unified, "flash_attn": True, "repack": False}
            run = subprocess.run([sys.executable, str(PROBE), json.dumps(spec)], capture_output=True, text=True)
            if run.returncode:
                print(f"{case}: libllama failed: {run.stderr[-300:]}")
                return 1
            ref = json.loads(run.stdout)
            ckpt = open_checkpoint(files[case["model"]])
            ours = llama_cpp_memory(model_shape(ckpt), gguf_weight_bytes(ckpt)[0], opts)
            mine = {k: ours[f"{k}_bytes"] / MiB for k in ("weights", "kv_cache", "output", "compute")}
            theirs = {"weights": ref["model"], "kv_cache": ref["kv"], "output": ref["output"],
                      "compute": ref["compute"]}
            compute = 100 * (mine["compute"] / theirs["compute"] - 1)
            total = 100 * (sum(mine.values()) / sum(theirs.values()) - 1)
            exact = max(abs(mine[k] - theirs[k]) for k in ("weights", "kv_cache", "output"))
            worst["compute"] = [min(worst["compute"][0], compute), max(worst["compute"][1], compute)]
            worst["total"] = [min(worst["total"][0], total), max(worst["total"][1], total)]
            worst["exact"] = max(worst["exact"], exact)
            print(f"{json.dumps(case):78s} KV {mine['kv_cache']:9.2f}/{theirs['kv_cache']:9.2f} MiB  "
                  f"compute {mine['compute']:8.2f}/{theirs['compute']:8.2f} MiB ({compute:+5.1f}%)  "
                  f"total {total:+5.1f}%", flush=True)
    print(f"\nweights, KV cache, output: largest difference {worst['exact']:.3f} MiB (llama.cpp prints 2 decimals)")
    print(f"compute: {worst['compute'][0]:+.1f}% to {worst['compute'][1]:+.1f}%; "
          f"total: {worst['total'][0]:+.1f}% to {worst['total'][1]:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
