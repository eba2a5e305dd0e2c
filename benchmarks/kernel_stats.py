"""What the MoE kernels compile to on Hopper, on a machine without a GPU.

usage: python benchmarks/kernel_stats.py [--tokens 1 8 64] [--experts 32] [--split-k 1]
       [--block-n 64] [--block-k 128] [--warps 4] [--stages 4] [--words] [--fuse-sum] [--json]

Triton compiles for sm_90 without a device (ptxas ships with it). For the real gpt-oss
shapes this compiles both MoE kernels with the argument specialization the launcher would
give them (which integers and pointers are multiples of 16), disassembles the cubin and
reports, for the main loop over K:

- instructions per thread per iteration, and warp instructions per byte of expert weights
  the iteration reads (codes and scales);
- the issue ceiling that follows: an H100 or H200 SXM (132 SMs, four schedulers each, 1.98 GHz
  at boost) issues at most one warp instruction per scheduler per cycle, about 1.05e12 a
  second, so a loop that spends w warp instructions per byte streams at most 1.05e12 / w
  bytes a second, however well its loads are hidden. Full HBM speed needs w <= 0.31 on an
  H100 (3.35 TB/s) and w <= 0.22 on an H200 (4.8 TB/s); 70% of it, w <= 0.45 and w <= 0.31.
  That is at a perfect issue rate, which no real loop reaches;
- registers, shared memory, and how many barriers and shared-memory loads the loop holds.

These are static figures, not timings: they say whether a kernel design can be bandwidth
bound at all, and catch code that the interpreter accepts but the compiler rejects.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_moe_gpu import HBM_PEAK, TOP_K, H, I  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
WARP_ISSUE_PER_S = 132 * 4 * 1.98e9  # H100/H200 SXM: SMs x schedulers x boost clock, one warp instruction each
CUDA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
KERNELS = "oss_convert.runtime.kernels"


@contextlib.contextmanager
def compiled_kernels():
    """(triton_moe, triton_moe_variants) as the compiler takes them: imported afresh with
    TRITON_INTERPRET unset, so that their kernels are jit functions and not the interpreter's
    (Triton decides as a kernel is defined). The process's own modules are put back after."""
    def ours(name: str) -> bool:
        return name.startswith((f"{KERNELS}.triton_moe", f"{KERNELS}.variants"))
    interpret = os.environ.pop("TRITON_INTERPRET", None)
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    package = importlib.import_module(KERNELS)
    attributes = {name: getattr(package, name) for name in ("triton_moe", "variants") if hasattr(package, name)}
    try:
        yield (importlib.import_module(f"{KERNELS}.triton_moe"),
               importlib.import_module(f"{KERNELS}.variants.triton_moe_variants"))
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
        for name in ("triton_moe", "variants"):
            if name in attributes:
                setattr(package, name, attributes[name])
            elif hasattr(package, name):
                delattr(package, name)
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret


def launch_defaults(triton_moe) -> dict:
    """The runtime's launch parameters (moe_mxfp4_triton's defaults)."""
    return {name: p.default for name, p in inspect.signature(triton_moe.moe_mxfp4_triton).parameters.items()
            if name in ("block_n", "block_k", "num_warps", "num_stages")}


@dataclass
class LoopStats:
    kernel: str
    instructions: int  # per thread, one iteration of the main loop
    weight_bytes: int  # codes + scales one iteration reads, whole program
    threads: int
    registers: int
    shared_bytes: int
    ops: collections.Counter

    @property
    def warp_instructions_per_byte(self) -> float:
        return self.instructions * (self.threads // 32) / self.weight_bytes

    @property
    def issue_ceiling(self) -> float:
        """Bytes a second the loop streams at most, at one warp instruction per scheduler per cycle."""
        return WARP_ISSUE_PER_S / self.warp_instructions_per_byte

    @property
    def programs_per_sm(self) -> int:
        """How many programs an H100 SM holds at once: 64K registers (allocated per warp in
        units of 256), 228 KB of shared memory (1 KB reserved per block), 64 warps, 32 blocks."""
        warps = self.threads // 32
        by_registers = 65536 // (warps * -(-self.registers * 32 // 256) * 256)
        by_shared = 233472 // (self.shared_bytes + 1024)
        return min(by_registers, by_shared, 64 // warps, 32)


def pointer_type(name: str, one_per_tile: bool, words: bool) -> str:
    return {"x_ptr": "*bf16", "act_ptr": "*bf16", "w_ptr": "*i32" if words else "*u8", "s_ptr": "*u8", "b_ptr": "*fp32",
            "route_w_ptr": "*fp32", "y_ptr": "*fp32", "h_ptr": "*fp32", "sorted_ptr": "*i32", "experts_ptr": "*i64",
            "count_ptr": "*i32", "out_ptr": "*fp32",
            "tile_expert_ptr": "*i64" if one_per_tile else "*i32"}[name]


def compile_kernel(kernel, values: dict, constexprs: dict, num_warps: int, num_stages: int):
    """Compile `kernel` for sm_90 as the launcher would for these argument values."""
    one_per_tile, words = bool(constexprs.get("ONE_PER_TILE")), bool(constexprs.get("WORDS"))
    constexprs = {name: value for name, value in constexprs.items() if name in kernel.arg_names}
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_type(name, one_per_tile, words)
            attrs[(index,)] = [["tt.divisibility", 16]]  # torch allocations are 256-byte aligned
        elif isinstance(values[name], float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if values[name] % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=HOPPER, options={"num_warps": num_warps, "num_stages": num_stages})


def disassemble(compiled) -> tuple[list[tuple[int, str]], int]:
    """(address, instruction) of every instruction in the cubin, and the registers per thread."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([CUDA_BIN / "cuobjdump", "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([CUDA_BIN / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
    registers = re.search(r"REG:(\d+)", usage)
    code = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    return code, int(registers.group(1)) if registers else -1


def opcode(instruction: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0].split(".")[0]


def main_loop_stats(compiled, name: str, weight_bytes: int, num_warps: int) -> LoopStats:
    code, registers = disassemble(compiled)
    loops = [(int(m.group(1), 16), at) for at, text in code
             if (m := re.search(r"\bBRA\s+(0x[0-9a-f]+)", text)) and int(m.group(1), 16) < at]
    start, end = max(loops, key=lambda loop: loop[1] - loop[0])
    body = [opcode(text) for at, text in code if start <= at <= end]
    return LoopStats(name, len(body), weight_bytes, 32 * num_warps, registers, compiled.metadata.shared,
                     collections.Counter(body))


def resources(compiled) -> dict:
    code, registers = disassemble(compiled)
    ops = collections.Counter(opcode(text) for _, text in code)
    return dict(registers=registers, shared_bytes=compiled.metadata.shared,
                spills=ops["LDL"] + ops["STL"], instructions=len(code))


def helper_kernel_resources(triton_moe, variants, n_experts: int, block_m: int = 64, block_n: int = 64) -> dict:
    """The kernels around the GEMMs: the expert sort (one program) and split-K's SwiGLU pass."""
    e_pow2 = triton.next_power_of_2(n_experts)
    align = compile_kernel(triton_moe._align_kernel, dict(n=4096, n_experts=n_experts, capacity=8192),
                           dict(BLOCK_M=block_m, E_POW2=e_pow2, CHUNK=max(16, min(256, 16384 // e_pow2))),
                           num_warps=triton_moe.ALIGN_WARPS, num_stages=1)
    swiglu = compile_kernel(variants._swiglu_kernel,
                            dict(N=2 * I, stride_hs=64 * 2 * I, stride_h=2 * I, stride_be=2 * I, stride_act=I,
                                 limit=7.0, alpha=1.702),
                            dict(BLOCK_M=block_m, BLOCK_N=block_n, ONE_PER_TILE=False, SPLITS=2),
                            num_warps=4, num_stages=1)
    return {"align": resources(align), "swiglu": resources(swiglu)}


def moe_kernel_stats(triton_moe, variants, assignments: int, n_experts: int, block_n: int, block_k: int,
                     num_warps: int, num_stages: int, split_k: int = 1, words: bool = False,
                     fuse_sum: bool = False) -> list[LoopStats]:
    """Both MoE kernels as moe_mxfp4_triton (the runtime's) would launch them for this many
    (token, slot) pairs, or moe_mxfp4_variants where a variant is asked for: the experts in the
    words layout, split-K, the sum over slots in the down kernel (fuse_sum, decode only)."""
    module = variants if words or split_k > 1 or fuse_sum else triton_moe
    one_per_tile = assignments <= triton_moe.DECODE_ASSIGNMENTS
    block_m = variants._block_m(assignments, n_experts, one_per_tile, words)
    per_word = 8 if words else 2  # K values a weight element holds
    per_iteration = block_n * (block_k // 2 + block_k // 32)  # codes and scales of one K step
    down_blocks = triton.cdiv(H, block_n)  # down's column blocks: the fused sum's counters per token
    stats = []
    for name, kernel, K, N in (("gate_up", module._gate_up_kernel, H, 2 * I),
                               ("down", module._down_kernel, I, H)):
        splits, k_split = variants._split(K, block_k, split_k)
        constexprs = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, ONE_PER_TILE=one_per_tile,
                          SPLITS=splits, K_SPLIT=k_split, WORDS=words, WIDE_SCALES=False, INTERPRETED=False,
                          FUSE_SUM=fuse_sum and one_per_tile, COUNTS_POW2=triton.next_power_of_2(down_blocks))
        rows = assignments if one_per_tile else assignments * block_m
        values = dict(K=K, N=N, top_k=TOP_K, stride_x=H, stride_act=I, stride_y=H, stride_ys=assignments * H,
                      stride_h=N, stride_hs=rows * N, stride_we=N * K // per_word, stride_wn=K // per_word,
                      stride_se=N * K // 32, stride_sn=K // 32, stride_be=N, limit=7.0, alpha=1.702,
                      counts_per_token=down_blocks, stride_out=H)
        compiled = compile_kernel(kernel, values, constexprs, num_warps, num_stages)
        stats.append(main_loop_stats(compiled, name, per_iteration, num_warps))
    return stats


def report(triton_moe, variants, tokens: list[int], experts: int = 32, **launch) -> dict:
    """Both MoE kernels' main loops at each token count, and the helper kernels, as one
    document; `launch`: moe_kernel_stats' launch parameters (the runtime's defaults otherwise)."""
    launch = launch_defaults(triton_moe) | launch
    stats = [(n, s) for n in tokens for s in moe_kernel_stats(triton_moe, variants, n * TOP_K, experts, **launch)]
    rows = [dict(tokens=n, kernel=s.kernel, instructions=s.instructions, registers=s.registers,
                 shared_bytes=s.shared_bytes, warp_instructions_per_byte=s.warp_instructions_per_byte,
                 issue_ceiling_bytes_per_s=s.issue_ceiling,
                 issue_ceiling_share_of_hbm={gpu: s.issue_ceiling / peak for gpu, peak in HBM_PEAK.items()},
                 programs_per_sm=s.programs_per_sm, ops=dict(s.ops), bars=s.ops["BAR"],
                 shared_loads=sum(n for op, n in s.ops.items() if op.startswith("LDS")))
            for n, s in stats]
    return {"triton": triton.__version__, "target": "sm_90", "launch": launch, "kernels": rows,
            "helpers": helper_kernel_resources(triton_moe, variants, experts)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--experts", type=int, default=32, help="32 for gpt-oss-20b, 128 for 120b")
    p.add_argument("--split-k", type=int, default=1, help="split K in this many shares (decode: more programs)")
    p.add_argument("--block-n", type=int)
    p.add_argument("--block-k", type=int)
    p.add_argument("--warps", type=int)
    p.add_argument("--stages", type=int)
    p.add_argument("--words", action="store_true", help="experts in the words layout (decoded by bit operations)")
    p.add_argument("--fuse-sum", action="store_true", help="the sum over slots in the down kernel (decode tiles)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    args = p.parse_args()
    chosen = dict(block_n=args.block_n, block_k=args.block_k, num_warps=args.warps, num_stages=args.stages)
    launch = {k: v for k, v in chosen.items() if v is not None} | dict(split_k=args.split_k, words=args.words,
                                                                        fuse_sum=args.fuse_sum)
    with compiled_kernels() as (triton_moe, variants):
        doc = report(triton_moe, variants, args.tokens, args.experts, **launch)
    if args.json:
        print(json.dumps(doc))
        return
    print(f"triton {doc['triton']}, target sm_90; main loop per iteration; launch {doc['launch']}")
    print("ceiling: the most the loop can stream at one warp instruction per scheduler per cycle, and that as a "
          "share of HBM")
    gpus = " ".join(f"{'% ' + gpu:>6}" for gpu in HBM_PEAK)
    print(f"{'tokens':>6} {'kernel':8} {'instr':>6} {'warp instr/B':>12} {'ceiling TB/s':>12} {gpus} {'regs':>5} "
          f"{'smem KB':>8} {'per SM':>6} {'BAR':>4} {'LDS':>4}  most frequent")
    for k in doc["kernels"]:
        common = ", ".join(f"{op} {n}" for op, n in collections.Counter(k["ops"]).most_common(6))
        shares = " ".join(f"{100 * share:>5.0f}%" for share in k["issue_ceiling_share_of_hbm"].values())
        print(f"{k['tokens']:>6} {k['kernel']:8} {k['instructions']:>6} {k['warp_instructions_per_byte']:>12.3f} "
              f"{k['issue_ceiling_bytes_per_s'] / 1e12:>12.2f} {shares} {k['registers']:>5} "
              f"{k['shared_bytes'] / 1024:>8.1f} {k['programs_per_sm']:>6} {k['bars']:>4} {k['shared_loads']:>4}  "
              f"{common}")
    for name, r in doc["helpers"].items():
        print(f"{name}: {r['instructions']} instructions, {r['registers']} registers, "
              f"{r['shared_bytes'] / 1024:.1f} KB shared, {r['spills']} spill instructions")


if __name__ == "__main__":
    main()
