#!/usr/bin/env bash
# (Run at session 55's commits 648d42c / 9dc0917; the trial launches were wrong on the GPU and are gone since, BENCHMARKS 9w:
# today this script measures the kept launches only.)
# Issue 17, session 55: the Gluon int4 GEMM with each step's scales loaded one MMA step ahead (PREFETCH) and a BM = 256
# launch (gluon_int4_gemm.TRIAL_CONFIGS), measured beside the launches the selector offers today (WS_CONFIGS) and the
# Triton MMA GEMM's kept launches: their GPU tests (every launch against the dequantize-then-matmul reference, ragged
# M / N, fp16, asymmetric), the sweep at M = 256 / 512 / 2048 (where int4 is still slower than bf16), then what is
# left of the budget on the issue-17 scoreboard (device_issue17.sh's first parts). From the repo root:
#   OUT=$OUT bash benchmarks/device_issue17i.sh          (BUDGET_S=570 by default)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0
OUT=${OUT:-build/device-issue17i}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
TAIL=4 run 150 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_gluon_gemm.py
TAIL=12 run 260 python3 benchmarks/gpu_int4_gemm.py --family gluon --m 256,512,2048 --rep-ms 20 \
  --json "$OUT/gpu_int4_gemm_gluon_prefetch.json"
run 130 python3 benchmarks/gpu_llm.py batched --layers 32 --variants int4 --batch 1 --kv model --runs 1 \
  --new-tokens 256 --json "$OUT/gpu_decode_32layers_b1.json"
run 100 python3 benchmarks/gpu_int4_gemv.py --m 1,16 --families cudamma,x2kept --pdl off --rep-ms 20 \
  --json "$OUT/gpu_int4_gemv_m1_m16.json"
