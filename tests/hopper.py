"""The MoE kernels compiled for sm_90 (an H100's), on a machine without a GPU, through
benchmarks/kernel_stats.py's functions: what a launch on a GPU would compile to."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def kernel_stats():
    """benchmarks/kernel_stats.py as a module (the benchmarks are scripts, not a package)."""
    if "kernel_stats" not in sys.modules:
        sys.path.insert(0, str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location("kernel_stats", BENCHMARKS / "kernel_stats.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["kernel_stats"] = module  # before it runs: its dataclass looks itself up there
        spec.loader.exec_module(module)
    return sys.modules["kernel_stats"]


def check_compiled_for_hopper(launches: list[tuple[list[int], dict, str]]) -> None:
    """For each (token counts, launch parameters, the MMA instruction the main loop must use):
    both kernels compile, their main loop uses the tensor cores and keeps everything in
    registers; the helper kernels compile unspilled.

    In a process of its own, started without TRITON_INTERPRET: Triton 3.9's interpreter patches
    triton.language's tensor operators for the whole process once it is on, and the compiler
    then fails on them (what a test session with interpreted kernels would leave behind)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", "import json, sys; from tests.hopper import compiled_checks; "
                           "compiled_checks(json.loads(sys.argv[1]))", json.dumps(launches)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def compiled_checks(launches: list) -> None:
    stats = kernel_stats()
    with stats.compiled_kernels() as (triton_moe, variants):
        for tokens, launch, mma in launches:
            report = stats.report(triton_moe, variants, tokens, **launch)
            kernels = report["kernels"]
            expected = {(t, n) for t in tokens for n in ("gate_up", "down")}
            assert {(k["tokens"], k["kernel"]) for k in kernels} == expected
            for k in kernels:
                assert k["ops"].get(mma, 0) > 0, (launch, k)
                assert not k["ops"].get("LDL") and not k["ops"].get("STL"), (launch, k)
                assert k["registers"] <= 255
                if launch.get("words"):  # the words' decode multiplies two weights an instruction
                    knobs = report["launch"]
                    values_per_thread = knobs["block_n"] * knobs["block_k"] // (32 * knobs["num_warps"])
                    assert k["ops"]["HMUL2"] == values_per_thread // 2, (launch, k)
    for name, helper in report["helpers"].items():  # the expert sort, split-K's SwiGLU pass
        assert helper["instructions"] > 0 and helper["spills"] == 0, (name, helper)
