#!/usr/bin/env bash
# Issue 17 (BENCHMARKS 9u), session 51: the row quantizer's GPU test, every launch of the row quantizer at
# M = 1-8192 (benchmarks/gpu_rowquant.py) and the fp8 linear at M = 2048 / 8192 with the default and the fastest
# launch, then the fp8 GEMM of 11008x4096 at M = 128 / 2048 that the scoreboard's budget cut. From the repo root:
#   OUT=$OUT bash benchmarks/device_issue17h.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0
OUT=${OUT:-build/device-issue17h}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
TAIL=4 run 120 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_kernels.py -k "row_quant or fp8"
TAIL=30 run 300 python3 benchmarks/gpu_rowquant.py --linear-m 2048,8192 --json "$OUT/gpu_rowquant_fp8.json"
TAIL=4 run 150 python3 benchmarks/gpu_fp8_gemm.py --shapes 2 --m 128,2048 --json "$OUT/gpu_fp8_gemm_11008x4096.json"
