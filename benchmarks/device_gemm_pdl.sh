#!/usr/bin/env bash
# Issue 17: the int4 MMA GEMM, the fp8 GEMM and the per-token quantizer as programmatic dependent launches (the
# GEMMs ask L2 for their first weight tiles, then wait for the kernel that writes x; pdl.py), A/B in one device
# call: the GPU tests of those kernels, then each sweep and the 8-layer batched decode with NNSLIM_PDL=0 and =1
# (ratios vs bf16 in each process; bf16 F.linear is cuBLAS, not a dependent launch). From the repo root:
#   OUT=$OUT bash benchmarks/device_gemm_pdl.sh          (BUDGET_S=570 by default: inside one 600 s call)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0  # as device_issue17.sh
OUT=${OUT:-build/device-gemm-pdl}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"  # S and run SECONDS COMMAND...
TAIL=14
nvidia-smi --query-gpu=name --format=csv,noheader
[[ ${TESTS:-1} == 1 ]] && TAIL=4 run 120 python3 -m pytest -q -x tests/runtime/test_kernels.py tests/quant/test_w8a8.py tests/runtime/test_decode.py
for pdl in 0 1; do
  run 70 env NNSLIM_PDL=$pdl python3 benchmarks/gpu_int4_gemm.py --family mma --m 128,256,2048 --rep-ms 20 \
    --mma-configs kept --json "$OUT/gpu_int4_mma_pdl$pdl.json"
done
for pdl in 0 1; do
  run 90 env NNSLIM_PDL=$pdl python3 benchmarks/gpu_fp8_gemm.py --m 1,16,128 --json "$OUT/gpu_fp8_gemm_pdl$pdl.json"
done
for pdl in 0 1; do
  run 90 env NNSLIM_PDL=$pdl python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4,fp8 --batch 1,8,32 \
    --kv model --runs 1 --new-tokens 128 --json "$OUT/gpu_decode_8layers_pdl$pdl.json"
done
