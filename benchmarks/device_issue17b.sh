#!/usr/bin/env bash
# Issue 17's second device call: the prompt's forward pass (prefill, M = batch x prompt rows through the int4 /
# fp8 GEMMs) with the Gluon int4 GEMM offered to the selector (default) and left out (NNSLIM_GLUON_GEMM=0), each a
# ratio vs bf16 in the same process; then decode at a 16384-token prompt with the model-dtype, int8 and fp8 KV
# caches (the issue's >= 1.3x for int8). 8-layer Llama-7B-shaped model, random bf16 weights. From the repo root,
# through the device tool:
#   OUT=$OUT bash benchmarks/device_issue17b.sh          (BUDGET_S=570 by default: inside one 600 s call)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_CACHE=${NNSLIM_CACHE:-/tmp/nnslim-cache}
export NNSLIM_CUDA_KERNELS=0  # the older CUDA-core GEMV: not faster end to end (9k)
OUT=${OUT:-build/device-issue17b}
mkdir -p "$OUT"
source "$(dirname "$0")/device_budget.sh"  # S and run SECONDS COMMAND...
nvidia-smi --query-gpu=name --format=csv,noheader
run 150 python3 benchmarks/gpu_llm.py prefill --layers 8 --variants int4,fp8 --batch 1,4 --prompt-lens 128,512,2048 \
  --runs 2 --json "$OUT/gpu_prefill_8layers_gluon_default.json"
NNSLIM_GLUON_GEMM=0 run 120 python3 benchmarks/gpu_llm.py prefill --layers 8 --variants int4 --batch 1,4 \
  --prompt-lens 128,512,2048 --runs 2 --json "$OUT/gpu_prefill_8layers_gluon_off.json"
run 200 python3 benchmarks/gpu_llm.py batched --layers 8 --variants int4 --prompt 16384 --batch 1 \
  --kv model,int8,fp8 --runs 1 --new-tokens 128 --json "$OUT/gpu_kv_16k_8layers.json"
