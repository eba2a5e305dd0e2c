#!/usr/bin/env bash
# The MoE kernels' check on a CUDA GPU, one call of about 6 minutes on an H100 or H200:
#   1. the runtime's kernel tests on CUDA, and those of the variants in runtime/kernels/variants (words
#      layout, split-K, fused sum): the tests CI runs under Triton's interpreter, here
#      compiled, so they also cover what no CPU runs (the words layout's inline PTX multiply,
#      bf16 arithmetic on subnormal inputs, the fused sum's atomics across SMs), and a layer
#      loaded from a file and copied to the GPU expert by expert;
#   2. bench_moe_gpu.py: one layer of both models at 1, 8, 64 and 512 tokens, both expert
#      layouts, each at its defaults (and for decode with two warps, and the words with the
#      sum over slots fused into the down kernel);
#   3. profile_moe_gpu.py: where the time of a decode step goes, kernel by kernel;
#   4. nvml_check.py: check's NVML path, reading our own generate's GPU memory per process
#      against torch.cuda.memory_reserved (needs nvidia-ml-py: carried in .whl/ as gguf is).
# Each log goes to $OUT (where the device tool collects files) or ./gpu_check.
#
# A device image with torch and triton but not gguf (which the package imports) needs gguf's
# wheel carried along (.whl/ is ignored by git). Here, once:
#   pip download --no-deps --only-binary=:all: gguf==0.19.0 nvidia-ml-py -d .whl
# then run `bash benchmarks/gpu_check.sh` there with .whl carried.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
status=0

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"

python3 -m pytest -q -p no:cacheprovider tests/test_runtime.py tests/test_kernel_variants.py \
    -k "(ragged or swiglu or variants_give or words or alignment or loaded_from) and not hopper" \
    2>&1 | tee "$out/tests.log" || status=1
python3 -m pytest -q -p no:cacheprovider tests/test_memory.py -k runtime_peak_on_cuda \
    2>&1 | tee -a "$out/tests.log" || status=1
python3 benchmarks/bench_moe_gpu.py --models 20b 120b --tokens 1 8 64 512 2>&1 | tee "$out/bench.log" || status=1
python3 benchmarks/profile_moe_gpu.py --tokens 1 8 2>&1 | tee "$out/profile.log" || status=1
python3 benchmarks/nvml_check.py 2>&1 | tee "$out/nvml.log" || status=1
exit $status
