#!/usr/bin/env bash
# Issue 17 (BENCHMARKS 9t), last call of session 50: the GPU tests of the launcher, the Gluon GEMM and the decoder
# first; per-candidate host cost with NNSLIM_FAST_LAUNCH=0 / 1 (least of 20 tries); the 8-layer prefill eager
# (fast launch on / off) and replayed from a CUDA graph (what the kernels alone give). From the repo root:
#   OUT=$OUT bash benchmarks/device_issue17g.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0
OUT=${OUT:-build/device-issue17g}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
TAIL=6 run 240 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_launch.py tests/runtime/test_gluon_gemm.py \
  tests/runtime/test_decode.py
for fast in 0 1; do
  echo "### NNSLIM_FAST_LAUNCH=$fast"
  NNSLIM_FAST_LAUNCH=$fast TAIL=3 run 60 python3 benchmarks/gpu_prefill_profile.py --part layer --layer-rows 128
done
TAIL=3 run 100 python3 benchmarks/gpu_llm.py prefill --layers 8 --variants int4,fp8 --batch 1,4 \
  --prompt-lens 128,512,2048 --runs 2 --graph --json "$OUT/gpu_prefill_8layers_graph.json"
for fast in 1 0; do
  NNSLIM_FAST_LAUNCH=$fast TAIL=3 run 80 python3 benchmarks/gpu_llm.py prefill --layers 8 --variants int4,fp8 \
    --batch 1,4 --prompt-lens 128,512,2048 --runs 2 --json "$OUT/gpu_prefill_8layers_fast$fast.json"
done
