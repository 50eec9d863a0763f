#!/usr/bin/env bash
# Issue 17's scoreboard on one GPU in one device call (the issue's numbers are for the H200; an H100 gives H100
# ratios): each part is a committed command of an earlier section, run with what is left of BUDGET_S seconds, most
# wanted first - decode of the 32-layer 7B-shaped model at batch 1 (int4 vs bf16), the int4 GEMV at M = 1 / 16
# (9m), the int4 GEMMs at M = 128 / 256 / 512 / 2048 (each Gluon launch beside the best kept Triton MMA launch,
# 9p / 9r), decode of the 8-layer model at batch 1 / 8 / 32 in int4 and fp8 (9n / 9j), the fp8 GEMM at
# M = 1 / 16 / 128 / 2048 (9j). TESTS=1 runs the int4 GEMM / GEMV GPU tests first (test_kernels.py -k mma,
# test_cuda_mma_gemv.py, test_gluon_gemm.py), inside the budget. From the repo root, through the device tool:
#   OUT=$OUT bash benchmarks/device_issue17.sh          (BUDGET_S=570 by default: inside one 600 s call)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0  # the older CUDA-core GEMV: not faster end to end (9k)
OUT=${OUT:-build/device-issue17}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"  # S and run SECONDS COMMAND...
nvidia-smi --query-gpu=name --format=csv,noheader
if [[ ${TESTS:-0} == 1 ]]; then
  TAIL=4 run 150 python3 -m pytest -q -x tests/runtime/test_kernels.py tests/runtime/test_cuda_mma_gemv.py \
    tests/runtime/test_gluon_gemm.py -k "mma or gluon"
fi
run 130 python3 benchmarks/gpu_llm.py batched --layers 32 --variants int4 --batch 1 --kv model --runs 1 \
  --new-tokens 256 --json "$OUT/gpu_decode_32layers_b1.json"
run 100 python3 benchmarks/gpu_int4_gemv.py --m 1,16 --families cudamma,x2kept --pdl off --rep-ms 20 \
  --json "$OUT/gpu_int4_gemv_m1_m16.json"
run 120 python3 benchmarks/gpu_int4_gemm.py --family gluon --m 128,256,512,2048 --rep-ms 20 \
  --json "$OUT/gpu_int4_gemm_gluon_triton.json"
run 130 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4,fp8 --batch 1,8,32 --kv model --runs 1 \
  --new-tokens 128 --json "$OUT/gpu_decode_8layers_int4_fp8.json"
run 150 python3 benchmarks/gpu_fp8_gemm.py --m 1,16,128,2048 --json "$OUT/gpu_fp8_gemm.json"
