#!/usr/bin/env bash
# Issue 17 (BENCHMARKS 9t): the fast Triton launch (kernels/launch.py) against NNSLIM_FAST_LAUNCH=0 in one call
# (per-candidate host cost with a profile of where it goes, the 2-layer and 8-layer eager prefill), fp8 batched
# decode with the self-check measured against the model's rounding noise, then the GPU tests. From the repo root:
#   OUT=$OUT bash benchmarks/device_issue17f.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0
OUT=${OUT:-build/device-issue17f}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
TAIL=4 run 60 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_launch.py
for fast in 0 1; do
  echo "### NNSLIM_FAST_LAUNCH=$fast"
  NNSLIM_FAST_LAUNCH=$fast TAIL=8 run 120 python3 benchmarks/gpu_prefill_profile.py --layers 2 --rows 128,512 \
    --part model,layer --layer-rows 128
done
for fast in 0 1; do
  NNSLIM_FAST_LAUNCH=$fast TAIL=3 run 120 python3 benchmarks/gpu_llm.py prefill --layers 8 --variants int4,fp8 \
    --batch 1,4 --prompt-lens 128,512,2048 --runs 2 --json "$OUT/gpu_prefill_8layers_fast$fast.json"
done
TAIL=5 run 100 python3 benchmarks/gpu_llm.py batched --layers 8 --variants fp8 --batch 1,8,32 --kv model --runs 1 \
  --new-tokens 128 --json "$OUT/gpu_decode_8layers_fp8.json"
TAIL=6 run 300 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_kernels.py tests/quant/test_w8a8.py \
  tests/runtime/test_decode.py tests/runtime/test_gluon_gemm.py
