#!/usr/bin/env bash
# Issue 17, fp8 W8A8 at small M in one device call: the GPU kernel tests, the fp8 GEMM sweep (nnslim's Triton
# y.T = W x.T kernel vs torch._scaled_mm, activation quantization included) on the three Llama-7B shapes, then
# batched decode of the 8-layer 7B-shaped model in fp8 with whatever the selector picks. From the repo root,
# through the device tool:   OUT=/tmp/fp8 bash benchmarks/device_gpu_fp8.sh      (about 9 minutes)
# STEPS=tests,sweep,decode picks the parts; M= the sweep's rows; SWEEP_TIMEOUT= its limit in seconds (330).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests
OUT=${OUT:-build/device-fp8}
STEPS=${STEPS:-tests,sweep,decode}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
if [[ $STEPS == *tests* ]]; then
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/runtime/test_kernels.py -k "fp8 or w8a8 or cuda or split" \
    2>&1 | tail -3
fi
if [[ $STEPS == *sweep* ]]; then
  timeout ${SWEEP_TIMEOUT:-330} python3 benchmarks/gpu_fp8_gemm.py --m ${M:-1,16,32,64,128,2048} --json "$OUT/gpu_fp8_gemm_sweep.json" \
    | grep -v "^  "
fi
if [[ $STEPS == *decode* ]]; then
  timeout 240 python3 benchmarks/gpu_llm.py batched --layers 8 --variants fp8 --batch 1,8,32 --kv model --runs 1 \
    --new-tokens 128 --json "$OUT/gpu_batched_decode_8layers_fp8.json" 2>&1 | tail -12
fi
