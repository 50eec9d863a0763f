#!/usr/bin/env bash
# Issue 17, session 55 (last call): the GPU tests of what this session leaves - the Gluon int4 GEMM as it was at the
# session's start (every launch against the dequantize-then-matmul reference, each launch's verdict reported) and the
# measured selector that now checks each candidate's output against the reference before timing it (int4 MMA GEMM /
# GEMV, fp8 and W8A8 candidates). From the repo root:
#   OUT=$OUT bash benchmarks/device_issue17k.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0
OUT=${OUT:-build/device-issue17k}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
TAIL=1 run 90 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_gluon_gemm.py
TAIL=1 run 100 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_kernels.py tests/quant/test_weight_only.py \
  -k "fp8_swap_gemm_is_a_selector or mma_gemm_is_a_selector or wrong"
