#!/usr/bin/env bash
# Issue 17, a check after two tries (one device call; BENCHMARKS 9s (3)): the eager prefill again (quantized linears
# call the kernel chosen for their shape directly, without rebuilding every candidate), fp8 batched decode (whose
# self-check refused the model in 9s), then the GPU tests of the kernels, W8A8 and the decoder (test_decode.py
# includes the fused fp8 decoder vs the model's forward with NNSLIM_PDL=0 and 1). 8-layer Llama-7B-shaped model, random bf16 weights. From the repo root, through the device tool:
#   OUT=$OUT bash benchmarks/device_issue17c.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0  # the older CUDA-core GEMV: not faster end to end (9k)
OUT=${OUT:-build/device-issue17c}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"  # S and run SECONDS COMMAND...
nvidia-smi --query-gpu=name --format=csv,noheader
run 120 python3 benchmarks/gpu_llm.py prefill --layers 8 --variants int4,fp8 --batch 1,4 --prompt-lens 128,512,2048 \
  --runs 2 --json "$OUT/gpu_prefill_8layers.json"
TAIL=8 run 120 python3 benchmarks/gpu_llm.py batched --layers 8 --variants fp8 --batch 1,8,32 --kv model --runs 1 \
  --new-tokens 128 --json "$OUT/gpu_decode_8layers_fp8.json"
TAIL=6 run 300 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_kernels.py tests/quant/test_w8a8.py \
  tests/runtime/test_decode.py tests/runtime/test_gluon_gemm.py
