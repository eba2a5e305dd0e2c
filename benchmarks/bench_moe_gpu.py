"""One MoE layer of the real gpt-oss-20b and -120b shapes on a CUDA GPU: the Triton MXFP4
path against the torch baseline (expand the used experts to bf16, then matmul).

usage: python benchmarks/bench_moe_gpu.py [--sweep] [--models 20b 120b] [--tokens 1 8 64 512]

(a full --sweep times some 160 launch configurations a model: split it by --models or --tokens
where one run must stay under a time limit)

Reports, per token count, the bytes of expert weights the layer touches (MXFP4 codes and
scales of every expert some token routes to), the time of each path (triton.testing.do_bench,
median), the achieved bandwidth against the GPU's HBM bandwidth, and the speed-up. The Triton
path is the faster of the two expert layouts at their default launch (the HF codes through
tl.dot_scaled; the words layout of mxfp4_words), or with --sweep the fastest configuration;
each is checked against the reference before it is timed.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oss_convert.runtime.kernels.triton_moe import moe_mxfp4_triton  # noqa: E402
from oss_convert.runtime.kernels.variants.mxfp4_words import to_words  # noqa: E402
from oss_convert.runtime.kernels.variants.triton_moe_variants import moe_mxfp4_variants  # noqa: E402
from oss_convert.runtime.model.moe import mix_experts, swiglu  # noqa: E402
from oss_convert.runtime.weights.expand import mxfp4_to_float  # noqa: E402
from oss_convert.runtime.weights.experts import PackedExperts  # noqa: E402

HBM_PEAK = {"H100": 3.35e12, "H200": 4.8e12}  # bytes/s, SXM parts
SHAPES = {"20b": 32, "120b": 128}
H = I = 2880
TOP_K = 4


def peak_bandwidth() -> tuple[str, float]:
    name = torch.cuda.get_device_name()
    for key, bw in HBM_PEAK.items():
        if key in name:
            return name, bw
    return name, HBM_PEAK["H100"]


def random_experts(E: int, N: int, K: int) -> PackedExperts:
    codes = torch.randint(0, 256, (E, N, K // 2), dtype=torch.uint8, device="cuda")
    scales = torch.randint(119, 123, (E, N, K // 32), dtype=torch.uint8, device="cuda")
    return PackedExperts("MXFP4", (E, N, K), codes, scales)


def baseline(x, experts, weights, w1, b1, w2, b2):
    """Dequantize each used expert to bf16, then bf16 matmuls (what a plain torch port does)."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in experts.unique().tolist():
        tokens, slots = torch.nonzero(experts == e, as_tuple=True)
        W1 = mxfp4_to_float(w1.data[e], w1.scales[e]).bfloat16()
        W2 = mxfp4_to_float(w2.data[e], w2.scales[e]).bfloat16()
        h = (x[tokens] @ W1.T).float() + b1[e]
        y = (swiglu(h).bfloat16() @ W2.T).float() + b2[e]
        out.index_add_(0, tokens, y * weights[tokens, slots, None])
    return out


def graph_time(fn) -> float:
    """Median seconds of `fn` captured in a CUDA graph and replayed (no Python launch overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, return_mode="median") * 1e-3


def default_configs(tokens: int) -> list[dict]:
    """Without --sweep: each layout at the launcher's defaults and, for decode, with two warps
    (which kernel_stats finds issue fewest instructions per byte there), and the words with one
    tile an assignment and the sum over slots in the down kernel (fuse_sum: one launch fewer)."""
    configs = [dict(), dict(words=True)]
    if tokens <= 8:
        configs += [dict(num_warps=2, num_stages=3), dict(words=True, num_warps=2, num_stages=3)]
        configs += [dict(words=True, one_per_tile=True, fuse_sum=True),
                    dict(words=True, num_warps=2, num_stages=3, one_per_tile=True, fuse_sum=True)]
    return configs


def sweep_configs(tokens: int) -> list[dict]:
    """Launch configurations worth timing at this many tokens (each is a kernel compile, so
    the list stays short enough for one run to fit a 10-minute call).

    - Tile shapes: block_n 32/64/128, block_k 128/256, 3 or 4 stages. block_k 64 is left out:
      its loop spends 0.49 warp instructions per weight byte against 0.42 at 128
      (benchmarks/kernel_stats.py).
    - Tile layout, up to 64 (token, slot) pairs: one tile per pair reads an expert that several
      tokens share once per pair (L2 may catch the repeats) but needs no sort.
    - Split-K 2 and 4, up to 8 tokens, on the narrower tiles: with one tile per pair there are
      only 4 to 32 tiles, and more programs in flight may hide the upcast's latency.
    - Two warps, up to 8 tokens, on 64 x 128 and 32 x 256 tiles (block_n x block_k): Triton
      then feeds mma.sync through ldmatrix instead of reading the codes from shared memory byte
      by byte for wgmma, and the main loop spends 0.32-0.34 warp instructions per weight byte
      against 0.42 with four warps (kernel_stats --warps 2): an issue ceiling of 63-69% of an
      H200's HBM against 52%. Larger two-warp tiles save a little more but spill in the loop.
    - The words layout (words=True: the experts re-laid by mxfp4_words, decoded by bit
      operations instead of tl.dot_scaled's upcast): 0.24-0.28 warp instructions per byte with
      four warps, 0.17-0.19 with two up to 64 tokens (kernel_stats --words); two warps only
      for decode, as with the codes (at 512 tokens their 64-row tiles run out of registers),
      and there split-K 2 and 4 too, each also with the sum over slots fused into down."""
    layouts = (True, False) if tokens * TOP_K <= 64 else (False,)
    configs = default_configs(tokens)
    configs += [dict(block_n=bn, block_k=bk, num_warps=4, num_stages=ns, one_per_tile=one)
                for bn, bk, ns, one in itertools.product((32, 64, 128), (128, 256), (3, 4), layouts)]
    if tokens <= 8:
        configs += [dict(block_n=bn, block_k=128, num_warps=4, num_stages=4, one_per_tile=one, split_k=sk)
                    for bn, one, sk in itertools.product((32, 64), layouts, (2, 4))]
        configs += [dict(block_n=bn, block_k=bk, num_warps=2, num_stages=ns, one_per_tile=one)
                    for (bn, bk), ns, one in itertools.product(((64, 128), (32, 256)), (3, 4), layouts)]
    words_tiles = ((64, 128), (32, 256), (128, 128)) if tokens <= 8 else ((64, 128), (128, 128), (64, 256))
    configs += [dict(words=True, block_n=bn, block_k=bk, num_warps=nw, num_stages=3, one_per_tile=one)
                for (bn, bk), nw, one in itertools.product(words_tiles, (2, 4) if tokens <= 8 else (4,), layouts)]
    if tokens <= 8:
        configs += [dict(words=True, num_warps=2, num_stages=3, one_per_tile=one, split_k=sk)
                    for one, sk in itertools.product(layouts, (2, 4))]
        configs += [dict(words=True, num_warps=2, num_stages=3, one_per_tile=True, split_k=sk, fuse_sum=True)
                    for sk in (2, 4)]
    return configs


def both_layouts(w1: PackedExperts, w2: PackedExperts) -> dict:
    """The experts as HF codes and in the words layout, for run_layer."""
    return {"codes": (w1, w2), "words": (to_words(w1.data, w1.scales), to_words(w2.data, w2.scales))}


def run_layer(x, experts, weights, layouts, b1, b2, cfg: dict):
    """One layer through the runtime's kernels, or through the variants' where cfg asks for one
    (the experts in the words layout, split-K, the fused sum), the rest of cfg as launch arguments."""
    cfg = dict(cfg)
    words = cfg.pop("words", False)
    w1, w2 = layouts["words" if words else "codes"]
    if words or cfg.get("split_k", 1) > 1 or cfg.get("fuse_sum"):
        return moe_mxfp4_variants(x, experts, weights, w1, b1, w2, b2, **cfg)
    cfg.pop("split_k", None), cfg.pop("fuse_sum", None)
    return moe_mxfp4_triton(x, experts, weights, w1, b1, w2, b2, **cfg)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sweep", action="store_true", help="also try launch configurations and print the best")
    p.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 8, 64, 512])
    args = p.parse_args()
    name, peak = peak_bandwidth()
    print(f"device: {name}, HBM peak {peak / 1e12:.2f} TB/s; torch {torch.__version__}, triton {triton.__version__}")
    print("codes us / words us: the fastest configuration tried of each expert layout; triton us: the faster, "
          "the whole layer (expert sort + both kernels) replayed as a CUDA graph; eager us: the same launched "
          "from Python")
    print(f"{'model':6} {'tokens':>6} {'experts':>7} {'MB':>8} {'codes us':>9} {'words us':>9} {'triton us':>10} "
          f"{'eager us':>9} {'GB/s':>8} {'% HBM':>6} {'baseline us':>12} {'speed-up':>8} {'rel err':>8}")
    for model in args.models:
        E = SHAPES[model]
        torch.manual_seed(0)
        w1, w2 = random_experts(E, 2 * I, H), random_experts(E, H, I)
        layouts = both_layouts(w1, w2)
        b1 = torch.randn(E, 2 * I, device="cuda") * 0.1
        b2 = torch.randn(E, H, device="cuda") * 0.1
        per_expert = (w1.nbytes + w2.nbytes) / E
        for tokens in args.tokens:
            x = torch.randn(tokens, H, device="cuda").bfloat16()
            experts = torch.stack([torch.randperm(E, device="cuda")[:TOP_K] for _ in range(tokens)])
            weights = torch.softmax(torch.randn(tokens, TOP_K, device="cuda"), dim=-1)
            touched = experts.unique().numel() * per_expert
            ref = mix_experts(x.float(), experts, weights, w1, b1, w2, b2)
            configs = sweep_configs(tokens) if args.sweep else default_configs(tokens)
            best = {}  # layout -> (seconds, configuration, relative error)
            for cfg in configs:  # ranked by graph replay: launch overhead would favour the layout without a sort
                layer = lambda: run_layer(x, experts, weights, layouts, b1, b2, cfg)  # noqa: E731
                try:
                    rel = ((layer() - ref).norm() / ref.norm()).item()
                    t = graph_time(layer)
                except Exception as e:  # a configuration that does not fit (shared memory, registers)
                    print(f"  skip {cfg}: {type(e).__name__}", file=sys.stderr)
                    continue
                if rel > 2e-2:  # bf16 activations give about 1e-2 (tests/test_runtime.py); more is a bug
                    print(f"  WRONG {cfg}: relative error {rel:.1e}, not timed", file=sys.stderr)
                    continue
                layout = "words" if cfg.get("words") else "codes"
                if layout not in best or t < best[layout][0]:
                    best[layout] = (t, cfg, rel)
            if not best:  # say so and go on: the other rows of a scarce GPU run still count
                print(f"{model:6} {tokens:>6}  no configuration ran correctly (see above)", flush=True)
                continue
            t_ours, cfg, rel = min(best.values(), key=lambda b: b[0])
            per_layout = " ".join(f"{best[k][0] * 1e6:>9.1f}" if k in best else f"{'-':>9}" for k in ("codes", "words"))
            t_eager = triton.testing.do_bench(lambda: run_layer(x, experts, weights, layouts, b1, b2, cfg),
                                              return_mode="median") * 1e-3
            t_base = triton.testing.do_bench(lambda: baseline(x, experts, weights, w1, b1, w2, b2),
                                             return_mode="median") * 1e-3
            bw = touched / t_ours
            print(f"{model:6} {tokens:>6} {experts.unique().numel():>7} {touched / 1e6:>8.1f} {per_layout} "
                  f"{t_ours * 1e6:>10.1f} {t_eager * 1e6:>9.1f} {bw / 1e9:>8.0f} {100 * bw / peak:>5.1f}% "
                  f"{t_base * 1e6:>12.1f} {t_base / t_ours:>7.1f}x {rel:>8.1e}  best {cfg}", flush=True)


if __name__ == "__main__":
    main()
