#!/usr/bin/env bash
# Issue 17: Triton launches without Triton's per-call binding (kernels/launch.py) against the eager prefill's host
# cost (BENCHMARKS 9t), side by side with NNSLIM_FAST_LAUNCH=0 in one call; the fp8 decoder's self-check measured
# part by part; the 8-layer prefill scoreboard; the launcher's GPU test. From the repo root, through the device tool:
#   OUT=$OUT bash benchmarks/device_issue17e.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0
OUT=${OUT:-build/device-issue17e}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
TAIL=20 run 60 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_launch.py
for fast in 0 1; do
  echo "### NNSLIM_FAST_LAUNCH=$fast"
  NNSLIM_FAST_LAUNCH=$fast TAIL=10 run 150 python3 benchmarks/gpu_prefill_profile.py --layers 2 --rows 128,512 \
    --part model,layer --layer-rows 128
done
TAIL=3 run 90 python3 benchmarks/gpu_prefill_profile.py --part selfcheck --layers-check 8
for fast in 0 1; do
  NNSLIM_FAST_LAUNCH=$fast TAIL=14 run 150 python3 benchmarks/gpu_llm.py prefill --layers 8 --variants int4,fp8 \
    --batch 1,4 --prompt-lens 128,512,2048 --runs 2 --json "$OUT/gpu_prefill_8layers_fast$fast.json"
done
