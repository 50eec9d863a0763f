#!/usr/bin/env bash
# BENCHMARKS.md 9h on the H200 in one device call (issue 17): the GPU kernel tests, the int4 GEMM sweep of the
# MMA-layout kernel (all three Llama-7B shapes) and batched decode of the 8-layer 7B-shaped model with whatever
# the selector then picks (the MMA GEMM for prefill and batch > 1). From the repo root, through the device tool:
#   OUT=/tmp/int4 bash benchmarks/device_gpu_int4.sh        (about 8 minutes)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests
OUT=${OUT:-build/device-int4}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 170 python3 -m pytest -q -x -p no:cacheprovider tests/runtime/test_kernels.py 2>&1 | tail -3
timeout 330 python3 benchmarks/gpu_int4_gemm.py --family mma --m ${M:-16,32,128,256,2048} --rep-ms 40 \
  --json "$OUT/gpu_int4_mma_sweep.json" | grep -v "^  "
timeout 240 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 --batch 1,8,32 --kv model --runs 1 \
  --new-tokens 128 --json "$OUT/gpu_batched_decode_8layers_mma.json" 2>&1 | tail -12
