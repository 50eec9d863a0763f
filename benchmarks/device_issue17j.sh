#!/usr/bin/env bash
# (Run at session 55's commits 648d42c / 9dc0917; the trial launches were wrong on the GPU and are gone since, BENCHMARKS 9w:
# today this script measures the kept launches only.)
# Issue 17, session 55 (second call): the fp32 epilogue back, the Gluon int4 GEMM with each step's scales loaded one MMA step ahead (PREFETCH) and a BM = 256
# launch (gluon_int4_gemm.TRIAL_CONFIGS), measured beside the launches the selector offers today (WS_CONFIGS) and the
# Triton MMA GEMM's kept launches: their GPU tests (every launch against the dequantize-then-matmul reference, ragged
# M / N, fp16, asymmetric), the sweep at M = 256 / 512 / 2048 (where int4 is still slower than bf16), then the GPU
# tests of the selector (each candidate's output now checked against the reference before it is timed). From the repo root:
#   OUT=$OUT bash benchmarks/device_issue17j.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0
OUT=${OUT:-build/device-issue17j}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
TAIL=4 run 150 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_gluon_gemm.py
TAIL=12 run 260 python3 benchmarks/gpu_int4_gemm.py --family gluon --m 256,512,2048 --rep-ms 20 \
  --json "$OUT/gpu_int4_gemm_gluon_prefetch_fp32epi.json"
TAIL=4 run 150 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_kernels.py tests/quant/test_weight_only.py \
  tests/quant/test_w8a8.py -k "mma or select or wrong or fp8 or gluon"
